"""The ``pipeline`` model of the evaluation harness: merged recall -> ranker -> fusion -> MMR re-rank.

Registered on import (``pipeline.evaluate.models.RESERVED`` points here). It is the nightly path in one
model: the merged recall of :mod:`pipeline.rank.evaluate` (item-CF, ALS, sequential item-kNN,
popularity), the SASRec-CE ranker over those candidates, the fusion ``P_re = P_recall ** recall_power *
P_rank ** rank_power`` (both 1: ARCHITECTURE.md's product; P_rank is the ranker's softmax over the user's
candidates, P_recall the merge's per-user scaled score; the powers are a log-linear blend tuned on
validation) and the MMR re-rank (pipeline.rerank.lists).
``use_ranker=False`` drops the ranker (P_rank = 1: recall + re-rank only).

Offline datasets carry no stock, brands or rules, so caps and exploration are off; MMR's item similarity
is the cosine of a truncated SVD of the item x user matrix of the training rows (the similarity the
harness's ILD uses when items have no categories). ``score`` (leave-one-out's full ranking) is the fused
``P_re`` of the candidates lifted above everything else (which keeps the ranker's order below): a
re-rank only reorders the top of a list, so it shows in ``recommend`` (msr-stratified, temporal, lists).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipeline.errors import ModelError
from pipeline.evaluate.models import register_model
from pipeline.frames import ITEM_COL, RANK_COL, SCORE_COL, USER_COL
from pipeline.rank.evaluate import MergedRecall, RankerRecommender, _lift
from pipeline.rerank.config import RerankConfig
from pipeline.rerank.lists import finalize_lists

log = logging.getLogger(__name__)


def svd_item_embeddings(user_items: sp.csr_matrix, dims: int = 64, seed: int = 42) -> np.ndarray:
    """Items x ``dims`` factors of the binary item x user matrix (rows unit length)."""
    from scipy.sparse.linalg import svds

    m = (user_items.T.tocsr() > 0).astype(np.float64)
    k = max(1, min(dims, min(m.shape) - 1))
    if min(m.shape) <= 1:
        return np.asarray(m.todense(), dtype=np.float32)
    u, s, _ = svds(m, k=k, random_state=seed)
    vec = (u * s).astype(np.float32)
    norm = np.linalg.norm(vec, axis=1, keepdims=True)
    return vec / np.where(norm > 0, norm, 1.0)


def _softmax_masked(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` over the masked cells (0 elsewhere)."""
    x = np.where(mask, logits.astype(np.float64), -np.inf)
    top = x.max(1, keepdims=True)
    e = np.exp(x - np.where(np.isfinite(top), top, 0.0))
    return e / np.maximum(e.sum(1, keepdims=True), 1e-300)


class PipelineModel(RankerRecommender):
    """Recall merge + ranker + fusion + MMR re-rank (see module docstring); ranker params as ``ranker``."""

    name = "pipeline"

    def __init__(self, *, n_candidates: int = 100, mmr_lambda: float | None = None, fusion: str | None = None,
                 recall_power: float = 1.0, rank_power: float = 1.0, use_ranker: bool = True, tune: bool = True,
                 tune_users: int = 3000, dims: int = 64, **kw: Any) -> None:
        kw.setdefault("n_per_source", 100)
        super().__init__(**kw)
        if self.n_per_source <= 0:
            raise ModelError("pipeline: n_per_source must be >= 1", "the pipeline always recalls candidates")
        base = RerankConfig(max_category_share=1.0, max_brand_share=1.0, explore_share=0.0)
        over = {k: v for k, v in (("mmr_lambda", mmr_lambda), ("fusion", fusion)) if v is not None}
        self.config = base.with_overrides(over)
        self.rank_power, self.tunes, self.tune_users = rank_power, tune and use_ranker, tune_users
        self.n_candidates, self.recall_power, self.use_ranker, self.dims = (n_candidates, recall_power,
                                                                          use_ranker, dims)
        self.tuning: dict = {}

    def _fit(self, user_items: sp.csr_matrix) -> None:
        if self.use_ranker:
            super()._fit(user_items)
        else:
            self.recall = MergedRecall(self.recall_params["sources"], n_per_source=self.n_per_source,
                                       weights=dict(self.recall_params["weights"] or {}), seed=self.seed)
            self.recall.fit(self.train_rows, pd.DataFrame({"item_id": self.item_ids}))
        self.embeddings = (self.item_ids, svd_item_embeddings(user_items, self.dims, self.seed))

    def _tune(self, rows: np.ndarray, seqs: list[np.ndarray], targets: np.ndarray, hist: sp.csr_matrix) -> None:
        """Choose recall_power, rank_power and the source weights by NDCG@10 of the validation targets
        (a sample of ``tune_users``) ranked like leave-one-out's full ranking: a grid over the powers,
        then one pass over each source's weight. Sets them on the model; ``self.tuning`` keeps the trace."""
        rng = np.random.default_rng(self.seed)
        if len(rows) > self.tune_users:
            pick = np.sort(rng.choice(len(rows), self.tune_users, replace=False))
            rows, seqs, targets = rows[pick], [seqs[i] for i in pick], targets[pick]
        h = hist[rows]
        logits = self.ranker.score(seqs)
        mask, parts = self.recall.components(self.user_ids[rows], None, h)
        seen = h.nonzero()
        at = (np.arange(len(rows)), targets)

        def ndcg(rp: float, kp: float, weights: dict[str, float]) -> float:
            p = self.recall.fuse(parts, weights)
            f = rp * np.log(np.maximum(p, 1e-6)) + kp * logits
            sc = _lift(np.where(mask, f, logits), mask)
            t = sc[at].copy()
            sc[seen] = -np.inf
            rank = (sc > t[:, None]).sum(1)
            return float(np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0).mean())

        weights = {n: float(self.recall.weights.get(n, 1.0)) for n in parts}
        best = (ndcg(self.recall_power, self.rank_power, weights), self.recall_power, self.rank_power)
        trace = [{"recall_power": best[1], "rank_power": best[2], "ndcg@10": best[0]}]
        for rp in (0.25, 0.5, 1.0, 2.0, 4.0):
            for kp in (0.0, 0.25, 0.5, 1.0):
                v = ndcg(rp, kp, weights)
                trace.append({"recall_power": rp, "rank_power": kp, "ndcg@10": v})
                if v > best[0]:
                    best = (v, rp, kp)
        _, rp, kp = best
        score = best[0]
        for name in parts:
            for factor in (0.0, 0.5, 2.0, 4.0):
                w = {**weights, name: weights[name] * factor}
                if sum(w.values()) <= 0:
                    continue
                v = ndcg(rp, kp, w)
                trace.append({"weights": w, "ndcg@10": v})
                if v > score:
                    score, weights = v, w
        self.recall_power, self.rank_power, self.recall.weights = rp, kp, weights
        self.tuning = {"recall_power": rp, "rank_power": kp, "weights": weights, "valid_ndcg@10": score,
                       "users": len(rows), "trace": trace}
        log.info("pipeline fusion tuned on %d validation users: recall_power=%s rank_power=%s weights=%s "
                 "ndcg@10=%.4f", len(rows), rp, kp, weights, score)

    def _fused(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(P_re, candidate mask, P_recall ** power, P_rank, ranker logits or None) for known ``rows``."""
        users = self.user_ids[rows]
        if self.use_ranker:
            logits, mask, p_recall = self._parts(rows, history, supplied)
            p_rank = _softmax_masked(logits * self.rank_power, mask)  # = P_rank ** power, renormalised
        else:
            mask, p_recall = self.recall.candidates(users, history if supplied else None,
                                                    sp.csr_matrix(history))
            logits, p_rank = None, np.where(mask, 1.0, 0.0)
        # a candidate's weakest recall still counts (floor 1e-6), as in _tune
        p_rec = np.where(mask, np.power(np.clip(p_recall, 1e-6, 1.0).astype(np.float64), self.recall_power), 0.0)
        return p_rec * p_rank, mask, p_rec, p_rank, logits

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        p_re, mask, _, _, logits = self._fused(rows, history, supplied)
        below = logits if logits is not None else np.broadcast_to(self.popularity, mask.shape)
        lifted = np.log(np.where(mask, p_re, 1.0) + 1e-300)
        # candidates by log P_re, all above the rest (ordered by the ranker, else popularity)
        lo = np.where(mask, lifted, np.inf).min(1, keepdims=True)
        below = np.asarray(below, np.float64)
        span = below.max(1, keepdims=True) - below.min(1, keepdims=True)
        base = np.where(np.isfinite(lo), lo, 0.0) - span - 1.0
        return np.where(mask, lifted, base + (below - below.min(1, keepdims=True))).astype(np.float32)

    def recommend(self, users: Any, k: int = 10, exclude_seen: bool = True,
                  history: sp.csr_matrix | None = None) -> pd.DataFrame:
        """Top ``n_candidates`` by P_re, re-ranked to ``k`` by the fusion and MMR of pipeline.rerank.lists;
        users unknown at fit time get the popularity list."""
        if k < 1:
            raise ModelError(f"{self.name}: k must be >= 1, got {k}")
        if not exclude_seen:  # seen items are never recall candidates: plain ranking by score
            return super().recommend(users, k, exclude_seen, history)
        users = np.asarray(pd.unique(np.asarray(users)))
        rows_all, known = self._rows(users)
        parts = []
        if (~known).any():
            parts.append(super().recommend(users[~known], k, exclude_seen, None))
        kn = np.flatnonzero(known)
        step = max(1, self.batch_cells // max(len(self.item_ids), 1) // 4)
        n_cand = max(k, self.n_candidates)
        hist_all = None if history is None else sp.csr_matrix(history)
        frames = []
        for s in range(0, len(kn), step):
            sel = kn[s: s + step]
            rows = rows_all[sel]
            h = self.user_items[rows] if hist_all is None else hist_all[sel]
            p_re, mask, p_rec, p_rank, _ = self._fused(rows, h, hist_all is not None)
            kk = min(n_cand, mask.shape[1])
            sc = np.where(mask, p_re, -np.inf)
            idx = np.argpartition(-sc, kth=kk - 1, axis=1)[:, :kk]
            val = np.take_along_axis(sc, idx, axis=1)
            ok = np.isfinite(val)
            r = np.repeat(np.arange(len(sel)), kk).reshape(len(sel), kk)[ok]
            c = idx[ok]
            frames.append(pd.DataFrame({
                "user_id": users[sel][r], "item_id": self.item_ids[c], "source": "merged",
                "p_recall": p_rec[r, c], "p_rank": p_rank[r, c],
                "anchor_item_id": pd.array([pd.NA] * len(r), dtype="Int64")}))
        if frames:
            cand = pd.concat(frames, ignore_index=True)
            items = pd.DataFrame({"item_id": self.item_ids})
            out = finalize_lists(cand, items, top_n=k, config=self.config, item_embeddings=self.embeddings)
            # MMR may put a less relevant item first; the contract's score is best-first, so report the
            # running minimum of the fused score down the re-ranked list
            out = out.sort_values(["user_id", "rank"], kind="stable")
            out["score"] = out.groupby("user_id", sort=False)["score"].cummin()
            parts.append(out.rename(columns={"user_id": USER_COL, "item_id": ITEM_COL, "rank": RANK_COL,
                                             "score": SCORE_COL})[[USER_COL, ITEM_COL, RANK_COL, SCORE_COL]])
        if not parts:
            return pd.DataFrame({USER_COL: [], ITEM_COL: [], RANK_COL: [], SCORE_COL: []})
        return pd.concat(parts, ignore_index=True)


register_model("pipeline", PipelineModel, replace=True)
