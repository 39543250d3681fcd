"""Diversity: greedy MMR with per-category and per-brand caps, and exploration slots for new items.

MMR (Carbonell & Goldstein 1998) picks, one position at a time, the candidate maximising
``lambda * rel - (1 - lambda) * max_sim(candidate, already picked)``, where ``rel`` is the fused score
scaled to [0, 1] per user. Similarity is the cosine of item embeddings (``item_embeddings.parquet``) or,
without them, category-path overlap (0.5 for the same top-level category, +0.5 for the same full path).
Caps: an item whose top-level category or brand already fills its share of the top N is skipped while an
uncapped candidate remains, so capped items move down, never out (a list is never shortened by a cap).
Candidates with a zero (or missing) score, e.g. buried with factor 0, come after all the others.

The greedy runs for a batch of users at once on padded ``users x candidates`` arrays: ``top_n`` numpy
steps per batch instead of a Python loop per user.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.rerank.config import stable_hash

ItemEmbeddings = tuple[np.ndarray, np.ndarray]  # (item_ids, float32 matrix with one row per item)


class ItemVectors(tuple):
    """``(item_ids, matrix)`` of item vectors as a run loads them (:func:`load_item_embeddings`); unpacks like
    :data:`ItemEmbeddings`. MMR's operands (the id index and unit rows) are prepared once per loaded
    catalogue and kept here, with the run's artefacts: a worker scores shard after shard against it."""

    def __new__(cls, ids: np.ndarray, mat: np.ndarray) -> ItemVectors:
        self = super().__new__(cls, (ids, mat))
        self._prepared: tuple[pd.Index, np.ndarray] | None = None
        self._lock = threading.Lock()
        return self

    def __reduce__(self) -> tuple:  # to and from Dask workers: the arrays only, prepared again there
        return (type(self), (self[0], self[1]))

    def prepared(self) -> tuple[pd.Index, np.ndarray]:
        """:func:`prepare` of these vectors, computed on the first call (a worker may run two shards at once)."""
        with self._lock:
            if self._prepared is None:
                self._prepared = prepare(self[0], self[1])
            return self._prepared


class FusedEmbeddings(ItemVectors):
    """:class:`ItemVectors` of fused text+image vectors that also knows where the parts are: the first
    ``text_dim`` columns are ``sqrt(text_weight)`` x the text vector, the rest ``sqrt(1 - text_weight)`` x
    the projected picture vector (:mod:`pipeline.features.fusion`)."""

    text_dim: int
    text_weight: float

    def __new__(cls, ids: np.ndarray, mat: np.ndarray, text_dim: int, text_weight: float) -> FusedEmbeddings:
        self = super().__new__(cls, ids, mat)
        self.text_dim, self.text_weight = int(text_dim), float(text_weight)
        return self

    def __reduce__(self) -> tuple:
        return (type(self), (self[0], self[1], self.text_dim, self.text_weight))

    def part_similarity(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Text and picture cosines of item pairs ``a[i], b[i]`` (NaN where an item has no vector or no
        picture)."""
        ids, mat = self
        order = np.argsort(ids, kind="stable")

        def rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            pos = np.minimum(np.searchsorted(ids[order], x), max(len(ids) - 1, 0))
            ok = (ids[order][pos] == x) if len(ids) else np.zeros(len(x), bool)
            return order[pos], ok

        ra, oka = rows(np.asarray(a, dtype=np.int64))
        rb, okb = rows(np.asarray(b, dtype=np.int64))
        d = self.text_dim

        def cos(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
            na, nb = np.linalg.norm(xa, axis=1), np.linalg.norm(xb, axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where((na > 0) & (nb > 0), np.einsum("ij,ij->i", xa, xb) / (na * nb), np.nan)

        ok = oka & okb
        text = np.where(ok, cos(mat[ra, :d], mat[rb, :d]), np.nan)
        image = np.where(ok, cos(mat[ra, d:], mat[rb, d:]), np.nan) if mat.shape[1] > d else np.full(len(a), np.nan)
        return text, image


def load_item_embeddings(path: str | Path) -> ItemEmbeddings | None:
    """Read ``item_embeddings.parquet`` (item_id, embedding list<float32>); None when it does not exist."""
    p = Path(path)
    if p.is_dir():
        p = p / "item_embeddings.parquet"
    if not p.exists():
        return None
    import pyarrow.parquet as pq

    t = pq.read_table(p, columns=["item_id", "embedding"])
    ids = t.column("item_id").to_numpy().astype("int64")
    emb = t.column("embedding").combine_chunks()
    width = len(emb[0]) if len(emb) else 0
    mat = np.asarray(emb.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(ids), width)
    side = p.with_suffix(".json")
    if side.exists():  # a fused text+image file: keep where the parts are, for "looks like" reasons
        import json

        try:
            meta = json.loads(side.read_text())
        except ValueError:
            meta = {}
        fusion = meta.get("fusion") or {}
        if fusion.get("image_proj_dim") and meta.get("text_dim") and int(meta["text_dim"]) < width:
            return FusedEmbeddings(ids, mat, int(meta["text_dim"]), float(fusion["text_weight"]))
    return ItemVectors(ids, mat)


def normalise(mat: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), so a dot product is the cosine."""
    norm = np.linalg.norm(mat, axis=1, keepdims=True)
    return (mat / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def prepare(ids: np.ndarray, mat: np.ndarray) -> tuple[pd.Index, np.ndarray]:
    """MMR's operands: (index of ``ids``, ``normalise(mat)`` with a zero last row for items without a vector)."""
    return pd.Index(ids), np.vstack([normalise(mat), np.zeros((1, mat.shape[1]), np.float32)])


#: The bytes of item vectors one MMR block holds: every greedy step reads them all, and a block that stays in
#: the CPU's cache runs 3-4x faster than blocks of 256 users (tier S: 640-wide vectors, pools of 150).
BLOCK_BYTES = 8 * 2**20


def cap_count(top_n: int, share: float) -> int:
    """Items allowed per category / brand in a list of ``top_n`` (share 1.0 = no cap)."""
    return top_n if share >= 1.0 else max(1, math.ceil(top_n * share))


def _greedy(rel: np.ndarray, valid: np.ndarray, top: np.ndarray, full: np.ndarray, brand: np.ndarray,
            gram: np.ndarray | None, n: int, lam: float, cat_cap: int, brand_cap: int,
            retarget: np.ndarray | None = None, retarget_share: float = 1.0) -> np.ndarray:
    """Positions (into each row's candidates) picked in order; -1 where a user ran out. ``gram``: each user's
    candidate-by-candidate cosines (U, C, C), None to use the category paths as similarity."""
    U, C = rel.shape
    order = np.full((U, n), -1, dtype=np.int64)
    selected = np.zeros((U, C), dtype=bool)
    maxsim = np.zeros((U, C), dtype=np.float32)
    cat_cnt = np.zeros((U, C), dtype=np.int32)
    brand_cnt = np.zeros((U, C), dtype=np.int32)
    rows = np.arange(U)
    retarget_cnt = np.zeros(U, dtype=np.int32)
    cap_retarget = retarget is not None and retarget_share < 1.0
    zero = rel <= 0
    use_sim = lam < 1.0
    for t in range(min(n, C)):
        avail = valid & ~selected
        mmr = lam * rel - (1.0 - lam) * maxsim if use_sim else rel
        over = (cat_cnt >= cat_cap) | (brand_cnt >= brand_cap)
        if cap_retarget:  # a running cap: at most ceil(share * k) in every prefix of k, so they spread out
            over |= retarget & (retarget_cnt >= math.ceil(retarget_share * (t + 1)))[:, None]
        # Tiers, best first: uncapped, capped, then zero-relevance items (a bury with factor 0 sends an item
        # to the bottom, which MMR's similarity term must not undo). mmr lies in [-1, 1], so steps of 4 and 8
        # keep the tiers apart and ties inside a tier still go to the lower position (the better score).
        pri = np.where(avail, mmr - 4.0 * over - 8.0 * zero, -np.inf)
        pick = pri.argmax(axis=1)
        has = avail[rows, pick]
        if not has.any():
            break
        order[has, t] = pick[has]
        selected[rows[has], pick[has]] = True
        if cap_retarget:
            retarget_cnt += has & retarget[rows, pick]
        hcol = has[:, None]
        tc = top[rows, pick][:, None]
        same_top = (top == tc) & (tc >= 0)
        cat_cnt += same_top & hcol
        bc = brand[rows, pick][:, None]
        brand_cnt += (brand == bc) & (bc >= 0) & hcol
        if use_sim:
            if gram is not None:
                sim = gram[rows, pick]
            else:
                fc = full[rows, pick][:, None]
                sim = 0.5 * same_top + 0.5 * ((full == fc) & (fc >= 0))
            np.maximum(maxsim, np.where(hcol, sim, 0.0), out=maxsim)
    return order


def mmr_select(df: pd.DataFrame, *, top_n: int, mmr_lambda: float = 1.0, max_category_share: float = 1.0,
               max_brand_share: float = 1.0, embeddings: ItemEmbeddings | None = None, pool: int | None = None,
               batch_users: int | None = None, max_retarget_share: float = 1.0) -> pd.DataFrame:
    """Each user's ``top_n`` rows of ``df`` in MMR order with caps; adds ``rank`` (1..n).

    ``df``: user_id, item_id, score, and optional top_category, category, brand and ``retarget`` (bool: the
    rows ``max_retarget_share`` caps in every prefix of the list, not only in the whole of it, so they do not
    all gather at the top). Only the ``pool`` best candidates per user (default ``max(3 * top_n, 100)``) are
    considered, the usual MMR shortcut. Every cap moves items down, never out. ``batch_users``: users per
    vectorised block (default: as many as keep the block's similarities within :data:`BLOCK_BYTES`).
    """
    if df.empty:
        return df.assign(rank=pd.Series(dtype="int32"))
    pool = pool or max(3 * top_n, 100)
    d = (df.sort_values(["user_id", "score", "item_id"], ascending=[True, False, True], kind="stable")
         .groupby("user_id", sort=False).head(pool).reset_index(drop=True))
    none = pd.Series([None] * len(d), index=d.index, dtype=object)
    top = pd.factorize(d.get("top_category", none))[0]
    full = pd.factorize(d.get("category", none))[0]
    brand = pd.factorize(d.get("brand", none))[0]
    ucode = pd.factorize(d["user_id"])[0]
    pos = d.groupby("user_id", sort=False).cumcount().to_numpy()
    # A missing (NaN) score ranks like a zero one, at the bottom: NaN would win every argmax below.
    score = d["score"].astype("float64").fillna(0.0)
    best = score.groupby(d["user_id"], sort=False).transform("max").to_numpy(dtype="float64")
    rel = np.where(best > 0, score.to_numpy(dtype="float64") / np.where(best > 0, best, 1.0), 0.0)
    erow = None
    if embeddings is not None and mmr_lambda < 1.0:
        # last row: no embedding; a run's loaded vectors are prepared once, plain (ids, matrix) pairs per call
        index, mat = embeddings.prepared() if isinstance(embeddings, ItemVectors) else prepare(*embeddings)
        erow = index.get_indexer(d["item_id"].to_numpy())
        erow = np.where(erow >= 0, erow, len(mat) - 1)
    cat_cap, brand_cap = cap_count(top_n, max_category_share), cap_count(top_n, max_brand_share)
    flag = (d["retarget"].fillna(False).to_numpy(dtype=bool) if max_retarget_share < 1.0 and "retarget" in d
            else None)
    starts = np.flatnonzero(np.r_[True, ucode[1:] != ucode[:-1]])
    n_users = len(starts)
    if batch_users is None:  # each greedy step reads the block's similarities: a block that stays in cache
        width = int(pos.max()) + 1
        per_user = width * (width * 4 if erow is not None else 64)
        batch_users = int(np.clip(BLOCK_BYTES // max(per_user, 1), 8, 256))
    picked = []
    for b0 in range(0, n_users, batch_users):
        b1 = min(b0 + batch_users, n_users)
        lo, hi = starts[b0], (starts[b1] if b1 < n_users else len(d))
        u, p = ucode[lo:hi] - ucode[lo], pos[lo:hi]
        U, C = b1 - b0, int(p.max()) + 1

        def pad(values: np.ndarray, fill: float | int, dtype: str, u=u, p=p, U=U, C=C) -> np.ndarray:
            out = np.full((U, C), fill, dtype=dtype)
            out[u, p] = values
            return out

        valid = pad(np.ones(hi - lo, bool), False, "bool")
        gram = None
        if erow is not None:
            # every pair's cosine at once (one batched GEMM), not a pass over the vectors per greedy step:
            # the steps then read (C, C) floats per user instead of (C, dim)
            if hi - lo == U * C:  # every user has C candidates (the usual case): one gather, no padding copy
                emb = mat[erow[lo:hi]].reshape(U, C, mat.shape[1])
            else:
                emb = np.zeros((U, C, mat.shape[1]), dtype=np.float32)
                emb[u, p] = mat[erow[lo:hi]]
            gram = np.matmul(emb, emb.transpose(0, 2, 1))
            del emb
        order = _greedy(pad(rel[lo:hi], 0.0, "float32"), valid, pad(top[lo:hi], -1, "int64"),
                        pad(full[lo:hi], -1, "int64"), pad(brand[lo:hi], -1, "int64"), gram, top_n,
                        mmr_lambda, cat_cap, brand_cap,
                        None if flag is None else pad(flag[lo:hi], False, "bool"), max_retarget_share)
        uu, rr = np.nonzero(order >= 0)
        picked.append(np.column_stack([starts[b0 + uu] + order[uu, rr], rr + 1]))
    sel = np.vstack(picked)
    out = d.iloc[sel[:, 0]].copy()
    out["rank"] = sel[:, 1].astype("int32")
    return out.sort_values(["user_id", "rank"], kind="stable").reset_index(drop=True)


def explore_positions(length: int, n_explore: int) -> list[int]:
    """1-based ranks of the exploration slots, spread evenly (never rank 1: the best item stays first)."""
    if n_explore <= 0 or length <= 1:
        return []
    n_explore = min(n_explore, length - 1)
    return sorted({min(length, max(2, round((k + 1) * length / (n_explore + 1)))) for k in range(n_explore)})


def add_exploration(lists: pd.DataFrame, new_items: pd.DataFrame, *, top_n: int, share: float,
                    excluded: pd.DataFrame | None = None, salt: str = "explore") -> pd.DataFrame:
    """Put new items into ``round(share * top_n)`` evenly spread slots of each list.

    ``lists``: user_id, item_id, rank (1..), other columns kept. ``new_items``: item_id, score (optional).
    Each user gets the new items first in a per-user hash order (even exposure across new items), skipping
    those already in the list's kept part and those in ``excluded`` (user_id, item_id). The added rows get
    ``source = "explore"``. Ranks are renumbered 1..N.
    """
    n_explore = round(share * top_n)
    if n_explore <= 0 or new_items.empty or lists.empty:
        return lists
    users = pd.unique(lists["user_id"])
    cross = pd.DataFrame({"user_id": np.repeat(users, len(new_items)),
                          "item_id": np.tile(new_items["item_id"].to_numpy(), len(users))})
    keep_main = lists[lists["rank"] <= top_n - n_explore][["user_id", "item_id"]]
    drop = [keep_main] + ([excluded[["user_id", "item_id"]]] if excluded is not None and len(excluded) else [])
    drop_pairs = pd.concat(drop, ignore_index=True).drop_duplicates().assign(_x=True)
    cross = cross.merge(drop_pairs, on=["user_id", "item_id"], how="left")
    cross = cross[cross["_x"].isna()].drop(columns="_x")
    cross["_h"] = stable_hash(cross["user_id"].to_numpy(), salt, cross["item_id"].to_numpy())
    picks = (cross.sort_values(["user_id", "_h"], kind="stable").groupby("user_id", sort=False)
             .head(n_explore).drop(columns="_h"))
    if picks.empty:
        return lists
    picks = picks.merge(new_items, on="item_id", how="left")
    picks["source"] = "explore"
    e_u = picks.groupby("user_id").size()
    m_u = lists.groupby("user_id").size()
    length = np.minimum(top_n, m_u + e_u.reindex(m_u.index, fill_value=0))
    e_u = e_u.reindex(m_u.index, fill_value=0)
    parts = []
    main = lists[~lists.set_index(["user_id", "item_id"]).index.isin(picks.set_index(["user_id", "item_id"]).index)]
    main = main.sort_values(["user_id", "rank"], kind="stable")
    main = main.assign(_i=main.groupby("user_id").cumcount())
    picks = picks.assign(_i=picks.groupby("user_id").cumcount())
    combos = pd.DataFrame({"L": length, "e": e_u})
    for (L, e), grp in combos.groupby(["L", "e"]):
        slots = explore_positions(int(L), int(e))
        rest = [r for r in range(1, int(L) + 1) if r not in set(slots)]
        mu = main[main["user_id"].isin(grp.index) & (main["_i"] < len(rest))]
        pu = picks[picks["user_id"].isin(grp.index) & (picks["_i"] < len(slots))]
        parts.append(mu.assign(rank=np.asarray(rest, dtype="int32")[mu["_i"].to_numpy()]))
        if len(pu):
            parts.append(pu.assign(rank=np.asarray(slots, dtype="int32")[pu["_i"].to_numpy()]))
    out = pd.concat(parts, ignore_index=True).drop(columns="_i")
    out = out.sort_values(["user_id", "rank"], kind="stable").reset_index(drop=True)
    out["rank"] = (out.groupby("user_id").cumcount() + 1).astype("int32")
    return out
