"""Turn scored candidates into each user's final list (pure pandas + numpy; runs on a Dask worker).

Order of work per A/B variant: rules (availability, purchases with repurchase windows, merchandiser
exclude/boost/bury) -> fusion (default P_re = P_recall * P_rank, ARCHITECTURE.md "Scores") x rule factor
-> MMR with category and brand caps -> exploration slots for new items -> reasons. Deterministic: ties
break on item_id, variants and exploration use seeded hashes, never a random generator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from pipeline.frames import pair_index
from pipeline.rerank.config import FUSIONS, RerankConfig, Variant, parse_variants, split_by_arm
from pipeline.rerank.diversity import FusedEmbeddings, ItemEmbeddings, add_exploration, mmr_select
from pipeline.rerank.rules import apply_rules, purchase_exclusions, rule_effects

OUTPUT_COLUMNS = ["user_id", "rank", "item_id", "score", "reason", "anchor_item_id", "source", "variant"]
#: Sources whose anchor is an item of the user's history ("because you viewed X").
ANCHORED_SOURCES = ("item-cf", "content", "session", "als-neighbour", "co-view")
#: Sources whose anchor is the history item the candidate often comes *after* in shoppers' sequences.
FOLLOWING_SOURCES = ("seq",)

__all__ = ["FUSIONS", "OUTPUT_COLUMNS", "fill_empty_lists", "finalize_lists", "fuse", "reason_text"]


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
    text = "an item" if title is None or pd.isna(title) else str(title)
    return "\u201c" + (text[:60] + "\u2026" if len(text) > 60 else text) + "\u201d"


#: A content match whose picture is at least this close to its anchor's (cosine of the image vectors), and
#: closer than its text, is explained as "looks like"; other content matches as "similar to".
LOOKS_LIKE = 0.75


def reason_text(source: str, anchor_title: object, anchor_bought: bool, category: object,
                query: object = None, has_anchor: bool = True, match: str | None = None) -> str:
    """The stored explanation of a row (every row gets one); an anchored source without an anchor falls
    back to the category / popularity wording rather than naming no item. ``match`` (content matches):
    ``looks`` when the pictures are alike, ``text`` otherwise."""
    if source == "explore":
        return "new arrival"
    if isinstance(query, str) and query.strip():
        q = query.strip()
        return f"matches your search '{q[:60]}'"
    if source == "content" and has_anchor and match in ("looks", "text"):
        how = "looks like " if match == "looks" else "similar to "
        return how + _quote(anchor_title) + (" you bought" if anchor_bought else " you viewed")
    if source in ANCHORED_SOURCES and has_anchor:
        return ("bought together with " if anchor_bought else "because you viewed ") + _quote(anchor_title)
    if source in FOLLOWING_SOURCES and has_anchor:
        return ("often bought after " if anchor_bought else "often viewed after ") + _quote(anchor_title)
    if source == "retarget":
        return "you viewed this recently"
    if (source == "category" or source in ANCHORED_SOURCES or source in FOLLOWING_SOURCES) and isinstance(
            category, str) and category:
        return f"popular in {category}"
    if source == "new":
        return "new arrival"
    if source == "als" and isinstance(category, str) and category:
        return f"picked for your taste in {category}"
    if source == "search":
        return "matches your recent searches"
    if source == "trending":
        return "trending now"
    return "popular right now"


def _item_info(item_feats: pd.DataFrame) -> pd.DataFrame:
    info = item_feats.drop_duplicates("item_id").copy()
    if "top_category" not in info and "category" in info:
        info["top_category"] = info["category"].astype("string").str.split(">").str[0]
    for col in ("top_category", "category", "brand", "title"):
        if col not in info:
            info[col] = None
    return info


def _new_items(info: pd.DataFrame, cfg: RerankConfig, as_of: datetime | None, limit: int) -> pd.DataFrame:
    """The exploration pool: available items created within ``new_item_days`` of ``as_of``."""
    if as_of is None or cfg.explore_share <= 0 or "created_at" not in info:
        return pd.DataFrame({"item_id": pd.Series(dtype="int64")})
    created = pd.to_datetime(info["created_at"], utc=True)
    t = pd.Timestamp(as_of)
    t = t.tz_localize("UTC") if t.tzinfo is None else t
    ok = (created >= t - pd.Timedelta(days=cfg.new_item_days)) & (created < t)
    for flag in ("in_stock", "visible"):
        if flag in info:
            ok &= info[flag].fillna(False).astype(bool)
    pool = info.loc[ok.to_numpy()]
    order = [c for c in ("trend", "activity") if c in pool]
    pool = pool.sort_values([*order, "item_id"], ascending=[False] * len(order) + [True]).head(limit)
    return pool[["item_id"]]


def _one_variant(cand: pd.DataFrame, info: pd.DataFrame, cfg: RerankConfig, *, top_n: int,
                 bought: pd.DataFrame | None, rules: pd.DataFrame | None, embeddings: ItemEmbeddings | None,
                 as_of: datetime | None, salt: str, seen: pd.DataFrame | None = None) -> pd.DataFrame:
    c = apply_rules(cand, info, rules=rules, purchases=bought, as_of=as_of, repurchase_days=cfg.repurchase_days)
    p_rank = c["p_rank"] if "p_rank" in c else pd.Series(1.0, index=c.index)
    c = c.assign(score=fuse(c["p_recall"].astype("float64"), p_rank.astype("float64"), cfg.fusion, cfg.alpha)
                 * c["rule_factor"])
    c = c.merge(info[["item_id", "top_category", "category", "brand"]], on="item_id", how="left")
    # A candidate proposed twice (e.g. by two upstream merges) keeps its best score: a list never repeats an item.
    # Equal scores: the source by name, then the lower anchor, so the kept reason never depends on row order.
    keys = ["user_id", "item_id", "score", *[k for k in ("source", "anchor_item_id") if k in c]]
    c = (c.sort_values(keys, ascending=[True, True, False] + [True] * (len(keys) - 3), kind="stable")
         .drop_duplicates(["user_id", "item_id"], keep="first"))
    use_emb = embeddings if cfg.diversity_space in ("auto", "embedding") else None
    if cfg.max_retarget_share < 1.0:
        # proposed by retarget at all, not only as the strongest source (the merge keeps its score per row)
        c["retarget"] = (c["score_retarget"].fillna(0.0).gt(0).to_numpy() if "score_retarget" in c
                         else c["source"].eq("retarget").to_numpy())
        if cfg.retarget_cap_scope == "seen" and seen is not None and len(seen):
            c["retarget"] = c["retarget"].to_numpy() | pair_index(c).isin(pair_index(seen))
    lists = mmr_select(c, top_n=top_n, mmr_lambda=cfg.mmr_lambda, max_category_share=cfg.max_category_share,
                       max_brand_share=cfg.max_brand_share, embeddings=use_emb,
                       max_retarget_share=cfg.max_retarget_share)
    pool = _new_items(info, cfg, as_of, limit=max(4 * top_n, 50))
    if len(pool) and len(lists):
        mult, excluded_items = rule_effects(info, rules)
        # Neither excluded nor buried with factor 0 ("to the bottom") items may take an exploration slot.
        pool = pool[~pool["item_id"].isin(excluded_items) & pool["item_id"].map(mult).fillna(1.0).gt(0).to_numpy()]
        pool = pool.assign(score=0.0, top_category=pool["item_id"].map(info.set_index("item_id")["top_category"]))
        excl = purchase_exclusions(bought, info, as_of=as_of, windows=cfg.repurchase_days)
        lists = add_exploration(lists, pool, top_n=top_n, share=cfg.explore_share, excluded=excl,
                                salt=salt + ":explore")
    return lists


def finalize_lists(cand: pd.DataFrame, item_feats: pd.DataFrame, *, top_n: int, bought: pd.DataFrame | None = None,
                   max_category_share: float | None = None, fusion: str | None = None,
                   config: RerankConfig | None = None,
                   variants: Mapping[str, Mapping[str, Any]] | Sequence[Variant] | None = None,
                   variant_salt: str = "rerank-ab", rules: pd.DataFrame | None = None,
                   item_embeddings: ItemEmbeddings | None = None, as_of: datetime | None = None,
                   seen: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each user's final ``top_n`` list with reasons and A/B variant (columns :data:`OUTPUT_COLUMNS`).

    ``cand``: user_id, item_id, source, p_recall, anchor_item_id, optional p_rank, query and score_retarget.
    ``item_feats``: item_id and whatever of top_category, category, brand, title, in_stock, visible,
    created_at, trend/activity is known. ``bought``: the user's purchases (user_id, item_id, optional ts).
    ``max_category_share`` / ``fusion`` override ``config`` (kept for the skeleton's callers).
    ``as_of`` enables exploration and repurchase windows; ``rules`` comes from :func:`load_rules`;
    ``seen``: (user_id, item_id) pairs the users had an event with, for ``retarget_cap_scope="seen"``.
    """
    cfg = config or RerankConfig()
    legacy = {k: v for k, v in (("max_category_share", max_category_share), ("fusion", fusion)) if v is not None}
    cfg = cfg.with_overrides(legacy) if legacy else cfg
    arms = list(variants) if isinstance(variants, Sequence) else parse_variants(variants)
    info = _item_info(item_feats)
    if cand.empty:
        return _typed(pd.DataFrame({c: [] for c in OUTPUT_COLUMNS}))
    parts = []
    for arm, arm_cfg, mine in split_by_arm(cand["user_id"], cfg, arms, variant_salt):
        sub = cand[cand["user_id"].isin(mine)]
        lists = _one_variant(sub, info, arm_cfg, top_n=top_n, bought=bought, rules=rules,
                             embeddings=item_embeddings, as_of=as_of, salt=variant_salt, seen=seen)
        parts.append(lists.assign(variant=arm.name))
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=OUTPUT_COLUMNS)
    if df.empty:
        return _typed(pd.DataFrame({c: [] for c in OUTPUT_COLUMNS}))
    df["reason"] = _reasons(df, info, bought, item_embeddings)
    df.loc[df["source"] == "explore", "anchor_item_id"] = pd.NA
    df = df.sort_values(["user_id", "rank"], kind="stable").reset_index(drop=True)
    return _typed(df[OUTPUT_COLUMNS])


def fill_empty_lists(lists: pd.DataFrame, users: Sequence[int] | np.ndarray, item_feats: pd.DataFrame, *,
                     top_n: int, bought: pd.DataFrame | None = None, config: RerankConfig | None = None,
                     variants: Mapping[str, Mapping[str, Any]] | Sequence[Variant] | None = None,
                     variant_salt: str = "rerank-ab", rules: pd.DataFrame | None = None,
                     item_embeddings: ItemEmbeddings | None = None, as_of: datetime | None = None,
                     seen: pd.DataFrame | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """The last resort after recall: each of ``users`` without a row in ``lists`` gets the most popular items
    it may still be shown (the same rules, purchases and re-rank as :func:`finalize_lists`, source
    ``popularity``). Returns (``lists`` with those users' lists added, the users left without one because
    they bought every item that may be shown: for them an empty list is the right answer).

    A heavy buyer can exhaust every candidate recall proposed while other items are still eligible; without
    this, such a user got no list and the output gate's ``empty_lists`` check refused the whole run. When
    nothing may be shown to anyone (the catalogue out of stock, a rule excluding it all) no user is named:
    their empty lists are the shop's problem, which the gate must still refuse.
    """
    missing = np.setdiff1d(np.asarray(users, dtype="int64"), lists["user_id"].to_numpy(dtype="int64"))
    if len(missing) == 0:
        return lists, missing
    info = _item_info(item_feats)
    ok = np.ones(len(info), dtype=bool)
    for flag in ("in_stock", "visible"):
        if flag in info:
            ok &= info[flag].fillna(False).astype(bool).to_numpy()
    pool = info.loc[ok]
    order = [c for c in ("activity", "trend") if c in pool]
    pool = pool.sort_values([*order, "item_id"], ascending=[False] * len(order) + [True], kind="stable")
    # enough items that exclusions cannot empty it: whatever one user bought plus what rules exclude
    n_bought = 0
    if bought is not None and len(bought):
        per_user = bought[bought["user_id"].isin(missing)].groupby("user_id")["item_id"].nunique()
        n_bought = int(per_user.max()) if len(per_user) else 0
    _, excluded = rule_effects(info, rules)
    if not (~pool["item_id"].isin(excluded)).any():
        return lists, np.zeros(0, dtype="int64")
    pool = pool.head(top_n + n_bought + len(excluded))
    # p_recall falls with the popularity rank, as the recall's own popularity source scores
    p = 1.0 / (1.0 + np.arange(len(pool)))
    cand = pd.DataFrame({"user_id": np.repeat(missing, len(pool)),
                         "item_id": np.tile(pool["item_id"].to_numpy(dtype="int64"), len(missing)),
                         "source": "popularity", "p_recall": np.tile(p, len(missing)),
                         "anchor_item_id": pd.array([pd.NA] * (len(missing) * len(pool)), dtype="Int64")})
    mine = bought[bought["user_id"].isin(missing)] if bought is not None else None
    extra = finalize_lists(cand, item_feats, top_n=top_n, bought=mine, config=config, variants=variants,
                           variant_salt=variant_salt, rules=rules, item_embeddings=item_embeddings, as_of=as_of,
                           seen=seen)
    out = pd.concat([lists, extra], ignore_index=True) if len(lists) else extra
    out = out.sort_values(["user_id", "rank"], kind="stable").reset_index(drop=True)
    return _typed(out[OUTPUT_COLUMNS]), np.setdiff1d(missing, extra["user_id"].to_numpy(dtype="int64"))


def _content_match(df: pd.DataFrame, anchors: pd.Series, embeddings: ItemEmbeddings | None) -> np.ndarray:
    """Per row: ``looks`` / ``text`` for content matches with an anchor, None otherwise."""
    out = np.full(len(df), None, dtype=object)
    rows = np.flatnonzero((df["source"].to_numpy(dtype=object) == "content") & anchors.notna().to_numpy())
    if not len(rows) or embeddings is None:
        return out
    out[rows] = "text"
    if not isinstance(embeddings, FusedEmbeddings):
        return out
    text, image = embeddings.part_similarity(df["item_id"].to_numpy(dtype=np.int64)[rows],
                                             anchors.to_numpy()[rows].astype(np.int64))
    looks = (image >= LOOKS_LIKE) & (image > np.nan_to_num(text, nan=-1.0))
    out[rows[looks]] = "looks"
    return out


def _reasons(df: pd.DataFrame, info: pd.DataFrame, bought: pd.DataFrame | None,
             embeddings: ItemEmbeddings | None = None) -> list[str]:
    """:func:`reason_text` of every row, computed once per distinct (source, anchor, bought, category,
    query) combination: lists repeat few combinations, and a per-row Python call dominated the refresh."""
    n = len(df)
    titles = info.drop_duplicates("item_id").set_index("item_id")["title"]
    anchors = (df["anchor_item_id"].astype("Int64") if "anchor_item_id" in df
               else pd.Series(pd.NA, index=df.index, dtype="Int64"))
    has = anchors.notna().to_numpy()
    anchor_bought = np.zeros(n, dtype=bool)
    if bought is not None and len(bought) and has.any():
        b = bought.dropna(subset=["user_id", "item_id"])
        owned = pd.MultiIndex.from_arrays([b["user_id"].astype("int64").to_numpy(),
                                           b["item_id"].astype("int64").to_numpy()])
        asked = pd.MultiIndex.from_arrays([df["user_id"].astype("int64").to_numpy()[has],
                                           anchors.to_numpy()[has].astype("int64")])
        anchor_bought[has] = asked.isin(owned)
    frame = pd.DataFrame({
        "source": df["source"].to_numpy(dtype=object),
        "title": anchors.map(titles).to_numpy(dtype=object),
        "bought": anchor_bought,
        "category": df["top_category"].to_numpy(dtype=object) if "top_category" in df else None,
        "query": df["query"].to_numpy(dtype=object) if "query" in df else None,
        "has": has,
        "match": _content_match(df, anchors, embeddings),
    }, index=pd.RangeIndex(n))
    if n == 0:
        return []
    group = frame.groupby(list(frame.columns), dropna=False, sort=False).ngroup().to_numpy()
    first = frame.assign(group=group).drop_duplicates("group")
    texts = np.empty(int(group.max()) + 1, dtype=object)
    for g, s, t, b_, c, q, h, m in zip(first["group"], first["source"], first["title"], first["bought"],
                                       first["category"], first["query"], first["has"], first["match"], strict=True):
        texts[g] = reason_text(s, t, bool(b_), c, q, bool(h), m)
    return texts[group].tolist()


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["score"] = out["score"].astype("float64").fillna(0.0).round(6)
    out["anchor_item_id"] = out["anchor_item_id"].astype("Int64")
    return out.astype({"user_id": "int64", "item_id": "int64", "rank": "int32", "reason": "object",
                       "source": "object", "variant": "object"}).reset_index(drop=True)


