"""Offline evaluation: protocols (splits), metrics, the named model registry, runner and HTML report.

``run_evaluation`` (what ``rerank evaluate`` calls) and ``evaluate_frames`` live in ``runner``; import
them from there so that importing this package stays light.
"""

from pipeline.evaluate.models import get_model, model_names, register_model
from pipeline.evaluate.protocols import PROTOCOLS, leave_one_out, msr_stratified_split, temporal_split
from pipeline.metrics import ranking_metrics

__all__ = ["PROTOCOLS", "get_model", "leave_one_out", "model_names", "msr_stratified_split",
           "ranking_metrics", "register_model", "temporal_split"]
