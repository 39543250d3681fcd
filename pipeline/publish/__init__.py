"""Publication: versioned result tables, the output quality gate, the atomic view swap and rollback."""

from pipeline.publish.gate import CHECKS, GateThresholds, check_output, check_parts
from pipeline.publish.parts import rec_parts
from pipeline.publish.swap import PAUSE_POINTS, LiveRows, live_lists, live_publication, publish_run, rollback

__all__ = ["CHECKS", "PAUSE_POINTS", "GateThresholds", "LiveRows", "check_output", "check_parts", "live_lists",
           "live_publication", "publish_run", "rec_parts", "rollback"]
