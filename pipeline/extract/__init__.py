"""Extraction: Dask partitioned reads from Postgres into a Parquet snapshot per run."""

from pipeline.extract.snapshot import extract_snapshot, read_snapshot

__all__ = ["extract_snapshot", "read_snapshot"]
