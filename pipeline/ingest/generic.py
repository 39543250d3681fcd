"""A shop's own events file (CSV with a header, or Parquet) with a column mapping onto the contract.

``mapping`` maps contract names to the file's column names, e.g.
``{"user_id": "uid", "item_id": "sku", "event_type": "action", "ts": "time"}``; contract names that the file
already uses need no entry. Columns:

- required: ``user_id``, ``event_type`` (one of view, click, add_to_cart, purchase, search; compared
  case-insensitively), ``ts`` (epoch seconds or milliseconds, or ISO 8601; naive times are UTC), and
  ``item_id`` (may be empty only on ``search`` rows);
- optional: ``event_id`` (else the line/row number), ``query``, ``session_id``, ``quantity`` (integer >= 1,
  default 1), and item descriptors ``title``, ``category``, ``brand``, ``price`` (an item takes the first
  non-empty value it has in file order; items without one get ``item <id>`` / ``unknown``).

CSV: the delimiter is the one of ``, ; TAB |`` most frequent in the header line; fields may be quoted, but a
record must fit on one line (quotes never span lines, so a stray quote cannot swallow later rows).
Duplicate key: ``event_id`` when mapped, else the whole event (user, item, type, ts, session).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from pipeline.errors import InputDataError
from pipeline.frames import EVENT_TYPES, ShopFrames
from pipeline.ingest.base import (
    RowSet,
    derive_items,
    derive_users,
    event_frame,
    read_text,
    require_file,
)

REQUIRED = ["user_id", "item_id", "event_type", "ts"]
OPTIONAL = ["event_id", "query", "session_id", "quantity", "title", "category", "brand", "price"]
HINT = "an events file with user_id, item_id, event_type, ts columns, or a mapping to the file's names"


def _resolve(header: list[str], mapping: dict[str, str] | None, path: Path) -> dict[str, str]:
    """Contract name -> file column, for every contract column the file has; fails on a bad mapping."""
    mapping = dict(mapping or {})
    unknown = [k for k in mapping if k not in REQUIRED + OPTIONAL]
    if unknown:
        raise InputDataError(f"mapping names unknown contract column(s) {unknown}",
                             f"keys are among {REQUIRED + OPTIONAL}")
    cols = {c: mapping.get(c, c) for c in REQUIRED + OPTIONAL if c in mapping or c in header}
    absent = {c: f for c, f in cols.items() if f not in header}
    missing = [c for c in REQUIRED if c not in cols]
    if absent or missing:
        what = [f"{c} (file column {f!r})" for c, f in absent.items()] + missing
        raise InputDataError(f"{path}: column(s) {', '.join(what)} not found; the file has {header}", HINT)
    return cols


def _blank_none(v: object) -> str | None:
    """Optional text: blank means absent (NULL), not an empty string."""
    return (v.strip() or None) if isinstance(v, str) else None


def _build(rows: RowSet, cols: dict[str, str], name: str) -> ShopFrames:
    """Validate contract-named fields in ``rows.fields`` and build the frames."""
    f = rows.fields
    user = rows.ids("user_id")
    f["event_type"] = f["event_type"].map(lambda v: v.strip().lower() if isinstance(v, str) else v)
    etype = rows.choice("event_type", {t: t for t in EVENT_TYPES})
    item = rows.ids("item_id", required=False)
    no_item = f["item_id"].notna() & item.isna() & f["item_id"].str.strip().eq("")
    not_search = etype.ne("search").fillna(False).astype(bool)
    rows.add(no_item & not_search, "empty item_id (only search events may omit it)")
    ts = rows.timestamps("ts")
    idx = rows.text.index
    event_id = rows.ids("event_id") if "event_id" in cols else pd.Series(idx, index=idx)
    quantity = (rows.integers("quantity", lo=1, hi=10**6) if "quantity" in cols
                else pd.Series(1, index=idx, dtype="Int64"))
    session = f["session_id"] if "session_id" in cols else pd.Series(None, index=idx, dtype=object)
    if "event_id" in cols:
        rows.dedupe(event_id, "event_id")
    else:
        rows.dedupe(pd.DataFrame({"u": user, "i": item, "e": etype, "t": ts, "s": session}), "event")
    ok = rows.ok
    query = f["query"][ok].map(_blank_none) if "query" in cols else None
    session_ok = session[ok].map(_blank_none)
    events = event_frame(event_id[ok], user[ok], item[ok], etype[ok], ts[ok], session_id=session_ok,
                         query=query, quantity=quantity[ok].fillna(1))
    items = derive_items(events)
    for c in ("title", "category", "brand", "price"):
        if c not in cols:
            continue
        v = f.loc[ok, c].map(_blank_none)
        first = pd.DataFrame({"i": item[ok], "v": v}).dropna().drop_duplicates("i").set_index("i")["v"]
        found = items["item_id"].map(first)
        if c == "price":
            found = pd.to_numeric(found, errors="coerce").where(lambda p: (p >= 0) & (p < 1e10))
        items[c] = found.where(found.notna(), items[c])
    return ShopFrames(users=derive_users(events), items=items, events=events, rejects=rows.rejects(),
                      name=name)


def _delimiter(header_line: str) -> str:
    return max([",", ";", "\t", "|"], key=header_line.count)


def read_csv(path: Path, mapping: dict[str, str] | None = None) -> ShopFrames:
    """Read an events CSV (header required) into shop frames."""
    path = require_file(path, "events csv", HINT)
    lines = read_text(path)
    if not lines:
        raise InputDataError(f"{path} is empty", HINT)
    sep = _delimiter(lines[0])
    header = [h.strip() for h in next(csv.reader([lines[0]], delimiter=sep))]
    cols = _resolve(header, mapping, path)
    rows = RowSet.from_lines(path.name, "shop.events", lines[1:], first_line=2)
    fields = rows.split(sep, header, quoted=True)
    rows.fields = pd.DataFrame({c: fields[f] for c, f in cols.items()}, index=fields.index)
    return _build(rows, cols, path.stem)


def read_parquet(path: Path, mapping: dict[str, str] | None = None) -> ShopFrames:
    """Read an events Parquet file into shop frames (values are validated as text, like CSV fields)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = require_file(path, "events parquet", HINT)
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputDataError(f"{path} is not a readable Parquet file: {exc}", HINT) from exc
    cols = _resolve(list(schema.names), mapping, path)
    table = pq.read_table(path, columns=list(dict.fromkeys(cols.values())))
    as_text = {c: pc.cast(table[f], pa.string()) for c, f in cols.items()}
    df = pa.table(as_text).to_pandas(types_mapper=None).astype(object)
    rows = RowSet.from_records(path.name, "shop.events", df)
    return _build(rows, cols, path.stem)
