"""Publication: versioned result tables, the output quality gate, the atomic view swap and rollback."""

from pipeline.publish.gate import CHECKS, GateThresholds, check_output
from pipeline.publish.swap import PAUSE_POINTS, live_lists, live_publication, publish_run, rollback

__all__ = ["CHECKS", "PAUSE_POINTS", "GateThresholds", "check_output", "live_lists", "live_publication",
           "publish_run", "rollback"]
