"""MovieLens 100K (the ``ml-100k`` folder): ratings, movies, users.

Mapping choices:

- ``u.data`` (user, item, rating, unix ts; TAB): one ``view`` event per rating (a rating means the user
  watched the movie; it is neither a click nor a purchase), ``quantity`` 1, no session. The rating is kept
  as an extra ``rating`` column of the events frame (evaluation uses it; ``load_shop`` ignores it).
  Event id = line number of ``u.data``, so a re-import gives identical rows. Key for duplicates:
  (user_id, item_id), since MovieLens holds one rating per pair and a second would count twice.
- ``u.item`` (``|``, latin-1): ``title``; ``category`` = the first flagged genre in ``u.genre`` order (one
  top-level category, so category diversity is meaningful), ``description`` = all genres ", "-joined,
  ``attrs`` = {genres, imdb_url, video_release_date}; ``created_at`` = release date (UTC midnight; items
  without one get their first rating's time).
- ``u.user`` (``|``): ``attrs`` = {age, gender, occupation, zip}; ``created_at`` = the user's first rating.
- A rating whose movie or user has no valid catalogue row keeps its event and gets a stub row
  (``derive_items`` / ``derive_users``): the rating is the fact, the catalogue only describes it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.errors import InputDataError
from pipeline.frames import ShopFrames
from pipeline.ingest.base import (
    RowSet,
    concat_rejects,
    derive_items,
    derive_users,
    event_frame,
    read_text,
    require_file,
)

#: ``u.genre``'s order, used when that file is absent.
GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western"]
HINT = "PATH is the ml-100k folder holding u.data (and u.item, u.user, u.genre)"


def _genres(folder: Path) -> list[str]:
    path = folder / "u.genre"
    if not path.is_file():
        return GENRES
    lines = read_text(path, encoding="latin-1")
    rows = [ln.split("|") for ln in lines if ln.strip()]
    bad = [n for n, ln in enumerate(lines, start=1) if ln.count("|") == 1 and not ln.split("|")[1].strip().isdigit()]
    if bad:  # the genre order defines every item's flags: guessing it would mislabel the whole catalogue
        raise InputDataError(f"{path}: genre line(s) {bad[:5]} have no integer index",
                             "u.genre holds `name|index` lines (or remove it to use the standard ml-100k order)")
    return [name for name, _ in sorted(((r[0], int(r[1])) for r in rows if len(r) == 2), key=lambda r: r[1])]


def read_ratings(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``u.data`` -> (events with ``rating``, rejects)."""
    rows = RowSet.from_lines(path.name, "shop.events", read_text(path))
    rows.split("\t", ["user_id", "item_id", "rating", "timestamp"])
    user = rows.ids("user_id")
    item = rows.ids("item_id")
    rating = rows.integers("rating", lo=1, hi=5)
    ts = rows.timestamps("timestamp", unit="s", label="ts")
    rows.dedupe(pd.DataFrame({"u": user, "i": item}), "rating (user_id, item_id)")
    ok = rows.ok
    events = event_frame(ok.index[ok], user[ok], item[ok], "view", ts[ok], rating=rating[ok].astype("int64"))
    return events, rows.rejects()


def read_movies(path: Path, genres: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``u.item`` -> (items, rejects)."""
    rows = RowSet.from_lines(path.name, "shop.items", read_text(path, encoding="latin-1"))
    flags = [f"g{i}" for i in range(len(genres))]
    f = rows.split("|", ["item_id", "title", "release_date", "video_release_date", "imdb_url", *flags])
    item = rows.ids("item_id")
    bad_flag = pd.Series(False, index=f.index)
    for c in flags:
        bad_flag |= f[c].notna() & ~f[c].isin(["0", "1"])
    rows.add(bad_flag, "bad genre flags: expected 0 or 1")
    released = pd.to_datetime(f["release_date"], format="%d-%b-%Y", errors="coerce", utc=True)
    bad_date = f["release_date"].notna() & (f["release_date"].str.strip() != "") & released.isna()
    rows.add(bad_date, "bad release_date: expected DD-Mon-YYYY")
    rows.dedupe(item, "item_id")
    ok = rows.ok
    f = f[ok]
    names = [[g for g, c in zip(genres, flags, strict=True) if r[c] == "1"] for r in f.to_dict("records")]
    items = pd.DataFrame({
        "item_id": item[ok].astype("int64").to_numpy(),
        "title": [t.strip() or f"item {i}" for t, i in zip(f["title"], item[ok], strict=True)],
        "description": [", ".join(g) or None for g in names],
        "category": [g[0] if g else "unknown" for g in names],
        "brand": None, "price": None, "in_stock": True, "visible": True,
        "created_at": released[ok].to_numpy(),
        "image_path": None,
        "attrs": [{"genres": g, "imdb_url": u or None, "video_release_date": v or None}
                  for g, u, v in zip(names, f["imdb_url"], f["video_release_date"], strict=True)],
    })
    return items, rows.rejects()


def read_users(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``u.user`` -> (users, rejects)."""
    rows = RowSet.from_lines(path.name, "shop.users", read_text(path, encoding="latin-1"))
    f = rows.split("|", ["user_id", "age", "gender", "occupation", "zip"])
    user = rows.ids("user_id")
    age = rows.integers("age", lo=0, hi=150)
    rows.dedupe(user, "user_id")
    ok = rows.ok
    f = f[ok]
    users = pd.DataFrame({
        "user_id": user[ok].astype("int64").to_numpy(),
        "created_at": pd.NaT,
        "attrs": [{"age": int(a), "gender": g, "occupation": o, "zip": z}
                  for a, g, o, z in zip(age[ok], f["gender"], f["occupation"], f["zip"], strict=True)],
    })
    return users, rows.rejects()


def read(path: Path, mapping: dict[str, str] | None = None) -> ShopFrames:
    """Read an ml-100k folder (or its ``u.data``) into shop frames; ``mapping`` is not used."""
    folder = path.parent if path.is_file() else path
    ratings = require_file(folder / "u.data", "MovieLens ratings file u.data", HINT)
    events, rejects = read_ratings(ratings)
    items = users = None
    parts = [rejects]
    if (folder / "u.item").is_file():
        items, rej = read_movies(folder / "u.item", _genres(folder))
        parts.append(rej)
    if (folder / "u.user").is_file():
        users, rej = read_users(folder / "u.user")
        parts.append(rej)
    return ShopFrames(users=derive_users(events, users), items=derive_items(events, items), events=events,
                      rejects=concat_rejects(parts), name=folder.name)
