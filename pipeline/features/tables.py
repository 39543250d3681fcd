"""Write a run's feature Parquet files into ``recsys.item_features`` / ``recsys.user_features``.

Idempotent per run: the run's rows are deleted and copied again in one transaction, so a re-run replaces
them and a failure leaves the previous rows. Columns are the table's (migration 0002); list features
become jsonb (affinities as ``{key: score}``, the sequence as ``[{item_id, event_type, gap_s}]``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.db.copy import copy_frame
from pipeline.db.engine import connect
from pipeline.errors import InputDataError

ITEM_COLUMNS = ["item_id", "category", "top_category", "brand", "price", "in_stock", "visible", "created_at",
                "age_days", "price_rel_category", "activity", "events", "recent_events", "purchases",
                "n_view", "n_click", "n_add_to_cart", "n_purchase", "decayed_view", "decayed_click",
                "decayed_add_to_cart", "decayed_purchase", "ctr", "atc_rate", "cvr", "trend", "has_image", "image"]
USER_COLUMNS = ["user_id", "recency_days", "frequency", "monetary", "n_view", "n_click", "n_add_to_cart",
                "n_purchase", "n_search", "distinct_items", "sessions", "price_mean", "price_median",
                "price_rel_category", "category_affinity", "brand_affinity", "search_terms", "sequence", "new_user"]


def _json_list(v: object) -> list:
    return [x.item() if hasattr(x, "item") else x for x in (list(v) if v is not None else [])]


def item_rows(feats: pd.DataFrame) -> pd.DataFrame:
    """The item feature frame in ``recsys.item_features``' columns (image features as one jsonb)."""
    f = feats.copy()
    if "has_image" not in f.columns:
        f["has_image"] = False
    img_cols = [c for c in f.columns if c.startswith("img_")]

    def image(row: pd.Series) -> str | None:
        if not row["has_image"]:
            return None
        # List-valued columns (histogram, CNN embedding) become JSON arrays (a missing embedding: []).
        return json.dumps({c[4:]: (_json_list(row[c]) if c in ("img_hist", "img_embedding") else row[c])
                           for c in img_cols if c != "img_error"}, default=float)

    f["image"] = f.apply(image, axis=1) if img_cols and len(f) else None
    return f[ITEM_COLUMNS]


def user_rows(feats: pd.DataFrame) -> pd.DataFrame:
    """The user feature frame in ``recsys.user_features``' columns (lists as jsonb)."""
    f = feats.copy()
    f["distinct_items"] = f["items"]

    def aff(keys: object, scores: object) -> str:
        return json.dumps(dict(zip(_json_list(keys), _json_list(scores), strict=True)), ensure_ascii=False)

    f["category_affinity"] = [aff(k, s) for k, s in zip(f["category_affinity_keys"],
                                                        f["category_affinity_scores"], strict=True)]
    f["brand_affinity"] = [aff(k, s) for k, s in zip(f["brand_affinity_keys"], f["brand_affinity_scores"],
                                                     strict=True)]
    f["search_terms"] = [json.dumps(_json_list(v), ensure_ascii=False) for v in f["search_terms"]]
    f["sequence"] = [json.dumps([{"item_id": i, "event_type": t, "gap_s": g} for i, t, g in
                                 zip(_json_list(a), _json_list(b), _json_list(c), strict=True)])
                     for a, b, c in zip(f["seq_item_ids"], f["seq_event_types"], f["seq_gap_s"], strict=True)]
    return f[USER_COLUMNS]


def write_feature_tables(url: str, run_id: str, snapshot_dir: str | Path, *,
                         which: tuple[str, ...] = ("items", "users")) -> dict:
    """Replace ``run_id``'s rows in recsys.item_features / recsys.user_features from the snapshot's Parquet.

    ``which`` picks the tables (the item and user stages may run in parallel, each writing its own).
    """
    from pipeline.features.users import user_feature_parts

    snap = Path(snapshot_dir)
    # each table's Parquet files: the item features are one file, the user features one part per shard
    spec = {"items": ([snap / "item_features.parquet"], "recsys.item_features", item_rows, ITEM_COLUMNS),
            "users": (user_feature_parts(snap), "recsys.user_features", user_rows, USER_COLUMNS)}
    unknown = [w for w in which if w not in spec]
    if unknown:
        raise InputDataError(f"unknown feature table {unknown[0]!r}", "which= items and/or users")
    missing = [w for w in which if not spec[w][0] or not all(f.exists() for f in spec[w][0])]
    if missing:
        raise InputDataError(f"feature files missing in {snap}: {', '.join(missing)}",
                             "run the item_features and user_features stages first")
    out = {}
    with connect(url) as conn, conn.cursor() as cur:
        for w in which:
            files, table, rows, cols = spec[w]
            cur.execute(f"DELETE FROM {table} WHERE run_id = %s", (run_id,))  # table: a constant above
            out[f"{w[:-1]}_feature_rows"] = sum(  # a part at a time: memory follows the part, not the shop
                copy_frame(cur, table, rows(pd.read_parquet(f)).assign(run_id=run_id), ["run_id", *cols])
                for f in files)
    return out
