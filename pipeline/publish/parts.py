"""Where a run's lists are on disk: a Parquet dataset of parts, one per scoring shard.

The scoring stage writes ``RERANK_HOME/runs/<run_id>/recs/part-00000.parquet``, ``part-00001.parquet``, ...;
each part holds the complete lists of a disjoint set of users, sorted by (user_id, rank). The gate and the
publish read one part at a time, so their memory follows the shard budget, not the shop. A run written
before that layout has one ``recs.parquet``, which reads as a single part.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd

#: The dataset folder of a run's lists and the legacy single file, relative to the run folder.
PARTS_DIR = "recs"
LEGACY_FILE = "recs.parquet"


def rec_parts(run_dir: str | Path) -> list[Path]:
    """The Parquet parts holding the run's lists, in name order.

    ``run_dir/recs/part-*.parquet`` when that folder exists (it wins over a stale legacy file), else the
    legacy ``run_dir/recs.parquet`` as one part. Raises FileNotFoundError when the run has neither, so a
    stage run before score_users says what is missing.
    """
    d = Path(run_dir)
    folder = d / PARTS_DIR
    if folder.is_dir():
        # dot-prefixed temporaries (pipeline.files) are skipped by the pattern
        return sorted(p for p in folder.glob("part-*.parquet") if p.is_file())
    legacy = d / LEGACY_FILE
    if legacy.is_file():
        return [legacy]
    raise FileNotFoundError(2, "no lists of the run (recs/ parts or recs.parquet)", str(folder))


def iter_parts(parts: list[Path], columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """Read the parts one at a time (only ``columns`` when given)."""
    for p in parts:
        yield pd.read_parquet(p, columns=columns)


def rows_in_parts(parts: list[Path]) -> int:
    """Rows of all parts from the Parquet footers, without reading any data."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in parts)


def max_in_parts(parts: list[Path], column: str) -> object | None:
    """The largest value of ``column`` over all parts, from the row groups' statistics where the writer kept
    them (else by reading that one column of a part); None when the parts hold no rows."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    best = None
    for p in parts:
        f = pq.ParquetFile(p)
        idx = f.schema_arrow.get_field_index(column)
        highs = []
        for g in range(f.metadata.num_row_groups):
            st = f.metadata.row_group(g).column(idx).statistics if idx >= 0 else None
            if st is None or not st.has_min_max:
                highs = [pc.max(f.read(columns=[column]).column(column)).as_py()]
                break
            highs.append(st.max)
        for h in highs:
            if h is not None and (best is None or h > best):
                best = h
    return best
