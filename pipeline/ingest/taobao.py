"""Taobao UserBehavior (Alibaba Tianchi): ``user_id,item_id,category_id,behavior_type,timestamp``, no header.

Mapping of ``behavior_type`` onto the shop contract's five event types:

- ``pv`` (item detail page view) -> ``view``
- ``fav`` (favourite) -> ``click``: the contract has no favourite type, and a favourite is an intent signal
  between a view and a cart, which is where ``click`` sits in the funnel weights;
- ``cart`` -> ``add_to_cart``; ``buy`` -> ``purchase``.

Items are derived from the events: ``category`` = the category id as text (of the item's first valid row),
``title`` = ``item <id>``, ``attrs`` = {category_id}; users are derived (created at their first event).
Timestamps are unix seconds. The 35 rows of the sample dated before the documented window
(2017-11-25 .. 2017-12-03, China time) are *kept*: they are plausible times, and the window is a property of
the dataset's collection, not a validity rule; a temporal split cuts by date anyway.
Event id = line number; duplicate key = the whole row (user, item, type, ts), an exact double log.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.errors import InputDataError
from pipeline.frames import ShopFrames
from pipeline.ingest.base import RowSet, derive_items, derive_users, event_frame, read_text, require_file

BEHAVIOURS = {"pv": "view", "fav": "click", "cart": "add_to_cart", "buy": "purchase"}
COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
HINT = "PATH is the UserBehavior csv (or a folder holding exactly one .csv)"


def _file(path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob("*.csv"))
        if len(found) != 1:
            raise InputDataError(f"expected one .csv in {path}, found {len(found)}", HINT)
        path = found[0]
    return require_file(path, "Taobao UserBehavior csv", HINT)


def read(path: Path, mapping: dict[str, str] | None = None) -> ShopFrames:
    """Read a UserBehavior csv into shop frames; ``mapping`` is not used."""
    path = _file(path)
    rows = RowSet.from_lines(path.name, "shop.events", read_text(path))
    rows.split(",", COLUMNS)
    user = rows.ids("user_id")
    item = rows.ids("item_id")
    cat = rows.ids("category_id")
    etype = rows.choice("behavior_type", BEHAVIOURS)
    ts = rows.timestamps("timestamp", unit="s", label="ts")
    rows.dedupe(pd.DataFrame({"u": user, "i": item, "e": etype, "t": ts}), "event")
    ok = rows.ok
    events = event_frame(ok.index[ok], user[ok], item[ok], etype[ok], ts[ok])
    cats = (pd.DataFrame({"item_id": item[ok], "category_id": cat[ok]})
            .drop_duplicates("item_id").set_index("item_id")["category_id"])
    items = derive_items(events)
    cid = items["item_id"].map(cats).astype("int64")
    items["category"] = cid.astype(str).astype(object)
    items["attrs"] = [{"category_id": int(c)} for c in cid]
    return ShopFrames(users=derive_users(events), items=items, events=events, rejects=rows.rejects(),
                      name=path.stem)
