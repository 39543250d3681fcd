"""A minimal live run straight from ``shop.*``: what the refresh needs, without the nightly pipeline.

For the refresh's tests and benchmark (and a refresh demo on a shop that has no nightly run yet): it writes
the files a nightly run leaves under ``RERANK_HOME/runs/<run_id>/snapshot`` (``items.parquet``,
``item_features.parquet``, ``neighbours.parquet``, ``followers.parquet``) from simple statistics (decayed
activity, co-occurrence cosine neighbours, the seq source's followers) and publishes popularity lists with
:func:`pipeline.publish.swap.publish_run`. It is a stand-in with the nightly run's file names and columns, not a
substitute for its quality.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipeline.db.engine import connect
from pipeline.features.items import decayed_weight, top_category
from pipeline.files import write_parquet
from pipeline.recall.sequential import FollowerBuilder

WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0}
HALF_LIFE = {"view": 7.0, "click": 10.0, "add_to_cart": 14.0, "purchase": 30.0}


def _read(url: str, query: str, params: tuple, columns: list[str]) -> pd.DataFrame:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        return pd.DataFrame(cur.fetchall(), columns=columns)


def cooccurrence_neighbours(events: pd.DataFrame, k: int = 20) -> pd.DataFrame:
    """Top-``k`` cosine neighbours per item from user-item co-occurrence: item_id, rank, similar_item_id, score."""
    ev = events[events["item_id"].notna()]
    if ev.empty:
        return pd.DataFrame({"item_id": [], "rank": [], "similar_item_id": [], "score": []})
    users, u = np.unique(ev["user_id"].to_numpy(dtype="int64"), return_inverse=True)
    items, i = np.unique(ev["item_id"].to_numpy(dtype="int64"), return_inverse=True)
    x = sp.csr_matrix((np.ones(len(u)), (u, i)), shape=(len(users), len(items)))
    x.data[:] = 1.0
    x.sum_duplicates()
    x.data[:] = 1.0
    co = (x.T @ x).tocsr().astype("float64")
    norm = np.sqrt(co.diagonal())
    co = sp.diags(1 / np.where(norm > 0, norm, 1)) @ co @ sp.diags(1 / np.where(norm > 0, norm, 1))
    co = co.tocoo()
    df = pd.DataFrame({"item_id": items[co.row], "similar_item_id": items[co.col], "score": co.data})
    df = df[df["item_id"] != df["similar_item_id"]]
    df = df.sort_values(["item_id", "score", "similar_item_id"], ascending=[True, False, True])
    df = df.groupby("item_id").head(k).reset_index(drop=True)
    df["rank"] = df.groupby("item_id").cumcount() + 1
    return df[["item_id", "rank", "similar_item_id", "score"]]


def seed_live_run(url: str, home: str | Path, as_of: datetime, *, run_id: str = "seed_live", top_n: int = 20,
                  k: int = 20) -> dict:
    """Write a live run's snapshot files from events before ``as_of`` and publish popularity lists."""
    from pipeline.publish.swap import publish_run

    snap = Path(home).expanduser().resolve() / "runs" / run_id / "snapshot"
    snap.mkdir(parents=True, exist_ok=True)
    items = _read(url, "SELECT item_id, title, category, brand, price::float8, in_stock, visible, created_at "
                       "FROM shop.items ORDER BY item_id", (),
                  ["item_id", "title", "category", "brand", "price", "in_stock", "visible", "created_at"])
    events = _read(url, "SELECT user_id, item_id, event_type, ts FROM shop.events WHERE ts < %s", (as_of,),
                   ["user_id", "item_id", "event_type", "ts"])
    events["ts"] = pd.to_datetime(events["ts"], utc=True)
    ev = events[events["item_id"].notna()].assign(item_id=lambda d: d["item_id"].astype("int64"))
    ev = ev.assign(w=decayed_weight(ev, as_of, WEIGHTS, HALF_LIFE),
                   recent=(pd.Timestamp(as_of) - ev["ts"]) <= pd.Timedelta(days=3))
    g = ev.groupby("item_id")
    stats = pd.DataFrame({"activity": g["w"].sum(), "events": g.size(), "recent_events": g["recent"].sum(),
                          "purchases": g["event_type"].agg(lambda s: int((s == "purchase").sum()))})
    feats = items.drop(columns="title").merge(stats, left_on="item_id", right_index=True, how="left")
    for c in ("activity", "events", "recent_events", "purchases"):
        feats[c] = feats[c].fillna(0)
    feats["trend"] = (feats["recent_events"] + 1.0) / (feats["events"] + 10.0)
    feats["top_category"] = top_category(feats["category"])
    nb = cooccurrence_neighbours(ev, k)
    write_parquet(items, snap / "items.parquet")
    write_parquet(feats, snap / "item_features.parquet")
    write_parquet(nb, snap / "neighbours.parquet")
    fb = FollowerBuilder(items["item_id"].to_numpy())
    fb.add(events)
    write_parquet(fb.table(), snap / "followers.parquet")

    users = _read(url, "SELECT user_id FROM shop.users WHERE created_at < %s ORDER BY user_id", (as_of,),
                  ["user_id"])["user_id"].to_numpy(dtype="int64")
    avail = feats[feats["in_stock"] & feats["visible"]].sort_values(["activity", "item_id"], ascending=[False, True])
    top = avail.head(top_n)
    recs = pd.DataFrame({"user_id": np.repeat(users, len(top)), "rank": np.tile(np.arange(1, len(top) + 1), len(users)),
                         "item_id": np.tile(top["item_id"].to_numpy(), len(users)),
                         "score": np.tile((top["activity"] / max(float(top["activity"].max()), 1e-9)).to_numpy(),
                                          len(users)),
                         "reason": "popular right now", "anchor_item_id": pd.array([pd.NA] * (len(users) * len(top)),
                                                                                   dtype="Int64"),
                         "source": "popularity", "variant": "control", "model_version": "seed", "run_id": run_id,
                         "generated_at": pd.Timestamp(as_of)})
    similar = nb.assign(method="co-occurrence")
    pub = publish_run(url, run_id, recs, similar, generated_at=as_of)
    return {"run_id": run_id, "items": len(items), "neighbour_rows": len(nb), "users": len(users),
            "rows": len(recs), **{k_: v for k_, v in pub.items() if k_ in ("publication_id", "recs_table")}}
