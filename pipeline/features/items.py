"""Item features: per-type counts and decayed weights, smoothed rates, trend, price position, age, images.

NVTabular discipline: :func:`item_event_sums` is the pure per-partition transform; the fit is one Dask
groupby-sum of it to per-item sums; :func:`finalize_item_features` turns the small result plus the
catalogue into the feature table in plain pandas. Both are unit-tested without a cluster.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.files import write_parquet

ITEM_EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
#: Days that count as "recent" for the short trend window.
SHORT_DAYS = 3
#: Long trend window (days).
LONG_DAYS = 28
#: Strength of the Beta prior behind the smoothed rates (pseudo-views at the catalogue-wide rate).
PRIOR_STRENGTH = 20.0
SUM_COLUMNS = ["activity", "events", "recent_events", "long_events", "purchases",
               *[f"n_{t}" for t in ITEM_EVENT_TYPES], *[f"decayed_{t}" for t in ITEM_EVENT_TYPES]]


def top_category(category: pd.Series) -> pd.Series:
    """The first level of a category path (``Home>Kitchen>Knives`` -> ``Home``)."""
    return category.fillna("").astype(str).str.split(">", n=1).str[0]


def _per_type(events: pd.DataFrame, values: dict[str, float], default: float) -> np.ndarray:
    """``values[event_type]`` per event: one factorize of the column, a lookup per distinct type (a
    Categorical with fixed categories converted an Arrow string column to objects first, ~3x slower)."""
    codes, uniques = pd.factorize(events["event_type"])
    table = np.append(np.asarray([values.get(str(t), default) for t in uniques], dtype="float64"), default)
    return table[codes]  # code -1 (missing type) picks the appended default


#: What an event's age is measured from: ``as_of`` (the run's cut-off) or ``user_last`` (the user's own latest
#: event before it: the order of a user's events counts, not how long ago they last came back).
DECAY_FROM = ("as_of", "user_last")


def decayed_weight(events: pd.DataFrame, as_of: datetime, weights: dict[str, float],
                   half_life_days: dict[str, float], decay_from: str = "as_of",
                   user_last: pd.Series | None = None) -> pd.Series:
    """Weight of each event: its type's weight halved every half-life of that type before ``as_of`` (or
    before the user's latest event, ``decay_from="user_last"``)."""
    w = _per_type(events, weights, 0.0)
    return pd.Series(w * decay_factor(events, as_of, half_life_days, decay_from, user_last).to_numpy(),
                     index=events.index)


def decay_factor(events: pd.DataFrame, as_of: datetime, half_life_days: dict[str, float],
                 decay_from: str = "as_of", user_last: pd.Series | None = None) -> pd.Series:
    """``2 ** (-age / half_life)`` of each event, with its type's half-life (7 days when unknown); the age is
    counted from ``as_of`` or, with ``decay_from="user_last"``, from the user's latest event (at most as_of):
    of ``events``, or ``user_last`` (ts by user_id) when they are one chunk of a user's events."""
    if decay_from not in DECAY_FROM:
        raise ValueError(f"decay_from must be one of {DECAY_FROM}, not {decay_from!r}")
    hl = _per_type(events, half_life_days, 7.0)
    ref = pd.Timestamp(as_of)
    if decay_from == "user_last" and len(events):
        last = (user_last.reindex(events["user_id"].to_numpy()).set_axis(events.index) if user_last is not None
                else events.groupby("user_id")["ts"].transform("max"))
        ref = last.clip(upper=ref)
    age_days = (ref - events["ts"]).dt.total_seconds().to_numpy() / 86400.0
    return pd.Series(np.exp2(-np.clip(age_days, 0, None) / hl), index=events.index)


#: Fixed-point unit of the decayed sums (``activity``, ``decayed_*``): integers add up exactly in any order,
#: so the fit does not depend on how the events are split into partitions (float sums do, in the last bits).
FIXED_POINT = 2**30


def _is_decayed(col: str) -> bool:
    return col == "activity" or col.startswith("decayed_")


def item_event_sums(part: pd.DataFrame, as_of: datetime, weights: dict, half_life: dict) -> pd.DataFrame:
    """Transform (per partition): one row per item event with the columns that the fit sums per item
    (all int64; the decayed ones in units of 1 / :data:`FIXED_POINT`)."""
    part = part[part["item_id"].notna()]
    # One categorical encoding of event_type serves every per-type lookup below.
    types = list(dict.fromkeys([*ITEM_EVENT_TYPES, *weights, *half_life]))
    codes = pd.Categorical(part["event_type"], categories=types).codes
    idx = np.where(codes < 0, len(types), codes)
    w = np.append([weights.get(t, 0.0) for t in types], 0.0)[idx]
    hl = np.append([half_life.get(t, 7.0) for t in types], 7.0)[idx]
    age = (pd.Timestamp(as_of) - part["ts"]).to_numpy()
    age_days = age / np.timedelta64(1, "D")
    decay = np.exp2(-np.clip(age_days, 0, None) / hl)
    def fixed(x: np.ndarray) -> np.ndarray:
        return np.rint(x * FIXED_POINT).astype("int64")

    out = {"item_id": part["item_id"].astype("int64").to_numpy(),
           "activity": fixed(w * decay),
           "events": np.ones(len(part), dtype="int64"),
           "recent_events": (age <= np.timedelta64(SHORT_DAYS, "D")).astype("int64"),
           "long_events": (age <= np.timedelta64(LONG_DAYS, "D")).astype("int64"),
           "purchases": (codes == types.index("purchase")).astype("int64")}
    for t in ITEM_EVENT_TYPES:
        hit = codes == types.index(t)
        out[f"n_{t}"] = hit.astype("int64")
        out[f"decayed_{t}"] = fixed(np.where(hit, decay, 0.0))
    return pd.DataFrame(out)[["item_id", *SUM_COLUMNS]]


def _sums_meta() -> pd.DataFrame:
    cols = {"item_id": pd.Series(dtype="int64")}
    for c in SUM_COLUMNS:
        cols[c] = pd.Series(dtype="int64")
    return pd.DataFrame(cols)


def smoothed_rate(hits: pd.Series, trials: pd.Series, prior_mean: float,
                  strength: float = PRIOR_STRENGTH) -> pd.Series:
    """Beta-prior smoothed rate ``(hits + s*m) / (trials + s)``: no data gives the prior mean ``m``."""
    return (hits + strength * prior_mean) / (trials + strength)


def finalize_item_features(items: pd.DataFrame, sums: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """Finalize: join per-item sums (indexed by item_id) to the catalogue; derive rates, trend, price, age."""
    cols = ["item_id", "category", "brand", "price", "in_stock", "visible", "created_at"]
    feats = items[cols].merge(sums, left_on="item_id", right_index=True, how="left")
    for c in SUM_COLUMNS:
        feats[c] = feats[c].fillna(0).astype("int64")
        if _is_decayed(c):
            feats[c] = feats[c] / FIXED_POINT
    # Trend: share of the last SHORT_DAYS in the item's activity, smoothed so a single event is no trend.
    feats["trend"] = (feats["recent_events"] + 1.0) / (feats["events"] + 10.0)
    # Short vs long window rate per day (> 1: rising), smoothed by one pseudo-event per window.
    feats["trend_ratio"] = ((feats["recent_events"] + 1.0) / SHORT_DAYS) / ((feats["long_events"] + 1.0) / LONG_DAYS)
    views = feats["n_view"] + feats["n_click"]  # a click is also an exposure that was seen
    tot_views = float(views.sum())
    prior = {k: (float(feats[c].sum()) / tot_views if tot_views else 0.0)
             for k, c in (("ctr", "n_click"), ("atc_rate", "n_add_to_cart"), ("cvr", "n_purchase"))}
    for k, c in (("ctr", "n_click"), ("atc_rate", "n_add_to_cart"), ("cvr", "n_purchase")):
        feats[k] = smoothed_rate(feats[c], views, min(prior[k], 1.0))
    feats["top_category"] = top_category(feats["category"])
    med = feats.groupby("category")["price"].transform("median")
    feats["price_rel_category"] = (feats["price"] / med.where(med > 0)).astype("float64")
    created = pd.to_datetime(feats["created_at"], utc=True)
    feats["age_days"] = ((pd.Timestamp(as_of) - created).dt.total_seconds() / 86400.0).clip(lower=0)
    return feats.sort_values("item_id").reset_index(drop=True)


def build_item_features(snapshot_dir: str | Path, as_of: datetime, client: object, *,
                        weights: dict[str, float], half_life_days: dict[str, float],
                        images: bool = True, image_root: str | Path | None = None,
                        image_model_path: str | Path | None = None, image_model: str | None = None,
                        cache_dir: str | Path | None = None, device: str = "cpu") -> pd.DataFrame:
    """Per-item features for every catalogue item; written to ``item_features.parquet``.

    With ``images`` and items that have an ``image_path``, colour histograms and perceptual hashes are
    added (``has_image``, ``img_*`` columns; see :mod:`pipeline.features.images`), and the picture's vector
    goes to ``item_image_embeddings.parquet`` (what the text+image fusion reads): from ``image_model``
    (default ``RERANK_IMAGE_MODEL``, EfficientNet-Lite0; cached by file hash under ``cache_dir``) or, when
    ``image_model_path`` (default ``RERANK_IMAGE_MODEL_PATH``) names local weights, from that CNN (also
    kept as ``img_embedding``). The counts are in ``feats.attrs["images"]``.
    """
    if image_model_path is None or image_model is None:
        from pipeline.settings import get_settings

        s = get_settings()
        image_model_path = s.image_model_path or None if image_model_path is None else image_model_path
        image_model = s.image_model if image_model is None else image_model
    if images and image_model == "efficientnet-lite0" and not image_model_path:
        from pipeline.features.encoders import require_image_encoder

        require_image_encoder()  # a configured model that is not installed fails before the event pass
    if images and image_model_path:
        from pipeline.features.images import check_model_path

        check_model_path(image_model_path)  # fail before the event pass, with the setting's name
    import dask.dataframe as dd

    snap = Path(snapshot_dir)
    from pipeline.extract.snapshot import events_path

    # Hive ``date=`` partitions; only three file columns are read (the partition column is not needed).
    ddf = dd.read_parquet(str(events_path(snap)), columns=["item_id", "event_type", "ts"])
    sums = (ddf.map_partitions(item_event_sums, as_of, weights, half_life_days, meta=_sums_meta())
            .groupby("item_id").sum())
    stats = sums.compute(scheduler=client.get)
    items = pd.read_parquet(snap / "items.parquet")
    feats = finalize_item_features(items, stats, as_of)
    if images:
        from pipeline.features.images import image_features

        img = image_features(items, client, root=image_root, model_path=image_model_path or None)
        feats = feats.merge(img, on="item_id", how="left")
        feats["has_image"] = feats["has_image"].fillna(False).astype(bool)
    counts = _image_vectors(snap, items, feats, client, enabled=images, model=image_model,
                            custom=bool(image_model_path), root=image_root, cache_dir=cache_dir, device=device)
    write_parquet(feats, snap / "item_features.parquet")
    feats.attrs["images"] = counts
    return feats


def _image_vectors(snap: Path, items: pd.DataFrame, feats: pd.DataFrame, client: object, *, enabled: bool,
                   model: str | None, custom: bool, root: str | Path | None, cache_dir: str | Path | None,
                   device: str) -> dict:
    """Write (or remove a stale) ``item_image_embeddings.parquet``; return the picture counts."""
    from pipeline.features.images import IMAGE_FILE, image_embeddings
    from pipeline.features.text import write_embeddings

    target = snap / IMAGE_FILE
    target.unlink(missing_ok=True)  # a re-run with pictures switched off must not fuse last run's vectors
    with_path = int((items["image_path"].fillna("").astype(str).str.len() > 0).sum()) \
        if "image_path" in items.columns else 0
    counts = {"image_model": "none", "items_with_image": 0, "items_without_image": len(items) - with_path}
    if not enabled:
        return counts
    if custom and "img_embedding" in feats.columns:
        got = feats[feats["img_embedding"].notna()]
        if len(got):
            write_embeddings(got["item_id"].to_numpy(), np.vstack(got["img_embedding"].to_numpy()), target)
        return {**counts, "image_model": "custom", "items_with_image": len(got),
                "images_unreadable": with_path - len(got)}
    if model != "efficientnet-lite0" or not with_path:
        return counts
    ids, mat, stats = image_embeddings(items, client, root=root, cache_dir=cache_dir, device=device)
    if len(ids):
        write_embeddings(ids, mat, target)
    return {"image_model": model, **stats}
