"""Amazon review 5-core as preprocessed by S3-Rec: ``<Name>.txt`` plus ``<Name>_item2attributes.json``.

- ``<Name>.txt``: one user per line, ``user item_1 ... item_n`` in chronological order, no timestamps. Each
  item becomes a ``purchase`` event (a review implies a purchase, and it is the strongest signal these files
  carry). Timestamps are synthetic and strictly increasing per user, one day apart and aligned at the end:
  every user's last item is at ``END_TS`` (2014-07-01 UTC; the 2014 release is when the reviews were
  collected), the one before it a day earlier, and so on. So ``ts`` order is the file's order and
  leave-one-out splits recover it exactly, and a temporal reader (recency decay, the ranker's daily windows,
  its holdout day) sees every user's latest items near the end, not only those of the few longest lines.
  Event ids run over the valid events in file order. A line is the row: any bad token refuses the whole
  line, since a sequence with a hole would silently change every later position; a second line for the same
  user is a ``duplicate user``.
- ``<Name>_item2attributes.json``: item -> attribute ids. S3-Rec stores the brand first (when the item has
  one) and then the category ids of the item's category lists minus the root, in order; the id -> name
  map was not published. So: an attribute id that *never* occurs after position 0 in any item is a brand
  (in the files here this holds for 435 Beauty / 1,154 Sports ids; category ids recur deeper in the lists),
  and becomes ``brand`` (as text). ``category`` is the remaining ids as a path, ``>``-joined in stored
  order without repeats (e.g. ``8>9>10``; the first segment is the top-level category), ``unknown`` when
  there are none. ``attrs`` keeps the full list. Catalogue items without events are loaded too. Without
  the attributes file the items are stubs (``item <id>``, category ``unknown``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import InputDataError
from pipeline.frames import ShopFrames
from pipeline.ingest.base import (
    HUGE_FIELD,
    MAX_FIELD_CHARS,
    MISSING_FIELD,
    RowSet,
    concat_rejects,
    derive_items,
    derive_users,
    empty_rejects,
    event_frame,
    quote_value,
    read_text,
    require_file,
    safe_text,
)

END_TS = pd.Timestamp("2014-07-01", tz="UTC")
HINT = "PATH is <Name>.txt (lines `user item1 item2 ...`), with <Name>_item2attributes.json beside it"


def read_sequences(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``<Name>.txt`` -> (purchase events with synthetic ts, rejects)."""
    rows = RowSet.from_lines(path.name, "shop.events", read_text(path))
    rows.line_checks()
    tokens = rows.clean_text().str.split()
    n = tokens.str.len()
    rows.add(n < 2, f"{MISSING_FIELD}: no items after the user id")
    flat = tokens.explode()
    flat = flat[flat.notna()].astype(object)
    pos = flat.groupby(level=0).cumcount()
    bad_tok = ~flat.str.match(r"^[0-9]{1,18}$", na=False).astype(bool)
    huge = flat.str.len() > MAX_FIELD_CHARS
    if huge.any():
        rows.add(huge.groupby(level=0).any(), f"{HUGE_FIELD}: a token over {MAX_FIELD_CHARS} chars")
    for label, bad in (("user_id", bad_tok & (pos == 0)), ("item_id", bad_tok & (pos > 0))):
        first_bad = quote_value(flat[bad]).groupby(level=0).first()  # the line's first bad token
        rows.add(bad.groupby(level=0).any(), f"bad {label} " + first_bad + ": not a non-negative integer")
    good_user = flat[(pos == 0) & ~bad_tok].astype("int64")
    rows.dedupe(good_user, "user")
    ok = rows.ok
    line, tok, p = flat.index.to_numpy(), flat.to_numpy(), pos.to_numpy()
    sel = ok.reindex(line).to_numpy(dtype=bool) & (p > 0)
    last = n.reindex(line[sel]).to_numpy() - 1  # the line's last item's position
    ts = END_TS - pd.to_timedelta(last - p[sel], unit="D")
    events = event_frame(np.arange(1, int(sel.sum()) + 1), good_user.reindex(line[sel]).to_numpy(),
                         tok[sel].astype("int64"), "purchase", ts)
    return events, rows.rejects()


def read_attributes(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``<Name>_item2attributes.json`` -> (items with category/brand, rejects for malformed entries)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8", errors="replace"))
    except ValueError as exc:
        raise InputDataError(f"{path} is not valid JSON: {exc}", "the item2attributes file") from exc
    if not isinstance(data, dict):
        raise InputDataError(f"{path} is not a JSON object (item -> [attribute ids])", HINT)
    good: dict[int, list[int]] = {}
    first_key: dict[int, str] = {}
    bad: list[tuple[str, object, str]] = []
    for key, value in data.items():
        reasons = []
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 18):
            reasons.append(f"bad item_id '{safe_text(key, 40)}': not a non-negative integer")
        elif int(key) in first_key:  # "10" and "010": one item; the first entry wins, as for every key
            reasons.append(f"duplicate item_id: same key as '{safe_text(first_key[int(key)], 40)}'")
        if not (isinstance(value, list) and all(isinstance(a, int) and not isinstance(a, bool) and a >= 0
                                                for a in value)):
            reasons.append("bad attributes: expected a list of non-negative integer ids")
        if reasons:
            bad.append((key, value, "; ".join(reasons)))
        else:
            good[int(key)] = value
            first_key[int(key)] = key
    later = {a for attrs in good.values() for a in attrs[1:]}
    ids = sorted(good)
    brands, cats = [], []
    for i in ids:
        attrs = good[i]
        brand = attrs[0] if attrs and attrs[0] not in later else None
        rest = list(dict.fromkeys(attrs[1:] if brand is not None else attrs))
        brands.append(None if brand is None else str(brand))
        cats.append(">".join(map(str, rest)) or "unknown")
    items = pd.DataFrame({
        "item_id": np.asarray(ids, dtype="int64"), "title": [f"item {i}" for i in ids], "description": None,
        "category": cats, "brand": brands, "price": None, "in_stock": True, "visible": True,
        "created_at": pd.NaT, "image_path": None, "attrs": [{"attributes": good[i]} for i in ids],
    })
    rejects = (pd.DataFrame({
        "source": "shop.items",
        "raw": [{"file": path.name, "key": safe_text(k), "value": safe_text(json.dumps(v))}
                for k, v, _ in bad],
        "reason": [r for _, _, r in bad],
    }) if bad else empty_rejects())
    return items, rejects


def attributes_path(path: Path) -> Path:
    """``<Name>_item2attributes.json`` beside ``<Name>.txt``."""
    return path.with_name(f"{path.stem}_item2attributes.json")


def read(path: Path, mapping: dict[str, str] | None = None) -> ShopFrames:
    """Read ``<Name>.txt`` (+ its attributes file) into shop frames; ``mapping`` is not used."""
    path = require_file(path, "S3-Rec sequence file", HINT)
    events, rejects = read_sequences(path)
    parts, items = [rejects], None
    attrs = attributes_path(path)
    if attrs.is_file():
        items, rej = read_attributes(attrs)
        parts.append(rej)
    return ShopFrames(users=derive_users(events), items=derive_items(events, items), events=events,
                      rejects=concat_rejects(parts), name=path.stem)
