"""Read a public dataset or a shop's own events file into the ``shop`` contract, and load it with COPY.

``read_dataset`` is pure (no database; the evaluation harness calls it directly); ``import_dataset`` loads
the result in one transaction.

Idempotence: ``load_shop(replace=True)`` truncates ``shop.*`` and COPYs the new rows, so the shop holds
exactly one import. For the same reason the transaction first deletes every earlier *import's* quarantine
rows (``run_id LIKE 'import\\_%'``): those rows described shop contents that the truncate just removed, so
keeping them would double the counts on a re-import and mix datasets. Quarantine rows of other stages
(validation runs, whose run ids do not start with ``import_``) are left alone. Both happen in the same
transaction as the load, so a failed import leaves the previous shop and its quarantine intact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import InputDataError
from pipeline.frames import ShopFrames
from pipeline.ingest import amazon, diginetica, generic, movielens, taobao

Reader = Callable[[Path, "dict[str, str] | None"], ShopFrames]

#: Format name (as in ``rerank import FORMAT PATH``) -> reader(path, mapping).
FORMATS: dict[str, Reader] = {
    "movielens": movielens.read,
    "taobao": taobao.read,
    "amazon-s3rec": amazon.read,
    "diginetica": diginetica.read,
    "csv": generic.read_csv,
    "parquet": generic.read_parquet,
}

_HINTS = {
    "movielens": "the ml-100k folder (holding u.data, u.item, u.user)",
    "taobao": "the UserBehavior csv file (user_id,item_id,category_id,behavior_type,timestamp; no header)",
    "amazon-s3rec": "<Name>.txt, with <Name>_item2attributes.json beside it",
    "diginetica": "the train-item-views csv (session_id;user_id;item_id;timeframe;eventdate)",
    "csv": "an events csv with a header, and a column mapping for columns named differently",
    "parquet": "an events parquet file, and a column mapping for columns named differently",
}


def read_dataset(fmt: str, path: str | Path, *, mapping: dict[str, str] | None = None) -> ShopFrames:
    """Parse ``path`` as ``fmt`` into :class:`ShopFrames`: valid rows, plus ``rejects`` (no database)."""
    reader = FORMATS.get(fmt)
    if reader is None:
        raise InputDataError(f"unknown import format {fmt!r}", f"one of {', '.join(FORMATS)}")
    path = Path(path).expanduser()
    if not path.exists():
        raise InputDataError(f"{fmt} input not found: {path}", f"PATH is {_HINTS[fmt]}")
    return reader(path, mapping)


@dataclass
class ImportResult:
    """What an import loaded and refused."""

    fmt: str
    path: str
    loaded: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    seconds: float = 0.0
    run_id: str = ""

    def summary_line(self) -> str:
        """One line with both counts (the CLI prints it last)."""
        n = self.loaded
        return (f"imported {self.fmt}: {n.get('users', 0)} users, {n.get('items', 0)} items, "
                f"{n.get('events', 0)} events loaded; {self.quarantined} rows quarantined")


def import_dataset(url: str, fmt: str, path: str | Path, *, mapping: dict[str, str] | None = None,
                   run_id: str | None = None) -> ImportResult:
    """Read ``path`` and replace the shop with it in one transaction; invalid rows go to quarantine."""
    from pipeline.db.engine import connect
    from pipeline.db.shop import load_shop, quarantine

    t0 = time.perf_counter()
    frames = read_dataset(fmt, path, mapping=mapping)
    if frames.events.empty:
        # Loading would truncate the shop for nothing: almost always the wrong format or file.
        first = frames.rejects["reason"].iloc[0] if len(frames.rejects) else "the file has no rows"
        raise InputDataError(f"no valid events in {path} as {fmt} ({len(frames.rejects)} rows refused; "
                             f"first reason: {first})", f"PATH is {_HINTS[fmt]}")
    run_id = run_id or f"import_{fmt}_{datetime.now(UTC):%Y%m%d%H%M%S}"
    with connect(url) as conn, conn.cursor() as cur:
        loaded = load_shop(cur, frames, replace=True)
        cur.execute("DELETE FROM recsys.quarantine WHERE run_id LIKE %s", ("import\\_%",))
        n_bad = quarantine(cur, frames.rejects, run_id)
    return ImportResult(fmt=fmt, path=str(path), loaded=loaded, quarantined=n_bad,
                        seconds=round(time.perf_counter() - t0, 3), run_id=run_id)
