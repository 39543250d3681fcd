"""DIGINETICA (CIKM Cup 2016) ``train-item-views.csv``: ``session_id;user_id;item_id;timeframe;eventdate``.

- Header required; names compared loosely, so the challenge's ``sessionId;userId;itemId;timeframe;eventdate``
  reads too. Every row is a ``view``; ``session_id`` is kept as text.
- ``ts`` = ``eventdate`` (UTC midnight) + ``timeframe`` milliseconds (time since the session started).
- Users: ``user_id`` is ``NA``/empty on anonymous rows. A row with a user id keeps it; an anonymous row of a
  session that names a user on some row gets that session's first named user (a user who logged in
  mid-session: 6 sessions of the sample mix both); a fully anonymous session
  gets the derived id ``ANON_USER_BASE + session_id`` (1e12 + s: far above real ids, still a bigint), and
  its user row has ``attrs`` = {"anonymous": true, "session_id": s}.
- Items are derived (``item <id>``, category ``unknown``: this file has no categories).
- Event id = line number; duplicate key = (session, item, ts).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.errors import InputDataError
from pipeline.frames import ShopFrames
from pipeline.ingest.base import (
    IMPOSSIBLE_TS,
    RowSet,
    derive_items,
    derive_users,
    event_frame,
    normalise_name,
    quote_value,
    read_text,
    require_file,
    safe_text,
)

ANON_USER_BASE = 10**12
COLUMNS = ["session_id", "user_id", "item_id", "timeframe", "eventdate"]
HINT = "PATH is the train-item-views csv: session_id;user_id;item_id;timeframe;eventdate with a header"


def _file(path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob("*item-views*.csv")) or sorted(path.glob("*.csv"))
        if len(found) != 1:
            raise InputDataError(f"expected one item-views .csv in {path}, found {len(found)}", HINT)
        path = found[0]
    return require_file(path, "DIGINETICA item-views csv", HINT)


def read(path: Path, mapping: dict[str, str] | None = None) -> ShopFrames:
    """Read a DIGINETICA item-views csv into shop frames; ``mapping`` is not used."""
    path = _file(path)
    lines = read_text(path)
    if not lines:
        raise InputDataError(f"{path} is empty", HINT)
    header = [normalise_name(h) for h in lines[0].split(";")]
    if header != [normalise_name(c) for c in COLUMNS]:
        raise InputDataError(f"{path}: unexpected header {safe_text(repr(lines[0]), 200)}", HINT)
    rows = RowSet.from_lines(path.name, "shop.events", lines[1:], first_line=2)
    f = rows.split(";", COLUMNS)
    session = rows.ids("session_id")
    anon = f["user_id"].str.strip().isin(["NA", ""]) & f["user_id"].notna()
    rows.fields.loc[anon, "user_id"] = None  # anonymous: not a bad id
    known = rows.ids("user_id")
    item = rows.ids("item_id")
    frame_ms = rows.integers("timeframe", lo=0, hi=10**12)
    day = pd.to_datetime(f["eventdate"].str.strip(), format="%Y-%m-%d", errors="coerce", utc=True)
    bad_day = f["eventdate"].notna() & day.isna()
    rows.add(bad_day, f"{IMPOSSIBLE_TS} (eventdate) " + quote_value(f["eventdate"][bad_day])
             + ": expected YYYY-MM-DD")
    ts = day + pd.to_timedelta(frame_ms.astype("float64"), unit="ms")
    rows.ts_range(ts)
    rows.dedupe(pd.DataFrame({"s": session, "i": item, "t": ts}), "event (session_id, item_id, ts)")
    ok = rows.ok
    s = session[ok].astype("int64")
    owner = known[ok].groupby(s, sort=False).transform("first")  # first known user of the session
    user = known[ok].fillna(owner).fillna(s + ANON_USER_BASE).astype("int64")
    session_id = s.astype(str).astype(object)
    events = event_frame(ok.index[ok], user, item[ok], "view", ts[ok], session_id=session_id)
    users = derive_users(events)
    anon_users = users["user_id"] >= ANON_USER_BASE
    anon_attrs = [{"anonymous": True, "session_id": str(u - ANON_USER_BASE)}
                  for u in users.loc[anon_users, "user_id"]]
    users.loc[anon_users, "attrs"] = pd.Series(anon_attrs, index=users.index[anon_users], dtype=object)
    return ShopFrames(users=users, items=derive_items(events), events=events, rejects=rows.rejects(),
                      name=path.stem)
