"""Benchmark the evaluation harness on ml-100k (msr-stratified, k=10).

1. item-CF end to end: read -> split -> fit -> recommend -> metrics -> files and report (wall time).
2. Metric computation rate (users/s): the vectorised ``ranking_metrics`` against a plain pandas loop over
   users computing the same six metrics, on the same lists in the same run; prints the ratio.

Run: ``.venv/bin/python benchmarks/bench_evaluate.py [--data ../shared/data/ml-100k] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.evaluate.models import get_model
from pipeline.evaluate.protocols import msr_stratified_split
from pipeline.evaluate.runner import evaluate_frames, interactions
from pipeline.metrics import RANKING_METRICS, ranking_metrics

DEFAULT_DATA = Path(os.environ.get("RERANK_SHARED_DATA",
                                   Path(__file__).resolve().parents[2] / "shared" / "data"))


def loop_metrics(truth: pd.DataFrame, recs: pd.DataFrame, k: int) -> dict[str, float]:
    """The obvious implementation: one pandas selection and Python loop per user."""
    vals: dict[str, list[float]] = {m: [] for m in RANKING_METRICS}
    by_user = dict(tuple(truth.groupby("user_id")))
    for u, g in recs.groupby("user_id"):
        if u not in by_user:
            continue
        rel = set(by_user[u]["item_id"])
        lst = g.sort_values("rank")["item_id"].tolist()[:k]
        hits = [i in rel for i in lst]
        dcg = sum(1 / math.log2(p + 2) for p, h in enumerate(hits) if h)
        idcg = sum(1 / math.log2(p + 2) for p in range(min(len(rel), k)))
        ap, n = 0.0, 0
        for p, h in enumerate(hits):
            if h:
                n += 1
                ap += n / (p + 1)
        first = next((p + 1 for p, h in enumerate(hits) if h), None)
        vals["ndcg"].append(dcg / idcg)
        vals["map"].append(ap / min(len(rel), k))
        vals["precision"].append(sum(hits) / k)
        vals["recall"].append(sum(hits) / len(rel))
        vals["hr"].append(float(any(hits)))
        vals["mrr"].append(1 / first if first else 0.0)
    return {m: float(np.mean(v)) for m, v in vals.items()}


def best_of(fn, repeat: int) -> tuple[float, object]:  # noqa: ANN001
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA / "ml-100k")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from pipeline.ingest import read_dataset

    t = time.perf_counter()
    frames = read_dataset("movielens", args.data)
    read_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        e2e_s, m = best_of(lambda: evaluate_frames(frames, protocol="msr-stratified", k=10,
                                                   models=["item-cf"], out_dir=tmp, dataset="ml-100k"),
                           args.repeat)
    ndcg = m["results"][0]["ndcg@10"]
    print(f"item-CF end to end on ml-100k (read {read_s:.2f}s once; split+fit+recommend+metrics+report, "
          f"best of {args.repeat}): {e2e_s:.2f}s  nDCG@10={ndcg:.4f}")

    train, test = msr_stratified_split(interactions(frames))
    recs = get_model("item-cf").fit(train).recommend(test["user_id"].unique(), 10)
    n_users = recs["user_id"].nunique()
    vec_s, vec = best_of(lambda: ranking_metrics(test, recs, 10), args.repeat)
    loop_s, loop = best_of(lambda: loop_metrics(test, recs, 10), args.repeat)
    assert all(abs(vec[k] - loop[k]) < 1e-9 for k in RANKING_METRICS), (vec, loop)
    print(f"metric computation, {n_users} users x 6 metrics (same lists, same values):")
    print(f"  vectorised  {vec_s * 1e3:8.1f} ms  {n_users / vec_s:12,.0f} users/s")
    print(f"  pandas loop {loop_s * 1e3:8.1f} ms  {n_users / loop_s:12,.0f} users/s")
    print(f"  ratio (vectorised / loop rate): {loop_s / vec_s:.1f}x")


if __name__ == "__main__":
    main()
