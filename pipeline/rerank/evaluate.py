"""The ``pipeline`` model of the evaluation harness: item-CF recall -> fusion -> MMR re-rank.

Registered on import (``pipeline.evaluate.models.RESERVED`` points here). Offline datasets carry no stock,
brands or rules, so this measures what the re-rank itself costs or buys: accuracy and intra-list diversity
with diversity off (``mmr_lambda=1``) and on. Item similarity for MMR is the cosine of a truncated SVD of
the item x user co-occurrence matrix of the training rows (the same similarity the harness's ILD uses when
items have no categories). ``score`` (leave-one-out's full ranking) is the recall's: a re-rank only
reorders the top of a list.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipeline.evaluate.models import ItemCFModel, Recommender, register_model
from pipeline.frames import ITEM_COL, RANK_COL, SCORE_COL, USER_COL
from pipeline.rerank.config import RerankConfig
from pipeline.rerank.lists import finalize_lists


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


class PipelineModel(Recommender):
    """Recall (item-CF) + fusion + re-rank, as the nightly run does it (no ranker: P_rank = 1)."""

    name = "pipeline"
    uses_history = True

    def __init__(self, *, n_candidates: int = 200, mmr_lambda: float | None = None, fusion: str | None = None,
                 dims: int = 64, neighbours: int | None = None, **kw: Any) -> None:
        super().__init__(use_ratings=False, **{k: v for k, v in kw.items() if k != "use_ratings"})
        base = RerankConfig(max_category_share=1.0, max_brand_share=1.0, explore_share=0.0)
        over = {k: v for k, v in (("mmr_lambda", mmr_lambda), ("fusion", fusion)) if v is not None}
        self.config = base.with_overrides(over)
        self.n_candidates, self.dims, self.neighbours = n_candidates, dims, neighbours

    def _fit(self, user_items: sp.csr_matrix) -> None:
        self.recall = ItemCFModel(neighbours=self.neighbours)
        self.recall.item_ids, self.recall.user_ids = self.item_ids, self.user_ids
        self.recall.user_items, self.recall.popularity = self.user_items, self.popularity
        self.recall._fit(user_items)
        self.embeddings = (self.item_ids, svd_item_embeddings(user_items, self.dims, self.seed))

    def _score(self, rows: np.ndarray, history: sp.csr_matrix, supplied: bool) -> np.ndarray:
        return self.recall._score(rows, history, supplied)

    def recommend(self, users: Any, k: int = 10, exclude_seen: bool = True,
                  history: sp.csr_matrix | None = None) -> pd.DataFrame:
        """Top ``n_candidates`` of the recall, re-ranked to ``k`` with the configured fusion and MMR."""
        cand = super().recommend(users, max(k, self.n_candidates), exclude_seen, history)
        if cand.empty:
            return cand
        best = cand.groupby(USER_COL)[SCORE_COL].transform("max")
        cand = pd.DataFrame({"user_id": cand[USER_COL], "item_id": cand[ITEM_COL], "source": "item-cf",
                             "p_recall": (cand[SCORE_COL] / best.where(best > 0, 1.0)).clip(lower=0.0),
                             "p_rank": 1.0, "anchor_item_id": pd.array([pd.NA] * len(cand), dtype="Int64")})
        items = pd.DataFrame({"item_id": self.item_ids})
        out = finalize_lists(cand, items, top_n=k, config=self.config, item_embeddings=self.embeddings)
        return out.rename(columns={"user_id": USER_COL, "item_id": ITEM_COL, "rank": RANK_COL, "score": SCORE_COL})[
            [USER_COL, ITEM_COL, RANK_COL, SCORE_COL]]


register_model("pipeline", PipelineModel, replace=True)
