"""Publication: versioned result tables, the output quality gate, the atomic view swap and rollback."""

from pipeline.publish.gate import GateThresholds, check_output
from pipeline.publish.swap import live_publication, publish_run, rollback

__all__ = ["GateThresholds", "check_output", "live_publication", "publish_run", "rollback"]
