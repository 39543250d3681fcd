"""Base models and the ``pipeline`` merge on the inner split of ml-100k's msr-stratified training part.

    python research/tune_ml100k.py models [--configs NAME,...]      # each base model alone
    python research/tune_ml100k.py merge --sources A,B[,C] [--n-per-source 100]   # weight grid
    python research/tune_ml100k.py merge --sources A,B --weights 1,2 [--test]
    python research/tune_ml100k.py merge --sources A,B,C,D --ascent [--grid 0,0.5,1,2] [--test]
    python research/tune_ml100k.py models --configs NAME,... --inner2   # optimum vs training size

The outer split is the harness's (``msr_stratified_split(interactions, 0.75, 42)``); the inner split is
``msr_stratified_split(outer_train, 0.75, 7)``, on which ALSModel's and BPRModel's defaults were chosen:
everything is chosen on it, and the outer test part is read only with ``--test`` (report only).

``merge`` emulates ``pipeline``'s recall with ``use_ranker: false`` and ``mmr_lambda: 1``
(pipeline.evaluate.ranker.MergedRecall): each source's top ``n_per_source`` unseen items, scaled to [0, 1]
per user (min of the top -> 0, max -> 1, 0 off the top), the weighted mean ranks the list. ``--fusion
rank`` instead scales by reciprocal rank (1 / (60 + rank), off the top 0) to show how much the min-max
scaling costs. Score matrices are cached per (split, config) under ``--cache``.

Second round (issue #6 acceptance 2; OPENBLAS_NUM_THREADS=1, ``--cache /tmp/ml2_cache``, shared 2-core box):

* ALS single fits, seeds 0-7: inner 0.2645-0.2701 (mean 0.267; the default seed 42 gave a lucky 0.2719).
  ``seeds`` bagging: bag3 0.2698, bag5 0.2703, bag8 0.2694; bag8 over factors 24-64 x reg 10-40 x alpha 3-6
  and 30/50 iterations: 0.2269-0.2713 (defaults 0.2694), so the defaults stay.
* Merge als/ease-r6000/user-knn at 1/1/0.5 with single seeds 0-7: inner 0.2745-0.2780 (mean 0.2764);
  with als-bag8: 0.2778 (seed sets 0, 8, 16, 24: 0.2749-0.2771).
* EDLAE/DLAE (``edlae``), user-EASE (``user-ease``), Mult-VAE (``mult-vae``, bagged too), bagged BPR,
  RP3beta, with --ascent over the weights: every mix 0.2782-0.2795 on inner, inside the noise of one
  split. ``models --inner2`` shows l2 optima *falling* with more data (user-ease 1200 -> 800, DLAE
  1200 -> 800, EASE-ratings 8000-12000 -> 8000).
* Test read for two settings only: als ``seeds: 8`` in the Makefile's mix (inner 0.2778) -> 0.4981 (the
  harness, same figure here); the inner-best mix (als-bag8 1, ease-r6000 1.5, user-knn 0.25,
  vae-e25-b1.0-bs64 1; inner 0.2795) -> 0.4973. Robustness of the first (same setting, other seed sets
  0, 8, 16, 24): 0.4976-0.4985.

Third round (new families; inner split only): ``slim`` best 0.2694 (alpha 0.5, l1_ratio 0.001; EASE 0.2695),
``ease-pairs`` tends to plain EASE from below as l2_pairs grows (best 0.2693 on ratings), ``recvae`` 0.2621
(gamma 0.02, 15 epochs, batch 64; the paper's settings 0.2150). Judged by 5-fold CV in probe_ml100k.py kfold.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

#: name -> (registry model, params)
CONFIGS: dict[str, tuple[str, dict]] = {
    "popularity": ("popularity", {}),
    "item-cf": ("item-cf", {}),
    "als": ("als", {}),
    "ease": ("ease", {"l2": 400}),
    "rp3beta": ("rp3beta", {}),
    "user-knn": ("user-knn", {}),
    "sar": ("sar", {}),
    "bpr": ("bpr", {}),
}
for _l2 in (100, 200, 300, 400, 500, 700, 1000):
    CONFIGS[f"ease-l2{_l2}"] = ("ease", {"l2": _l2})
for _a, _b in itertools.product((0.5, 0.75, 1.0, 1.25), (0.2, 0.35, 0.5, 0.65, 0.8)):
    CONFIGS[f"rp3-a{_a}-b{_b}"] = ("rp3beta", {"alpha": _a, "beta": _b})
for _l2 in (2000, 4000, 6000, 8000, 12000, 16000):
    CONFIGS[f"ease-r{_l2}"] = ("ease", {"l2": _l2, "use_ratings": True})
for _a, _b, _k in itertools.product((0.5, 0.75, 1.0), (0.4, 0.5, 0.6), (50, 100, 200, 400)):
    CONFIGS[f"rp3-a{_a}-b{_b}-k{_k}"] = ("rp3beta", {"alpha": _a, "beta": _b, "neighbours": _k})
for _k, _p in itertools.product((20, 50, 100, 200, 300, 500), (1.0, 2.0, 3.0)):
    CONFIGS[f"uknn-k{_k}-p{_p}"] = ("user-knn", {"neighbours": _k, "power": _p})
for _f, _r, _al in itertools.product((16, 24, 32, 48), (10.0, 20.0, 40.0), (1.0, 3.0, 6.0)):
    CONFIGS[f"als-f{_f}-r{_r}-a{_al}"] = ("als", {"factors": _f, "regularization": _r, "alpha": _al})

# second round: bagged ALS / BPR (``seeds`` fits averaged), EDLAE / DLAE (EASE with dropout-scaled l2)
for _n in (1, 3, 5, 8):
    CONFIGS[f"als-bag{_n}"] = ("als", {"seeds": _n})
for _s in range(8):  # single fits with other seeds: the lottery that bagging averages away
    CONFIGS[f"als-seed{_s}"] = ("als", {"seed": _s})
for _s in (0, 8, 16, 24):  # bags over disjoint seed sets: what is left of the lottery after bagging
    CONFIGS[f"als-bag8-s{_s}"] = ("als", {"seeds": 8, "seed": _s})
for _f, _r, _al in itertools.product((24, 32, 48, 64), (10.0, 20.0, 40.0), (3.0, 6.0)):
    CONFIGS[f"als-bag8-f{_f}-r{_r}-a{_al}"] = ("als", {"factors": _f, "regularization": _r, "alpha": _al,
                                                      "seeds": 8})
for _it in (30, 50):
    CONFIGS[f"als-bag8-it{_it}"] = ("als", {"iterations": _it, "seeds": 8})
CONFIGS["bpr-bag5"] = ("bpr", {"seeds": 5})
for _l2, _p in itertools.product((25, 50, 100, 200, 400, 800), (0.1, 0.25, 0.33, 0.5, 0.67)):
    CONFIGS[f"edlae-l{_l2}-p{_p}"] = ("edlae", {"l2": _l2, "dropout": _p})
    CONFIGS[f"dlae-l{_l2}-p{_p}"] = ("edlae", {"l2": _l2, "dropout": _p, "zero_diagonal": False})
for _l2, _p in itertools.product((500, 1000, 2000, 4000, 8000), (0.1, 0.25, 0.33, 0.5, 0.67)):
    CONFIGS[f"edlae-r{_l2}-p{_p}"] = ("edlae", {"l2": _l2, "dropout": _p, "use_ratings": True})

for _l2, _p in itertools.product((800, 1200, 1600, 2400, 3200), (0.0, 0.1, 0.25, 0.5)):
    CONFIGS[f"dlae-l{_l2}-p{_p}"] = ("edlae", {"l2": _l2, "dropout": _p, "zero_diagonal": False})
for _l2, _p in itertools.product((4000, 8000, 16000, 32000), (0.0, 0.1, 0.25, 0.5)):
    CONFIGS[f"dlae-r{_l2}-p{_p}"] = ("edlae", {"l2": _l2, "dropout": _p, "zero_diagonal": False,
                                               "use_ratings": True})

for _l2 in (50, 100, 200, 400, 600, 800, 1000, 1200, 1600):
    CONFIGS[f"uease-l{_l2}"] = ("user-ease", {"l2": _l2})
for _l2 in (1000, 2000, 4000, 8000, 16000, 32000):
    CONFIGS[f"uease-r{_l2}"] = ("user-ease", {"l2": _l2, "use_ratings": True})

for _e, _b, _bs in itertools.product((15, 25, 35, 50, 100, 200), (0.2, 0.5, 1.0), (32, 64)):
    CONFIGS[f"vae-e{_e}-b{_b}-bs{_bs}"] = ("mult-vae", {"epochs": _e, "beta": _b, "batch_size": _bs,
                                                       "anneal_steps": 2000})

for _e, _b in itertools.product((25, 50, 75, 100, 150, 200), (0.2, 0.3, 0.5, 1.0, 2.0)):
    CONFIGS[f"vae-a200-e{_e}-b{_b}"] = ("mult-vae", {"epochs": _e, "beta": _b, "anneal_steps": 200})

CONFIGS["vae-a200-e100-b1.0-bag3"] = ("mult-vae", {"epochs": 100, "beta": 1.0, "anneal_steps": 200, "seeds": 3})
CONFIGS["vae-a200-e50-b0.5-bag3"] = ("mult-vae", {"epochs": 50, "beta": 0.5, "anneal_steps": 200, "seeds": 3})

# third round (issue #6 acceptance 2, new families): SLIM-ElasticNet and higher-order (pairwise) EASE
for _al, _l1 in itertools.product((0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0), (0.0001, 0.001, 0.01, 0.05, 0.2)):
    CONFIGS[f"slim-a{_al}-l{_l1}"] = ("slim", {"alpha": _al, "l1_ratio": _l1})
    CONFIGS[f"slim-r-a{_al}-l{_l1}"] = ("slim", {"alpha": _al * 10, "l1_ratio": _l1, "use_ratings": True})
for _l2c, _m, _rho in itertools.product((1000, 4000, 16000), (500, 2000, 5000), (1000.0, 10000.0)):
    CONFIGS[f"hoease-l400-c{_l2c}-m{_m}-rho{_rho:g}"] = ("ease-pairs", {"l2": 400, "l2_pairs": _l2c, "pairs": _m,
                                                                        "rho": _rho})
    CONFIGS[f"hoease-r6000-c{_l2c * 10}-m{_m}-rho{_rho * 10:g}"] = (
        "ease-pairs", {"l2": 6000, "l2_pairs": _l2c * 10, "pairs": _m, "rho": _rho * 10, "use_ratings": True})

for _e, _g in itertools.product((25, 50, 100), (0.0035, 0.005, 0.01)):
    CONFIGS[f"recvae-e{_e}-g{_g}"] = ("recvae", {"epochs": _e, "gamma": _g})
for _e, _g, _bs in itertools.product((15, 30, 50), (0.0035, 0.005, 0.01, 0.02, 0.04, 0.08), (64, 128)):
    CONFIGS[f"recvae-e{_e}-g{_g}-bs{_bs}"] = ("recvae", {"epochs": _e, "gamma": _g, "batch_size": _bs,
                                                         "learning_rate": 1e-3})


def load(path: str) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """{"inner": (train, valid), "outer": (train, test), "inner2": (train, valid)} from the harness's
    interactions and splits; "inner2" splits the inner train again (75/25, seed 11) to see how a
    setting's optimum moves with the amount of training data (inner2 -> inner, as inner -> outer)."""
    from pipeline.evaluate.protocols import msr_stratified_split
    from pipeline.evaluate.runner import interactions
    from pipeline.ingest import read_dataset

    inter = interactions(read_dataset("movielens", path))
    outer_train, outer_test = msr_stratified_split(inter, 0.75, 42)
    inner_train, inner_valid = msr_stratified_split(outer_train, 0.75, 7)
    inner2_train, inner2_valid = msr_stratified_split(inner_train, 0.75, 11)
    return {"inner": (inner_train, inner_valid), "outer": (outer_train, outer_test),
            "inner2": (inner2_train, inner2_valid)}


class Problem:
    """Test users, seen mask and relevance of one split, aligned with a model's catalogue."""

    def __init__(self, train: pd.DataFrame, test: pd.DataFrame) -> None:
        self.train, self.test = train, test
        self.items = np.unique(train["item_id"].to_numpy())
        self.users = np.asarray(pd.unique(test["user_id"]))
        ui = {u: r for r, u in enumerate(self.users)}
        self.seen = np.zeros((len(self.users), len(self.items)), bool)
        tr = train[train["user_id"].isin(ui)]
        self.seen[tr["user_id"].map(ui).to_numpy(), np.searchsorted(self.items, tr["item_id"].to_numpy())] = True
        self.rel = np.zeros_like(self.seen)
        te = test.drop_duplicates(["user_id", "item_id"])
        self.n_rel = te.groupby("user_id").size().reindex(self.users).to_numpy()
        te = te[te["item_id"].isin(self.items)]  # items never trained on cannot be recommended
        self.rel[te["user_id"].map(ui).to_numpy(), np.searchsorted(self.items, te["item_id"].to_numpy())] = True

    def ndcg(self, scores: np.ndarray, k: int = 10) -> float:
        """MSR binary nDCG@k of the top ``k`` unseen items by ``scores`` (ties by catalogue order)."""
        sc = np.where(self.seen, -np.inf, scores.astype(np.float64))
        idx = np.argsort(-sc, axis=1, kind="stable")[:, :k]
        hit = np.take_along_axis(self.rel, idx, axis=1)
        dcg = (hit / np.log2(np.arange(2, k + 2))[None, :]).sum(1)
        ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(2.0 + np.arange(k)))])
        return float((dcg / ideal[np.minimum(self.n_rel, k)]).mean())


def scores_for(split: str, name: str, prob: Problem, cache: Path) -> np.ndarray:
    """Dense test-users x items scores of config ``name`` fitted on the split's train (cached)."""
    from pipeline.evaluate.models import get_model

    f = cache / f"{split}-{name}.npy"
    if f.exists():
        return np.load(f)
    model_name, params = CONFIGS[name]
    t0 = time.perf_counter()
    m = get_model(model_name, **params).fit(prob.train)
    assert np.array_equal(m.item_ids, prob.items)
    sc = m.score(prob.users).astype(np.float32)
    print(f"  fitted {name} on {split} in {time.perf_counter() - t0:.1f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(f, sc)
    return sc


def scaled(sc: np.ndarray, seen: np.ndarray, n: int, fusion: str) -> np.ndarray:
    """One source's per-user scaled score: MergedRecall's min-max over its top ``n`` (0 off the top)."""
    s = np.where(seen, -np.inf, sc.astype(np.float64))
    top = np.argpartition(-s, kth=n - 1, axis=1)[:, :n]
    vals = np.take_along_axis(s, top, axis=1)
    out = np.zeros_like(s)
    if fusion == "rank":
        order = np.argsort(-vals, axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(n)[None, :].repeat(len(s), 0), axis=1)
        np.put_along_axis(out, top, 1.0 / (60.0 + rank), axis=1)
        return out
    hi, lo = vals.max(1, keepdims=True), vals.min(1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    np.put_along_axis(out, top, (vals - lo) / span, axis=1)
    return out


def merged(parts: list[np.ndarray], weights: list[float], seen: np.ndarray) -> np.ndarray:
    """Weighted mean of the scaled parts; non-candidates (0 in every part's top) go below candidates."""
    cand = np.zeros(seen.shape, bool)
    for p in parts:
        cand |= p > 0
    fused = sum(w * p for w, p in zip(weights, parts, strict=True)) / max(sum(weights), 1e-12)
    return np.where(cand, fused, -1.0)


def ascent(prob: Problem, parts: list[np.ndarray], start: list[float], levels: list[float],
           rounds: int = 3) -> list[tuple[float, list[float]]]:
    """Coordinate ascent over the source weights (each in turn over ``levels``) from ``start``."""
    best = (prob.ndcg(merged(parts, start, prob.seen)), list(start))
    for _ in range(rounds):
        before = best[0]
        for j in range(len(parts)):
            for lv in levels:
                w = [*best[1][:j], lv, *best[1][j + 1:]]
                if sum(w) <= 0:
                    continue
                v = prob.ndcg(merged(parts, w, prob.seen))
                if v > best[0] + 1e-9:
                    best = (v, w)
        if best[0] <= before:
            break
    return [best]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("models", "merge"))
    ap.add_argument("--path", default=str(Path(__file__).resolve().parents[2] / "shared/data/ml-100k"))
    ap.add_argument("--configs", default="")
    ap.add_argument("--sources", default="als,ease")
    ap.add_argument("--weights", default="", help="fixed weights (comma list); default: a grid")
    ap.add_argument("--grid", default="0,0.5,1,2,3,4")
    ap.add_argument("--ascent", action="store_true", help="coordinate ascent from --weights (or all 1)")
    ap.add_argument("--n-per-source", type=int, default=100)
    ap.add_argument("--fusion", choices=("minmax", "rank"), default="minmax")
    ap.add_argument("--test", action="store_true", help="also score on the outer test part (report only)")
    ap.add_argument("--inner2", action="store_true", help="models: also score on the inner train's own split")
    ap.add_argument("--cache", default="/tmp/tune_ml100k_cache")
    a = ap.parse_args()
    cache = Path(a.cache)
    data = load(a.path)
    probs = {s: Problem(*data[s]) for s in (("inner", "outer") if a.test else ("inner",))}
    if a.inner2:
        probs["inner2"] = Problem(*data["inner2"])
    print(f"inner train {len(data['inner'][0]):,} / valid {len(data['inner'][1]):,}; "
          f"outer train {len(data['outer'][0]):,} / test {len(data['outer'][1]):,}", flush=True)
    if a.what == "models":
        for name in (a.configs.split(",") if a.configs else list(CONFIGS)):
            inner = probs["inner"].ndcg(scores_for("inner", name, probs["inner"], cache))
            line = f"{name:24s} inner nDCG@10 {inner:.4f}"
            if a.inner2:
                line += f"  inner2 {probs['inner2'].ndcg(scores_for('inner2', name, probs['inner2'], cache)):.4f}"
            if a.test:
                line += f"  test {probs['outer'].ndcg(scores_for('outer', name, probs['outer'], cache)):.4f}"
            print(line, flush=True)
        return
    names = a.sources.split(",")
    results = {}
    for split, prob in probs.items():
        parts = [scaled(scores_for(split, n, prob, cache), prob.seen, a.n_per_source, a.fusion) for n in names]
        levels = [float(x) for x in a.grid.split(",")]
        if a.ascent and split == "inner":
            res = ascent(prob, parts, [float(x) for x in a.weights.split(",")] if a.weights else
                         [1.0] * len(names), levels)
        else:
            if a.ascent:  # the outer part scores the weights chosen on the inner split only
                grid = [results["inner"][0][1]]
            elif a.weights:
                grid = [[float(x) for x in a.weights.split(",")]]
            else:
                grid = [list(w) for w in itertools.product(levels, repeat=len(names)) if sum(w) > 0]
            res = sorted(((prob.ndcg(merged(parts, w, prob.seen)), w) for w in grid), key=lambda t: -t[0])
        results[split] = res
        for v, w in res[:8]:
            print(f"{split} {dict(zip(names, w, strict=True))} n_per_source={a.n_per_source} "
                  f"fusion={a.fusion} nDCG@10 {v:.4f}", flush=True)
    print(json.dumps({"sources": names, "best_inner": results["inner"][0][1]}))


if __name__ == "__main__":
    main()
