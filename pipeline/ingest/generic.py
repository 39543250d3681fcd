"""A shop's own events file (CSV with a header, or Parquet) with a column mapping onto the contract.

``mapping`` maps contract names to the file's column names, e.g.
``{"user_id": "uid", "item_id": "sku", "event_type": "action", "ts": "time"}``; contract names that the file
already uses need no entry. Columns:

- required: ``user_id``, ``event_type`` (one of view, click, add_to_cart, purchase, search; compared
  case-insensitively), ``ts`` (epoch seconds or milliseconds, or ISO 8601; naive times are UTC), and
  ``item_id`` (may be empty only on ``search`` rows);
- optional: ``event_id`` (else the line/row number), ``query``, ``session_id``, ``quantity`` (integer >= 1,
  default 1, also when blank), and item descriptors ``title``, ``category``, ``brand``, ``price`` (an item
  takes the first non-empty value it has in file order; items without one get ``item <id>`` / ``unknown``)
  and ``image_path`` (a local picture file; a relative path is taken from the events file's folder and
  stored absolute; the item features embed it, a missing file is counted, not fatal).

CSV: the delimiter is the one of ``, ; TAB |`` most frequent in the header line; fields may be quoted, but a
record must fit on one line (quotes never span lines, so a stray quote cannot swallow later rows).
A ``search`` row needs a non-blank ``query`` (validation would refuse it later: "search without a query").
Duplicate key: ``event_id`` when mapped, else the whole event (user, item, type, ts, session, query, quantity).
A row whose title, category or brand ``shop.items`` validation would refuse is refused here, with the same
reason (else it would become its item's descriptor and validation would quarantine all the item's events).
Parquet: a NULL in a required column refuses its row (``empty <col>``); binary columns are read as UTF-8.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd

from pipeline.errors import InputDataError
from pipeline.frames import EVENT_TYPES, ShopFrames
from pipeline.ingest.base import (
    INVALID_UTF8,
    RowSet,
    derive_items,
    derive_users,
    event_frame,
    one_line,
    read_text,
    require_file,
    safe_text,
)
from pipeline.validate.sqlchecks import BAD_CHARS, MAX_LEN

REQUIRED = ["user_id", "item_id", "event_type", "ts"]
OPTIONAL = ["event_id", "query", "session_id", "quantity", "title", "category", "brand", "price", "image_path"]
HINT = "an events file with user_id, item_id, event_type, ts columns, or a mapping to the file's names"


def resolve_columns(header: list[str], mapping: dict[str, str] | None, path: Path, *,
                    required: list[str] = REQUIRED, optional: list[str] = OPTIONAL, hint: str = HINT
                    ) -> dict[str, str]:
    """Contract name -> file column, for every contract column the file has; fails on a bad mapping, a missing
    required column or a duplicated header name (``required``/``optional``: the contract, events by default)."""
    mapping = dict(mapping or {})
    unknown = [k for k in mapping if k not in required + optional]
    if unknown:
        raise InputDataError(f"mapping names unknown contract column(s) {unknown}",
                             f"keys are among {required + optional}")
    cols = {c: mapping.get(c, c) for c in required + optional if c in mapping or c in header}
    absent = {c: f for c, f in cols.items() if f not in header}
    missing = [c for c in required if c not in cols]
    if absent or missing:
        what = [f"{c} (file column {f!r})" for c, f in absent.items()] + missing
        raise InputDataError(f"{path}: column(s) {', '.join(what)} not found; "
                             f"the file has {safe_text(str(header), 300)}", hint)
    twice = sorted({f for f in cols.values() if header.count(f) > 1})
    if twice:  # which of the two holds the data is a guess; the last one used to win silently
        raise InputDataError(f"{path}: column name(s) {twice} appear more than once in the header {header}",
                             "rename the duplicated columns, or map the contract column to another one")
    return cols


def _blank_none(v: object) -> str | None:
    """Optional text: blank means absent (NULL), not an empty string."""
    return (v.strip() or None) if isinstance(v, str) else None


def _build(rows: RowSet, cols: dict[str, str], name: str, folder: Path | None = None) -> ShopFrames:
    """Validate contract-named fields in ``rows.fields`` and build the frames."""
    f = rows.fields
    if rows.kind == "row":  # a Parquet NULL is an empty value (in CSV, None already means "missing field")
        for c in [*REQUIRED, "event_id"]:
            if c in f.columns:
                f[c] = f[c].where(f[c].notna(), "")
    user = rows.ids("user_id")
    f["event_type"] = f["event_type"].map(lambda v: v.strip().lower() if isinstance(v, str) else v)
    blank_type = f["event_type"].eq("").fillna(False).astype(bool)
    rows.add(blank_type, "empty event_type")
    f.loc[blank_type, "event_type"] = None  # reported once, not also as an unknown type
    etype = rows.choice("event_type", {t: t for t in EVENT_TYPES})
    item = rows.ids("item_id", required=False)
    no_item = f["item_id"].notna() & item.isna() & f["item_id"].str.strip().eq("")
    not_search = etype.ne("search").fillna(False).astype(bool)
    rows.add(no_item & not_search, "empty item_id (only search events may omit it)")
    ts = rows.timestamps("ts")
    idx = rows.text.index
    event_id = rows.ids("event_id") if "event_id" in cols else pd.Series(idx, index=idx)
    if "quantity" in cols:  # blank is absent (shops often fill it on cart/purchase rows only): default 1
        f["quantity"] = f["quantity"].map(lambda v: v if _blank_none(v) is not None else None)
    quantity = (rows.integers("quantity", lo=1, hi=10**6) if "quantity" in cols
                else pd.Series(1, index=idx, dtype="Int64"))
    session = f["session_id"] if "session_id" in cols else pd.Series(None, index=idx, dtype=object)
    query_all = f["query"].map(_blank_none) if "query" in cols else pd.Series(None, index=idx, dtype=object)
    rows.add(etype.eq("search").fillna(False).astype(bool) & query_all.isna(), "search without a query")
    _descriptor_rules(rows)
    if "event_id" in cols:
        rows.dedupe(event_id, "event_id")
    else:  # the whole event: two searches (or purchases) in one second differ by query (or quantity)
        rows.dedupe(pd.DataFrame({"u": user, "i": item, "e": etype, "t": ts, "s": session, "q": query_all,
                                  "n": quantity}), "event")
    ok = rows.ok
    query = query_all[ok] if "query" in cols else None
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
        if c == "price":  # shop.items.price is numeric(12,2): below 10^10 once rounded to cents
            found = pd.to_numeric(found, errors="coerce").where(lambda p: (p >= 0) & (p < 9_999_999_999.995))
        items[c] = found.where(found.notna(), items[c])
    if "image_path" in cols:
        v = f.loc[ok, "image_path"].map(_blank_none)
        first = pd.DataFrame({"i": item[ok], "v": v}).dropna().drop_duplicates("i").set_index("i")["v"]
        items["image_path"] = items["item_id"].map(first).map(lambda p: _local_path(p, folder), na_action="ignore")
    return ShopFrames(users=derive_users(events), items=items, events=events, rejects=rows.rejects(),
                      name=name)


def _local_path(p: str, folder: Path | None) -> str:
    """A picture path as an absolute local path (relative ones from the imported file's folder)."""
    path = Path(p.strip()).expanduser()
    return str(path if path.is_absolute() or folder is None else (folder / path).resolve())


def _descriptor_rules(rows: RowSet) -> None:
    """Refuse a row whose item descriptor validation would refuse in ``shop.items`` (same reasons).

    An item takes its first non-empty descriptor, so one row's bad title or category would become the item's:
    validation would then quarantine the item and, with it, every event of the item ("item_id refers to a
    quarantined item"), clean rows included.
    """
    f = rows.fields
    for c in ("title", "category", "brand", "query", "session_id"):
        if c in f.columns:
            n = f[c].map(lambda v: len(v.strip()) if isinstance(v, str) else 0)
            rows.add(n > MAX_LEN[c], f"{c} longer than {MAX_LEN[c]} characters")
    if "title" in f.columns:
        bad = f["title"].map(lambda v: isinstance(v, str) and re.search(BAD_CHARS, v) is not None)
        rows.add(bad, "title has control or replacement characters")


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _delimiter(header_line: str) -> str:
    return max([",", ";", "\t", "|"], key=header_line.count)


def read_csv(path: Path, mapping: dict[str, str] | None = None) -> ShopFrames:
    """Read an events CSV (header required) into shop frames."""
    path = require_file(path, "events csv", HINT)
    lines = read_text(path)
    if not lines:
        raise InputDataError(f"{path} is empty", HINT)
    h = next((i for i, ln in enumerate(lines) if ln.strip()), None)  # blank lines before the header hold no row
    if h is None:
        raise InputDataError(f"{path} holds only blank lines (no header)", HINT)
    sep = _delimiter(lines[h])
    try:
        header = [x.strip() for x in next(csv.reader([lines[h]], delimiter=sep, strict=True), [])]
    except csv.Error as exc:
        raise InputDataError(f"{path}: the header line is not valid CSV ({one_line(exc)})", HINT) from exc
    cols = resolve_columns(header, mapping, path)
    rows = RowSet.from_lines(path.name, "shop.events", lines[h + 1:], first_line=h + 2)
    fields = rows.split(sep, header, quoted=True)
    rows.fields = pd.DataFrame({c: fields[f] for c, f in cols.items()}, index=fields.index)
    return _build(rows, cols, path.stem, path.resolve().parent)


def read_parquet(path: Path, mapping: dict[str, str] | None = None) -> ShopFrames:
    """Read an events Parquet file into shop frames (values are validated as text, like CSV fields)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = require_file(path, "events parquet", HINT)
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputDataError(f"{path} is not a readable Parquet file: {one_line(exc)}", HINT) from exc
    cols = resolve_columns(list(schema.names), mapping, path)
    try:  # a sound footer says nothing of the pages: a corrupt page fails here
        table = pq.read_table(path, columns=list(dict.fromkeys(cols.values())))
    except (OSError, pa.ArrowException) as exc:
        raise InputDataError(f"{path} is a corrupt Parquet file: {one_line(exc)}",
                             "write or copy the file again; its footer reads but its data does not") from exc
    binary = {c for c, f in cols.items()
              if pa.types.is_binary(table[f].type) or pa.types.is_large_binary(table[f].type)}
    as_text = {}
    for c, f in cols.items():
        if c in binary:
            continue
        try:
            as_text[c] = pc.cast(table[f], pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InputDataError(f"{path}: column {f!r} ({table[f].type}) cannot be read as {c}: {one_line(exc)}",
                                 "a column of numbers, text or timestamps, or a mapping to another column") from exc
    df = (pa.table(as_text).to_pandas(types_mapper=None).astype(object) if as_text
          else pd.DataFrame(index=pd.RangeIndex(table.num_rows)))
    invalid = {}
    for c in binary:  # undeclared bytes: invalid UTF-8 refuses its row (shown as \xNN, as in CSV lines)
        values = table[cols[c]].to_pylist()
        invalid[c] = pd.Series([b is not None and not _utf8(b) for b in values], index=range(1, len(values) + 1))
        df[c] = pd.Series([None if b is None else b.decode("utf-8", "backslashreplace") for b in values],
                          dtype=object)
    df = df[list(cols)]
    rows = RowSet.from_records(path.name, "shop.events", df)
    for c, bad in invalid.items():
        rows.add(bad, f"{INVALID_UTF8} in {c}")
    return _build(rows, cols, path.stem, path.resolve().parent)
