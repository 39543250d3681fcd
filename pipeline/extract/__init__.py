"""Extraction: an incremental, date-partitioned Parquet event store (any fsspec URL) and each run's view."""

from pipeline.extract.snapshot import events_path, extract_snapshot, plan_extract, read_events, read_snapshot

__all__ = ["events_path", "extract_snapshot", "plan_extract", "read_events", "read_snapshot"]
