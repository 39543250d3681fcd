"""Re-rank: score fusion, a per-category cap for diversity, reasons for every row."""

from pipeline.rerank.lists import FUSIONS, finalize_lists, fuse, reason_text

__all__ = ["FUSIONS", "finalize_lists", "fuse", "reason_text"]
