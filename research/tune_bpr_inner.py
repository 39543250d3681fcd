"""implicit BPR settings on the inner split of ml-100k's msr-stratified training part (test never read).

    python research/tune_bpr_inner.py [--path ../shared/data/ml-100k] [--settings NAME,NAME] [--test]

The outer split is the harness's (``msr_stratified_split(interactions, 0.75, 42)``); the inner split is
``msr_stratified_split(outer_train, 0.75, 7)``, as ALSModel's and BPRModel's defaults were chosen. Each
setting is trained with one thread (implicit's BPR is hogwild with more: not repeatable) and scored with
the harness's nDCG@10. ``--test`` also scores the chosen settings on the outer test part (report only).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

#: name -> (factors, learning_rate, regularization, iterations, verify_negative_samples, weighting)
SETTINGS: dict[str, tuple[int, float, float, int, bool, str]] = {
    "current": (64, 0.01, 0.01, 60, True, "presence"),
    "cornac-msr": (200, 0.01, 0.001, 100, True, "presence"),  # MSR notebook's cornac BPR
    "k200-reg0.01-100": (200, 0.01, 0.01, 100, True, "presence"),
    "k10-100": (10, 0.01, 0.01, 100, True, "presence"),  # cornac's default size
    "k128-lr0.005-150": (128, 0.005, 0.01, 150, True, "presence"),
    "k256-lr0.05-20": (256, 0.05, 0.01, 20, True, "presence"),  # more factors, fewer epochs
    "k64-noverify": (64, 0.01, 0.01, 60, False, "presence"),
    "k64-ratings": (64, 0.01, 0.01, 60, True, "ratings"),  # positives sampled in proportion to the rating
    "k128-ratings-40": (128, 0.01, 0.01, 40, True, "ratings"),
    "k64-lr0.02-40": (64, 0.02, 0.01, 40, True, "presence"),
    "k32-60": (32, 0.01, 0.01, 60, True, "presence"),
    "k64-80": (64, 0.01, 0.01, 80, True, "presence"),
    "k64-reg0.003": (64, 0.01, 0.003, 60, True, "presence"),
    "k96-lr0.0075-80": (96, 0.0075, 0.01, 80, True, "presence"),
}


def fit_score(train: pd.DataFrame, test: pd.DataFrame, setting: tuple, seed: int = 42) -> float:
    """nDCG@10 on ``test`` of BPR with ``setting`` fitted on ``train`` (the harness's model and metric)."""
    from pipeline.evaluate.models import BPRModel
    from pipeline.metrics import ranking_metrics
    from pipeline.recall.factors import train_bpr

    factors, lr, reg, its, verify, weighting = setting

    class Tuned(BPRModel):
        def _train(self, user_items: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
            uf, itf, _ = train_bpr(user_items, factors=factors, learning_rate=lr, regularization=reg,
                                   iterations=its, seed=seed, num_threads=1, verify_negative_samples=verify,
                                   sample_weighting=weighting)
            return uf, itf

    model = Tuned(use_ratings=weighting == "ratings").fit(train)
    recs = model.recommend(pd.unique(test["user_id"]), 10)
    return float(ranking_metrics(test, recs, 10)["ndcg"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default=str(Path(__file__).resolve().parents[2] / "shared/data/ml-100k"))
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--test", action="store_true", help="also score on the outer test part")
    ap.add_argument("--seeds", default="42", help="training seeds; the mean (and spread) is reported")
    a = ap.parse_args()
    from pipeline.evaluate.protocols import msr_stratified_split
    from pipeline.evaluate.runner import interactions
    from pipeline.ingest import read_dataset

    inter = interactions(read_dataset("movielens", a.path))
    outer_train, outer_test = msr_stratified_split(inter, 0.75, 42)
    inner_train, inner_test = msr_stratified_split(outer_train, 0.75, 7)
    print(f"outer train {len(outer_train):,} / test {len(outer_test):,}; inner train {len(inner_train):,} / "
          f"valid {len(inner_test):,}")
    seeds = [int(x) for x in a.seeds.split(",")]
    for name in a.settings.split(","):
        t0 = time.perf_counter()
        inner = [fit_score(inner_train, inner_test, SETTINGS[name], seed) for seed in seeds]
        line = (f"{name:20s} {SETTINGS[name]}  inner nDCG@10 {np.mean(inner):.4f} "
                f"(min {min(inner):.4f} max {max(inner):.4f})")
        if a.test:
            test = [fit_score(outer_train, outer_test, SETTINGS[name], seed) for seed in seeds]
            line += f"  test nDCG@10 {np.mean(test):.4f}"
        print(f"{line}  ({time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
