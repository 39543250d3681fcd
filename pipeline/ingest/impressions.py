"""``shop.impressions``: what a shop showed its users, read from a CSV or Parquet file like events.

Columns (contract names; ``mapping`` maps them to the file's own, as for events):

- required: ``user_id``, ``item_id`` (non-negative integer ids), ``rank`` (1-based position in the list,
  an integer in [1, 10000]), ``ts`` (epoch seconds or milliseconds, or ISO 8601; naive times are UTC);
- optional: ``placement`` (where the list was shown, default ``home``), ``variant`` (the A/B arm, default
  ``control``), ``run_id`` (the run whose list it was).

Each row is validated on its own (``pipeline.ingest.base.RowSet``): a bad row goes to ``recsys.quarantine``
(source ``shop.impressions``) with every reason it fails, and never takes a valid neighbour with it. A row
repeating an earlier one exactly (same user, item, placement, rank, variant, run and time) is refused as a
duplicate. ``import_impressions`` replaces ``shop.impressions`` (or appends with ``append=True``) in one
transaction; the shop's users, items and events are left as they are.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from pipeline.errors import InputDataError
from pipeline.frames import IMPRESSION_COLUMNS
from pipeline.ingest.base import RowSet, concat_rejects, one_line, read_text, require_file
from pipeline.ingest.generic import _delimiter, resolve_columns

SOURCE = "shop.impressions"
REQUIRED = ["user_id", "item_id", "rank", "ts"]
OPTIONAL = ["placement", "variant", "run_id"]
DEFAULTS = {"placement": "home", "variant": "control"}
MAX_RANK = 10_000
MAX_TEXT = 200
HINT = "an impressions file with user_id, item_id, rank, ts (and placement, variant, run_id) columns"


def _build(rows: RowSet) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate the contract-named ``rows.fields``; (valid impressions, rejects)."""
    f = rows.fields
    if rows.kind == "row":
        for c in REQUIRED:
            f[c] = f[c].where(f[c].notna(), "")
    user = rows.ids("user_id")
    item = rows.ids("item_id")
    rank = rows.integers("rank", lo=1, hi=MAX_RANK)
    rows.add(f["rank"].map(lambda v: isinstance(v, str) and not v.strip()).astype(bool), "empty rank")
    ts = rows.timestamps("ts")
    text = {}
    for c in OPTIONAL:
        v = f[c].map(lambda x: x.strip() if isinstance(x, str) else None) if c in f else pd.Series(
            None, index=f.index, dtype=object)
        rows.add(v.str.len().gt(MAX_TEXT).fillna(False).astype(bool), f"{c} longer than {MAX_TEXT} characters")
        v = v.where(v.fillna("").ne(""), None)
        text[c] = v.fillna(DEFAULTS[c]) if c in DEFAULTS else v
    key = pd.DataFrame({"u": user, "i": item, "r": rank, "t": ts, **text})
    rows.dedupe(key, "impression")
    ok = rows.ok
    out = pd.DataFrame({"user_id": user[ok].astype("int64"), "item_id": item[ok].astype("int64"),
                        "placement": text["placement"][ok], "rank": rank[ok].astype("int64"),
                        "variant": text["variant"][ok], "run_id": text["run_id"][ok], "ts": ts[ok]})
    return out[IMPRESSION_COLUMNS].reset_index(drop=True), rows.rejects()


def read_impressions(path: str | Path, mapping: dict[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse an impressions CSV (header required) or Parquet file: (valid rows, rejected rows)."""
    path = require_file(Path(path).expanduser(), "impressions file", HINT)
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise InputDataError(f"{path} is not a readable Parquet file: {one_line(exc)}", HINT) from exc
        cols = resolve_columns(list(table.schema.names), mapping, path, required=REQUIRED, optional=OPTIONAL,
                               hint=HINT)
        df = table.select(list(cols.values())).to_pandas().astype(object)
        df.columns = list(cols)
        rows = RowSet.from_records(path.name, SOURCE, df)
        return _build(rows)
    lines = read_text(path)
    h = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if h is None:
        raise InputDataError(f"{path} is empty (no header)", HINT)
    sep = _delimiter(lines[h])
    header = [x.strip() for x in lines[h].split(sep)]
    cols = resolve_columns(header, mapping, path, required=REQUIRED, optional=OPTIONAL, hint=HINT)
    rows = RowSet.from_lines(path.name, SOURCE, lines[h + 1:], first_line=h + 2)
    fields = rows.split(sep, header, quoted=True)
    rows.fields = pd.DataFrame({c: fields[f] for c, f in cols.items()}, index=fields.index)
    return _build(rows)


@dataclass(frozen=True)
class ImpressionImport:
    """What an impressions import loaded and refused."""

    path: str
    loaded: int
    quarantined: int
    run_id: str
    seconds: float

    def summary_line(self) -> str:
        return f"imported impressions: {self.loaded} rows loaded; {self.quarantined} rows quarantined"


def load_impressions(cur, impressions: pd.DataFrame, *, append: bool = False) -> int:
    """COPY ``impressions`` into ``shop.impressions`` (after a truncate unless ``append``); the row count."""
    from pipeline.db.copy import copy_frame

    if not append:
        cur.execute("TRUNCATE shop.impressions")
    n = copy_frame(cur, SOURCE, impressions[IMPRESSION_COLUMNS], IMPRESSION_COLUMNS)
    cur.execute("ANALYZE shop.impressions")
    return n


def import_impressions(url: str, path: str | Path, *, mapping: dict[str, str] | None = None, append: bool = False,
                       run_id: str | None = None) -> ImpressionImport:
    """Read ``path`` and load it into ``shop.impressions`` in one transaction; bad rows go to quarantine."""
    from pipeline.db.engine import connect
    from pipeline.db.shop import quarantine

    t0 = time.perf_counter()
    good, bad = read_impressions(path, mapping)
    if good.empty:
        first = bad["reason"].iloc[0] if len(bad) else "the file has no rows"
        raise InputDataError(f"no valid impressions in {path} ({len(bad)} rows refused; first reason: {first})",
                             HINT)
    run_id = run_id or f"import_impressions_{datetime.now(UTC):%Y%m%d%H%M%S}"
    with connect(url) as conn, conn.cursor() as cur:
        n = load_impressions(cur, good, append=append)
        if not append:
            cur.execute("DELETE FROM recsys.quarantine WHERE source = %s AND run_id LIKE %s",
                        (SOURCE, "import\\_%"))
        n_bad = quarantine(cur, concat_rejects([bad]), run_id)
    return ImpressionImport(str(path), n, n_bad, run_id, round(time.perf_counter() - t0, 3))


__all__ = ["ImpressionImport", "import_impressions", "load_impressions", "read_impressions"]
