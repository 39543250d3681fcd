"""The CF build: item-item neighbours from the run's interaction matrix (also "similar items").

``neighbours.parquet`` (item_id, similar_item_id, score, rank, method) feeds the candidate merge and, through
the publish stage, ``recsys.similar_items``. The similarity is cosine on the decayed, event-weighted matrix
by default; SAR's jaccard/lift on binary co-occurrence are the alternatives (``method``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.recall.matrix import Interactions, cap_user_history

NEIGHBOUR_COLUMNS = ["item_id", "similar_item_id", "score", "rank", "method"]
#: Items a user's row keeps for the similarity build (bounds the cost of very long histories).
MAX_USER_ITEMS = 500


def neighbours_frame(idx: np.ndarray, scores: np.ndarray, item_ids: np.ndarray, method: str) -> pd.DataFrame:
    """Long neighbour table from ``n_items x k`` (index, score) arrays; zero scores dropped; rank 1 = best."""
    rows, cols = np.nonzero(scores > 0)
    out = pd.DataFrame({"item_id": item_ids[rows], "similar_item_id": item_ids[idx[rows, cols]],
                        "score": scores[rows, cols].astype("float64")})
    out = out.sort_values(["item_id", "score", "similar_item_id"], ascending=[True, False, True], kind="stable")
    out["rank"] = out.groupby("item_id").cumcount().astype("int32") + 1
    out["method"] = f"item-cf-{method}"
    return out.reset_index(drop=True)[NEIGHBOUR_COLUMNS]


def neighbours_from_interactions(inter: Interactions, *, k: int = 20, method: str = "cosine", shrink: float = 0.0,
                                 client: object | None = None, block_size: int | None = None,
                                 max_user_items: int | None = MAX_USER_ITEMS, algorithm: str = "dense") -> pd.DataFrame:
    """Top-``k`` neighbours per item of ``inter`` (on the Dask ``client`` when given); ``algorithm``
    "sparse" scores only non-zero co-occurrences (same scores; ties at the k-th place keep lower ids)."""
    from pipeline.recall.itemcf import similarity_topk_dask, similarity_topk_dense

    X = cap_user_history(inter.user_items, max_user_items)
    if client is not None:
        idx, scores = similarity_topk_dask(X, client, k=k, method=method, shrink=shrink,  # type: ignore[arg-type]
                                           block_size=block_size, algorithm=algorithm)
    else:
        idx, scores = similarity_topk_dense(X, k=k, method=method, shrink=shrink,  # type: ignore[arg-type]
                                            block_size=block_size, algorithm=algorithm)
    return neighbours_frame(idx, scores, inter.item_ids, method)


