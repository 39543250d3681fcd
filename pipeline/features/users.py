"""User features: RFM, event-type counts, decayed category/brand affinities, price preference, search terms
and the last-N behaviour sequence the ranker consumes.

Fit -> finalize -> transform on Dask. The event files are date partitions, so one user's events span
files; the stage therefore splits the events by user shard once (:mod:`pipeline.extract.shards`, the layout
score_users reuses) and each task reads its own shard's folder, computes :func:`user_partials` and finalizes
them: no central merge, and no task reads the whole shop (an Arrow user_id filter over every file made each
task scan every event, so the stage grew with users x events).
The partials are still mergeable (:func:`merge_partials`: per-user sums, per (user, key) decayed sums,
each user's last ``seq_len`` events per part), which the unit tests check, so a partition-at-a-time
consumer can use them. Transform and finalize run without a cluster in the unit tests.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.extract.snapshot import read_events
from pipeline.features.items import decayed_weight, top_category
from pipeline.files import replacing, replacing_dir

COUNT_TYPES = ("view", "click", "add_to_cart", "purchase", "search")
#: Keys kept per affinity and search terms kept per user.
TOP_K = 10


def user_partials(part: pd.DataFrame, items: pd.DataFrame, as_of: datetime, weights: dict, half_life: dict,
                  seq_len: int) -> dict[str, pd.DataFrame]:
    """Transform (per partition): mergeable partial aggregates of one event partition."""
    # An empty snapshot's placeholder file has untyped columns: coerce so every partial has one schema.
    part = part.astype({"user_id": "int64", "item_id": "Int64", "event_id": "int64", "quantity": "Int64"})
    part["ts"] = pd.to_datetime(part["ts"], utc=True)
    # Top category per item (small) rather than per event (large).
    cat_items = items[["item_id", "price", "category", "brand"]].assign(top=top_category(items["category"]))
    ev = part.merge(cat_items, on="item_id", how="left")
    ev["w"] = decayed_weight(ev, as_of, weights, half_life).to_numpy()
    ev["spend"] = np.where(ev["event_type"] == "purchase", ev["price"].fillna(0.0) * ev["quantity"].fillna(1), 0.0)
    base = pd.DataFrame({"user_id": ev["user_id"].astype("int64"), "last_ts": ev["ts"], "events": 1,
                         "monetary": ev["spend"]})
    for t in COUNT_TYPES:
        base[f"n_{t}"] = (ev["event_type"] == t).astype("int64")
    g = base.groupby("user_id")
    sums = g[["events", "monetary", *[f"n_{t}" for t in COUNT_TYPES]]].sum()
    sums["last_ts"] = g["last_ts"].max()
    has_item = ev[ev["item_id"].notna()]
    # Price preference: interaction-weighted mean price and its weight (mergeable as two sums).
    pw = has_item[has_item["price"].notna()]
    price = pd.DataFrame({"user_id": pw["user_id"].astype("int64"), "pw": pw["w"], "pwx": pw["w"] * pw["price"]})
    price = price.groupby("user_id")[["pw", "pwx"]].sum()
    cats = has_item.assign(key=has_item["top"].fillna("")).groupby(["user_id", "key"])["w"].sum()
    brands = has_item[has_item["brand"].notna()].groupby(["user_id", "brand"])["w"].sum()
    brands.index = brands.index.set_names(["user_id", "key"])
    searches = ev[(ev["event_type"] == "search") & ev["query"].notna()]
    hl = {**half_life, "search": half_life.get("search", 7.0)}
    terms = searches.assign(key=searches["query"].str.strip().str.lower(),
                            w=decayed_weight(searches, as_of, {"search": 1.0}, hl))
    terms = terms.groupby(["user_id", "key"])["w"].sum()
    pairs = has_item[["user_id", "item_id"]].drop_duplicates()
    sessions = ev.loc[ev["session_id"].notna(), ["user_id", "session_id"]].drop_duplicates()
    seq = (has_item.sort_values(["user_id", "ts", "event_id"])
           .groupby("user_id").tail(seq_len)[["user_id", "event_id", "item_id", "event_type", "ts"]])
    return {"sums": sums, "price": price, "cats": cats.to_frame(), "brands": brands.to_frame(),
            "terms": terms.to_frame(), "pairs": pairs, "sessions": sessions, "seq": seq}


def merge_partials(parts: list[dict[str, pd.DataFrame]], seq_len: int) -> dict[str, pd.DataFrame]:
    """Combine partials of several partitions (the reduction; associative)."""
    def cat(key: str) -> pd.DataFrame:
        return pd.concat([p[key] for p in parts])

    sums = cat("sums")
    out = {"sums": sums.groupby(level=0).agg({**{c: "sum" for c in sums.columns if c != "last_ts"},
                                              "last_ts": "max"}),
           "price": cat("price").groupby(level=0).sum()}
    for k in ("cats", "brands", "terms"):
        out[k] = cat(k).groupby(level=[0, 1]).sum()
    out["pairs"] = cat("pairs").drop_duplicates()
    out["sessions"] = cat("sessions").drop_duplicates()
    out["seq"] = cat("seq").sort_values(["user_id", "ts", "event_id"]).groupby("user_id").tail(seq_len)
    return out


def group_lists(keys: np.ndarray, values: np.ndarray) -> pd.Series:
    """Per key (``keys`` sorted), the list of its values in order: one numpy split, no Python per group."""
    if len(keys) == 0:
        return pd.Series(dtype=object)
    uniq, start = np.unique(keys, return_index=True)
    return pd.Series([c.tolist() for c in np.split(np.asarray(values), start[1:])], index=uniq, dtype=object)


def _top(scores: pd.DataFrame, k: int) -> tuple[pd.Series, pd.Series]:
    """Per user, the ``k`` best keys and their scores normalised to sum 1 (ties by key, deterministic)."""
    s = scores.reset_index().rename(columns={scores.columns[0]: "w"})
    if s.empty:
        return pd.Series(dtype=object), pd.Series(dtype=object)
    s = s.sort_values(["user_id", "w", "key"], ascending=[True, False, True])
    tot = s.groupby("user_id")["w"].transform("sum")
    s["w"] = np.where(tot > 0, s["w"] / tot, 0.0).round(6)
    s = s.groupby("user_id").head(k)
    users = s["user_id"].to_numpy()
    return (group_lists(users, s["key"].astype(object).to_numpy()),
            group_lists(users, s["w"].to_numpy(dtype="float64")))


def finalize_user_features(users: pd.DataFrame, merged: dict[str, pd.DataFrame], items: pd.DataFrame,
                           as_of: datetime) -> pd.DataFrame:
    """Finalize: one row per user of ``users`` (new users get zeros and empty lists)."""
    f = users[["user_id", "created_at"]].set_index("user_id")
    sums = merged["sums"]
    f = f.join(sums, how="left")
    for c in ["events", *[f"n_{t}" for t in COUNT_TYPES]]:
        f[c] = f[c].fillna(0).astype("int64")
    f["monetary"] = f["monetary"].fillna(0.0).astype("float64")
    f["purchases"] = f["n_purchase"]
    f["frequency"] = f["n_purchase"]
    f["recency_days"] = ((pd.Timestamp(as_of) - f["last_ts"]).dt.total_seconds() / 86400.0).astype("float64")
    f["items"] = merged["pairs"].groupby("user_id").size().reindex(f.index).fillna(0).astype("int64")
    f["sessions"] = merged["sessions"].groupby("user_id").size().reindex(f.index).fillna(0).astype("int64")
    p = merged["price"]
    f["price_mean"] = (p["pwx"] / p["pw"].where(p["pw"] > 0)).reindex(f.index).astype("float64")
    med = items.groupby("category")["price"].median()
    rel = items.assign(rel=items["price"] / items["category"].map(med).where(lambda x: x > 0))
    seq = merged["seq"].merge(rel[["item_id", "price", "rel"]], on="item_id", how="left")
    f["price_median"] = seq.groupby("user_id")["price"].median().reindex(f.index).astype("float64")
    f["price_rel_category"] = seq.groupby("user_id")["rel"].mean().reindex(f.index).astype("float64")
    for name, key in (("category_affinity", "cats"), ("brand_affinity", "brands"), ("search", "terms")):
        keys, scores = _top(merged[key], TOP_K)
        if name == "search":
            f["search_terms"] = keys.reindex(f.index)
        else:
            f[f"{name}_keys"] = keys.reindex(f.index)
            f[f"{name}_scores"] = scores.reindex(f.index)
    seq = seq.sort_values(["user_id", "ts", "event_id"])
    gap = seq.groupby("user_id")["ts"].diff().dt.total_seconds().fillna(0.0)
    seq = seq.assign(gap=gap, age=(pd.Timestamp(as_of) - seq["ts"]).dt.total_seconds())
    users = seq["user_id"].to_numpy()
    f["seq_item_ids"] = group_lists(users, seq["item_id"].to_numpy(dtype="int64")).reindex(f.index)
    f["seq_event_types"] = group_lists(users, seq["event_type"].astype(object).to_numpy()).reindex(f.index)
    f["seq_gap_s"] = group_lists(users, seq["gap"].to_numpy(dtype="float64")).reindex(f.index)
    f["seq_age_s"] = group_lists(users, seq["age"].to_numpy(dtype="float64")).reindex(f.index)
    for c in ["category_affinity_keys", "category_affinity_scores", "brand_affinity_keys", "brand_affinity_scores",
              "search_terms", "seq_item_ids", "seq_event_types", "seq_gap_s", "seq_age_s"]:
        f[c] = f[c].apply(_as_list)
    f["new_user"] = f["events"] == 0
    return f.reset_index().sort_values("user_id").reset_index(drop=True)


def _as_list(v: object) -> list:
    """A plain list from a list-like cell (pandas 3 may hand back numpy arrays for Arrow lists); else []."""
    if isinstance(v, list):
        return v
    if isinstance(v, tuple | np.ndarray):
        return [x.item() if hasattr(x, "item") else x for x in v]
    return []


def user_shard_features(snapshot_dir: str, k: int, users: pd.DataFrame, items: pd.DataFrame, as_of: datetime,
                        weights: dict, half_life: dict, seq_len: int,
                        out: str | None = None) -> pd.DataFrame | tuple[int, int]:
    """One task: the finished features of shard ``k``'s ``users`` (with ``out``: written there, and only
    (users, users without events) returned).

    It reads only its shard's folder of the run's user-sharded events (:mod:`pipeline.extract.shards`), so its
    memory and time follow the shard, not the shop, and a shard holds all of its users' events.
    """
    from pipeline.extract.shards import read_shard_events

    part = read_shard_events(snapshot_dir, k)
    partial = user_partials(part, items, as_of, weights, half_life, seq_len)
    feats = finalize_user_features(users, partial, items, as_of).sort_values("user_id").reset_index(drop=True)
    if out is None:
        return feats
    write_user_features(feats, out)
    return len(feats), int(feats["new_user"].sum())


#: Users per shard at most (a shard's events and lists must fit a worker comfortably).
USERS_PER_SHARD = 20_000
#: The run's user features: one Parquet part per shard under the snapshot.
USER_FEATURES = "user_features"


def build_user_features(snapshot_dir: str | Path, as_of: datetime, client: object, *,
                        weights: dict[str, float], half_life_days: dict[str, float], seq_len: int = 50,
                        shard_users: int = USERS_PER_SHARD, chunk_rows: int = 500_000) -> dict:
    """Per-user features for every snapshot user, written as ``user_features/part-*.parquet``; returns counts.

    Users are cut into the scoring stage's shards (:func:`pipeline.extract.shards.plan_shards`, at most
    ``shard_users`` each); the snapshot's events are split by shard once (``chunk_rows`` rows at a time; the
    layout score_users reuses), and each Dask task computes its shard's features from its own events and
    writes its own part, so no process ever holds every user's features or reads every event.
    """
    from pipeline.extract.shards import plan_shards, shard_cuts, shard_events

    snap = Path(snapshot_dir)
    items = pd.read_parquet(snap / "items.parquet", columns=["item_id", "price", "category", "brand"])
    users = pd.read_parquet(snap / "users.parquet")
    bounds = plan_shards(users["user_id"].to_numpy(), shard_users)
    with replacing_dir(snap / USER_FEATURES) as out:
        if len(bounds):
            layout = shard_events(snap, bounds, client, chunk_rows=chunk_rows)
            items_f = client.scatter(items, broadcast=True)  # type: ignore[attr-defined]
            users = users.sort_values("user_id", kind="stable").reset_index(drop=True)
            cuts = np.r_[0, shard_cuts(users["user_id"].to_numpy(), bounds), len(users)]
            futs = [client.submit(user_shard_features, str(snap), k,  # type: ignore[attr-defined]
                                  users.iloc[cuts[k]:cuts[k + 1]].reset_index(drop=True), items_f, as_of, weights,
                                  half_life_days, seq_len, out=str(out / f"part-{k:05d}.parquet"), pure=False)
                    for k in range(len(bounds))]
            counts = client.gather(futs)  # type: ignore[attr-defined]
        else:
            layout = {"rows": 0}
            empty = read_events(snap).iloc[:0]
            feats = finalize_user_features(users, user_partials(empty, items, as_of, weights, half_life_days,
                                                                seq_len), items, as_of)
            write_user_features(feats, out / "part-00000.parquet")
            counts = [(len(feats), int(feats["new_user"].sum()))]
    return {"users": sum(n for n, _ in counts), "users_without_events": sum(m for _, m in counts),
            "parts": len(counts), "events_sharded": int(layout["rows"])}


def user_feature_parts(snapshot_dir: str | Path) -> list[Path]:
    """The run's user feature parts, in user order."""
    return sorted((Path(snapshot_dir) / USER_FEATURES).glob("part-*.parquet"))


def read_user_features(snapshot_dir: str | Path) -> pd.DataFrame:
    """Every user's features as one frame (tests and small shops; the pipeline streams the parts)."""
    parts = user_feature_parts(snapshot_dir)
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()


def read_user_features_of(snapshot_dir: str | Path, user_ids: np.ndarray,
                          columns: list[str] | None = None) -> pd.DataFrame | None:
    """The run's user features of ``user_ids`` only (an Arrow filter on user_id over the parts, only
    ``columns``): what a scoring shard needs, never the whole table. None when the run wrote no parts."""
    import pyarrow.dataset as pads

    parts = user_feature_parts(snapshot_dir)
    if not parts:
        return None
    ids = np.unique(np.asarray(user_ids, dtype="int64"))
    data = pads.dataset([str(p) for p in parts], format="parquet")
    if columns is not None and not set(columns) <= set(data.schema.names):
        return None  # parts of an older build: the caller computes what it needs
    if not len(ids):
        return data.schema.empty_table().select(columns or data.schema.names).to_pandas()
    # parts are user_id ranges: the bounds let Arrow skip whole files and row groups before the isin
    flt = ((pads.field("user_id") >= int(ids[0])) & (pads.field("user_id") <= int(ids[-1]))
           & pads.field("user_id").isin(ids))
    return data.to_table(columns=columns, filter=flt).to_pandas()


LIST_TYPES = {"category_affinity_keys": "string", "category_affinity_scores": "float64",
              "brand_affinity_keys": "string", "brand_affinity_scores": "float64", "search_terms": "string",
              "seq_item_ids": "int64", "seq_event_types": "string", "seq_gap_s": "float64", "seq_age_s": "float64"}


def write_user_features(feats: pd.DataFrame, path: str | Path) -> None:
    """Parquet with explicit list types (an all-empty list column would otherwise be list<null>)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(feats, preserve_index=False)
    for name, t in LIST_TYPES.items():
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pa.array(feats[name].tolist(), type=pa.list_(pa.type_for_alias(t))))
    # The pandas metadata would still name the inferred list<null> dtype; Arrow's own types suffice.
    with replacing(path) as tmp:
        pq.write_table(table.replace_schema_metadata(None), tmp)
