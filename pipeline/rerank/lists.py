"""Turn scored candidates into each user's final list (pure pandas).

Fusion default: P_re = P_recall * P_rank (ARCHITECTURE.md, "Scores"). Diversity here is a cap on the
share of one top-level category in a list: items over the cap move below the others, never out.
"""

from __future__ import annotations

import math

import pandas as pd

FUSIONS = ("product", "ranker", "weighted")


def fuse(p_recall: pd.Series, p_rank: pd.Series, method: str = "product", alpha: float = 0.5) -> pd.Series:
    """Combine recall and ranker probabilities."""
    if method == "product":
        return p_recall * p_rank
    if method == "ranker":
        return p_rank.astype("float64")
    if method == "weighted":
        return alpha * p_recall + (1 - alpha) * p_rank
    raise ValueError(f"unknown fusion {method!r}; choose one of {FUSIONS}")


def _quote(title: object) -> str:
    text = str(title) if title is not None and title == title else "an item"
    return "\u201c" + (text[:60] + "\u2026" if len(text) > 60 else text) + "\u201d"


def reason_text(source: str, anchor_title: object, anchor_bought: bool, category: object) -> str:
    """The stored explanation of a row."""
    if source == "item-cf":
        return ("bought together with " if anchor_bought else "because you viewed ") + _quote(anchor_title)
    if source == "retarget":
        return "you viewed this recently"
    if source == "category":
        return f"popular in {category}"
    return "popular right now"


def finalize_lists(cand: pd.DataFrame, item_feats: pd.DataFrame, *, top_n: int, bought: pd.DataFrame | None = None,
                   max_category_share: float = 0.4, fusion: str = "product") -> pd.DataFrame:
    """Rank each user's candidates by fused score with a category cap; attach reasons. Deterministic."""
    feats = item_feats[["item_id", "title", "top_category"]] if "title" in item_feats else item_feats
    df = cand.merge(feats[["item_id", "top_category"]], on="item_id", how="left")
    df["score"] = fuse(df["p_recall"], df.get("p_rank", pd.Series(1.0, index=df.index)), fusion)
    df = df.sort_values(["user_id", "score", "item_id"], ascending=[True, False, True], kind="stable")
    cap = max(1, math.ceil(top_n * max_category_share))
    df["_cat_pos"] = df.groupby(["user_id", "top_category"], dropna=False).cumcount()
    df["_over"] = (df["_cat_pos"] >= cap).astype("int8")
    df = df.sort_values(["user_id", "_over", "score", "item_id"], ascending=[True, True, False, True],
                        kind="stable")
    df = df.groupby("user_id").head(top_n).copy()
    df["rank"] = df.groupby("user_id").cumcount() + 1
    titles = item_feats.set_index("item_id")["title"] if "title" in item_feats else pd.Series(dtype=object)
    anchor_title = df["anchor_item_id"].map(titles)
    bought_pairs = set()
    if bought is not None and len(bought):
        bought_pairs = set(zip(bought["user_id"].to_numpy(), bought["item_id"].to_numpy(), strict=True))
    anchor_bought = [
        (u, a) in bought_pairs if a is not pd.NA and a == a else False
        for u, a in zip(df["user_id"].to_numpy(), df["anchor_item_id"].to_numpy(), strict=True)
    ]
    df["reason"] = [
        reason_text(s, t, b, c)
        for s, t, b, c in zip(df["source"], anchor_title, anchor_bought, df["top_category"], strict=True)
    ]
    df["score"] = df["score"].astype("float64").round(6)
    df["anchor_item_id"] = df["anchor_item_id"].astype("Int64")
    cols = ["user_id", "rank", "item_id", "score", "reason", "anchor_item_id", "source"]
    return df[cols].reset_index(drop=True).astype({"user_id": "int64", "item_id": "int64", "rank": "int32"})



