"""Research: the ``pipeline`` model of the evaluation harness: merged recall -> ranker -> fusion -> MMR re-rank.

Evaluator-only: the nightly run does not publish these lists (its one per-user path is
:func:`pipeline.nightly.recommend_shard`). Registered on import (``pipeline.evaluate.models.RESERVED`` points
here). It mirrors the nightly path's shape in one model: the merged recall of :mod:`pipeline.evaluate.ranker`
(item-CF, ALS, sequential item-kNN, popularity), the SASRec-CE ranker over those candidates, the fusion ``P_re =
P_recall ** recall_power * P_rank ** rank_power`` (both 1: ARCHITECTURE.md's product; P_rank is the ranker's
softmax over the user's candidates, P_recall the merge's per-user scaled score; the powers are a log-linear
blend tuned on validation) and the MMR re-rank (pipeline.rerank.lists).
``use_ranker=False`` drops the ranker (P_rank = 1: recall + re-rank only).

``head="mlp"`` (the default; ``"linear"`` a linear one) puts a listwise head (pipeline.rank.head) on top
of the SASRec logits: like the nightly RankerNet, which reads the recall sources and scores next to the
behaviour sequence, it scores each candidate from the ranker's logit and every source's score and rank,
trained on the validation item (leave-one-out's item -2; else an inner holdout of train). P_rank is then
its softmax over the candidates, and ``recall_power`` is chosen on its out-of-fold scores (2-fold cross
fit on the validation users), the figure ``tuning["valid_ndcg@10_out_of_fold"]`` reports: the harness's
own validation row for ``pipeline`` is in-sample. With fewer than ``head_min_targets`` validation items
among the candidates, and with ``head="none"``, the fusion is the grid-tuned product as before.

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
from pipeline.evaluate.ranker import MergedRecall, RankerRecommender, _lift
from pipeline.frames import ITEM_COL, RANK_COL, SCORE_COL, USER_COL
from pipeline.rank.head import CandidateBlock, ListwiseHead, candidate_block, cross_fit, ndcg_at
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

    name = "research-stack"

    def __init__(self, *, n_candidates: int = 100, mmr_lambda: float | None = None, fusion: str | None = None,
                 recall_power: float = 1.0, rank_power: float = 1.0, use_ranker: bool = True, tune: bool = True,
                 tune_users: int = 3000, dims: int = 64, head: str = "mlp", head_hidden: int = 32,
                 head_epochs: int = 6, head_users: int = 25000, head_min_targets: int = 200, **kw: Any) -> None:
        kw.setdefault("n_per_source", 100)
        super().__init__(**kw)
        if self.n_per_source <= 0:
            raise ModelError("pipeline: n_per_source must be >= 1", "the pipeline always recalls candidates")
        base = RerankConfig(max_category_share=1.0, max_brand_share=1.0, explore_share=0.0)
        over = {k: v for k, v in (("mmr_lambda", mmr_lambda), ("fusion", fusion)) if v is not None}
        self.config = base.with_overrides(over)
        if head not in ("mlp", "linear", "none"):
            raise ModelError(f"pipeline: head {head!r}", "use 'mlp', 'linear' or 'none' (the product grid)")
        self.rank_power, self.tunes, self.tune_users = rank_power, tune, tune_users
        self.head_kind, self.head_users, self.head_min_targets = head, head_users, head_min_targets
        self.head_params = {"hidden": head_hidden if head == "mlp" else 0, "epochs": head_epochs,
                            "seed": self.seed}
        self.head: ListwiseHead | None = None
        self.n_candidates, self.recall_power, self.use_ranker, self.dims = (n_candidates, recall_power,
                                                                          use_ranker, dims)
        self.tuning: dict = {}

    def _fit(self, user_items: sp.csr_matrix) -> None:
        self.head = None
        if self.use_ranker or self.tunes:
            super()._fit(user_items)
        else:
            self.recall = MergedRecall(self.recall_params["sources"], n_per_source=self.n_per_source,
                                       weights=dict(self.recall_params["weights"] or {}), seed=self.seed)
            self.recall.fit(self.train_rows, pd.DataFrame({"item_id": self.item_ids}))
        self.embeddings = (self.item_ids, svd_item_embeddings(user_items, self.dims, self.seed))

    def _fit_ranker(self, train: list[np.ndarray], valid: tuple | None) -> None:
        if self.use_ranker:
            super()._fit_ranker(train, valid)
        else:
            self.ranker = None

    def _block(self, users: np.ndarray, seqs: list[np.ndarray] | None, history: sp.csr_matrix | None,
               seen: sp.csr_matrix) -> tuple[CandidateBlock, np.ndarray, np.ndarray, np.ndarray | None]:
        """(candidate features, candidate mask, P_recall, ranker logits or None) for ``users``."""
        logits = self.ranker.score(seqs) if self.ranker is not None and seqs is not None else None
        tops = self.recall.tops(users, history, seen)
        mask, parts = self.recall.parts_from(tops)
        block = candidate_block(mask, tops, popularity=self.popularity, history_len=seen.getnnz(axis=1),
                                logits=logits)
        return block, mask, self.recall.fuse(parts), logits

    def _tune(self, rows: np.ndarray, seqs: list[np.ndarray], targets: np.ndarray, hist: sp.csr_matrix) -> None:
        if self.head_kind == "none":
            self._tune_grid(rows, seqs, targets, hist)
        else:
            self._tune_head(rows, seqs, targets, hist)

    def _tune_head(self, rows: np.ndarray, seqs: list[np.ndarray], targets: np.ndarray,
                   hist: sp.csr_matrix) -> None:
        """Train the listwise head (pipeline.rank.head) on the validation targets of up to ``head_users``
        users and choose ``recall_power`` (P_re = P_recall ** a * P_rank, P_rank the head's softmax over the
        candidates) on the head's out-of-fold scores; ``self.tuning`` keeps the out-of-fold NDCG@10."""
        # one block row per user; a user may hold several targets (inner_holdout="share")
        users, first, inv = np.unique(rows, return_index=True, return_inverse=True)
        rng = np.random.default_rng(self.seed)
        pick = np.arange(len(users))
        if len(users) > self.head_users:
            pick = np.sort(rng.choice(len(users), self.head_users, replace=False))
        xs, valids, tgts, precs = [], [], [], []
        for s in range(0, len(pick), 1024):
            part = pick[s: s + 1024]
            useqs = [seqs[first[i]] for i in part] if self.use_ranker else None
            block, _, p_recall, _ = self._block(self.user_ids[users[part]], useqs, None, hist[users[part]])
            local = np.full(len(users), -1)
            local[part] = np.arange(len(part))
            at = local[inv]
            xs.append(block.x)
            valids.append(block.valid)
            tgts.append(block.hits(at[at >= 0], targets[at >= 0]))
            precs.append(block.take(p_recall))
        n_rel = np.bincount(inv, minlength=len(users))[pick]
        width = max(v.shape[1] for v in valids)

        def pad(a: np.ndarray) -> np.ndarray:
            return np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2))

        x = np.concatenate([pad(a) for a in xs])
        valid = np.concatenate([pad(a) for a in valids])
        target = np.concatenate([pad(a) for a in tgts])
        if target.sum() < self.head_min_targets:
            # too few held-out items among the candidates to learn from: the product grid instead
            log.info("pipeline: %d validation targets among the candidates (< head_min_targets=%d): "
                     "product fusion", int(target.sum()), self.head_min_targets)
            self._tune_grid(rows, seqs, targets, hist)
            self.tuning["head"] = "none (too few targets)"
            return
        log_rec = np.log(np.clip(np.concatenate([pad(a) for a in precs]), 1e-6, 1.0))
        oof = cross_fit(x, valid, target, **self.head_params)
        trace, best = [], (-1.0, 0.0)
        for a in (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0):
            v = float(ndcg_at(np.where(valid, oof + a * log_rec, -np.inf), target, n_relevant=n_rel).mean())
            trace.append({"recall_power": a, "ndcg@10": v})
            if v > best[0]:
                best = (v, a)
        self.head = ListwiseHead(**self.head_params).fit(x, valid, target)
        self.recall_power, self.rank_power = best[1], 1.0
        found = float(target.sum() / max(n_rel.sum(), 1))
        self.tuning = {"head": self.head_kind, "recall_power": best[1], "valid_ndcg@10_out_of_fold": best[0],
                       "users": len(pick), "targets": int(n_rel.sum()), "targets_in_candidates": found,
                       "features": int(x.shape[-1]), "trace": trace}
        log.info("pipeline head trained on %d validation users (%.1f%% of their targets among the candidates): "
                 "recall_power=%s out-of-fold ndcg@10=%.4f", len(pick), 100 * found, best[1], best[0])

    def _tune_grid(self, rows: np.ndarray, seqs: list[np.ndarray], targets: np.ndarray,
                   hist: sp.csr_matrix) -> None:
        """Choose recall_power, rank_power and the source weights by NDCG@10 of the validation targets
        (a sample of ``tune_users``) ranked like leave-one-out's full ranking: a grid over the powers,
        then one pass over each source's weight. Sets them on the model; ``self.tuning`` keeps the trace."""
        rng = np.random.default_rng(self.seed)
        if len(rows) > self.tune_users:
            pick = np.sort(rng.choice(len(rows), self.tune_users, replace=False))
            rows, seqs, targets = rows[pick], [seqs[i] for i in pick], targets[pick]
        h = hist[rows]
        mask, parts = self.recall.components(self.user_ids[rows], None, h)
        logits = self.ranker.score(seqs) if self.ranker is not None else np.zeros(mask.shape, np.float32)
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
        if self.head is not None:
            seqs = self.sequences_for(users, supplied) if self.use_ranker else None
            seen = sp.csr_matrix(history)
            block, mask, p_recall, logits = self._block(users, seqs, history if supplied else None, seen)
            sc = self.head.score(block.x, block.valid).astype(np.float64)
            top = sc.max(1, keepdims=True)
            e = np.exp(sc - np.where(np.isfinite(top), top, 0.0))
            prob = e / np.maximum(e.sum(1, keepdims=True), 1e-300)
            r, c = np.nonzero(block.valid)
            p_rank = np.zeros(mask.shape)
            p_rank[r, block.items[r, c]] = prob[r, c]
        elif self.use_ranker:
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


register_model("research-stack", PipelineModel, replace=True)
