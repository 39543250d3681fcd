"""Benchmark the recall builds: item-CF (ours, single process and on Dask) against implicit's
CosineRecommender on the same matrix in the same run, and ALS time per iteration.

    python benchmarks/bench_recall.py [--tier S|M|L] [--k 100] [--factors 64] [--seed N] [--kinds K,K]
                                      [--matrix-cache DIR]

Kinds: ``ours``/``ours-dask`` use the dense top-k path, ``ours-sparse``/``ours-dask-sparse`` the sparse one
(pipeline.recall.itemcf.ALGORITHMS). Each build runs in a fresh child process that loads the matrix from
disk, so that its peak memory (sampled RSS minus the RSS after loading; for Dask, the client process only)
is its own.
Prints seconds, peak MiB and ratios to implicit.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402


def _child(kind: str, path: str, k: int, factors: int, q: mp.Queue) -> None:
    import threading

    import psutil

    X = sp.load_npz(path).tocsr()
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:  # RSS sampled every 2 ms: sees C++ allocations (implicit) that tracemalloc does not
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            done.wait(0.002)

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    extra = {}
    algorithm = "sparse" if kind.endswith("-sparse") else "dense"
    if kind in ("ours", "ours-sparse"):
        from pipeline.recall.itemcf import similarity_topk_dense

        similarity_topk_dense(X, k=k, method="cosine", block_size=2048, algorithm=algorithm)
    elif kind in ("ours-dask", "ours-dask-sparse"):
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as lc, Client(lc) as c:
            t0 = time.perf_counter()  # the cluster start is not part of the build
            from pipeline.recall.itemcf import similarity_topk_dask

            similarity_topk_dask(X, c, k=k, method="cosine", block_size=2048, algorithm=algorithm)
    elif kind == "implicit-cosine":
        from implicit.nearest_neighbours import CosineRecommender

        CosineRecommender(K=k, num_threads=1).fit(X, show_progress=False)
    elif kind == "als":
        from pipeline.recall.factors import train_als

        ticks: list[float] = []
        train_als(X, factors=factors, iterations=5, num_threads=0,
                  callback=lambda it, elapsed, loss: ticks.append(time.perf_counter()))
        extra["per_iteration_s"] = float(np.median(np.diff([t0, *ticks])))
    secs = time.perf_counter() - t0
    done.set()
    q.put({"seconds": secs, "peak_mib": max(peak[0] - base, 0) / 2**20, **extra})


def run(kind: str, path: str, k: int, factors: int) -> dict:
    q: mp.Queue = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_child, args=(kind, path, k, factors, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tier", default="S")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--kinds", default="implicit-cosine,ours,ours-sparse,ours-dask-sparse,als",
                    help="builds to run (implicit-cosine is always run: it is the baseline)")
    ap.add_argument("--matrix-cache", help="folder to keep the tier's matrix in and reuse (datagen is slow at M/L)")
    a = ap.parse_args()
    kinds = ["implicit-cosine", *[k for k in a.kinds.split(",") if k and k != "implicit-cosine"]]
    from pipeline.datagen import DEFAULT_DAYS, build_shop, tier_sizes
    from pipeline.recall.audit import DEFAULT_HALF_LIFE, DEFAULT_WEIGHTS
    from pipeline.recall.matrix import build_interactions

    t0 = time.perf_counter()
    cached = Path(a.matrix_cache) / f"recall-{a.tier.upper()}-{a.seed}.npz" if a.matrix_cache else None
    if cached is not None and cached.exists():
        X = sp.load_npz(cached).tocsr()
        how = f"read from {cached}"
    else:
        users, items, _ = tier_sizes(a.tier)
        frames, _ = build_shop(users, items, DEFAULT_DAYS, a.seed)
        ev = frames.events
        as_of = ev["ts"].max() + np.timedelta64(1, "s")
        X = build_interactions(ev, as_of.to_pydatetime(), weights=DEFAULT_WEIGHTS, half_life_days=DEFAULT_HALF_LIFE,
                               item_ids=np.sort(frames.items["item_id"].to_numpy())).user_items
        del frames, ev  # the children load the matrix from disk; the shop is not needed any more
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            sp.save_npz(cached, X)
        how = "built"
    print(f"tier {a.tier.upper()}: matrix {X.shape[0]:,} users x {X.shape[1]:,} items, {X.nnz:,} non-zeros "
          f"({how} in {time.perf_counter() - t0:.1f} s); k={a.k}")
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "X.npz")
        sp.save_npz(path, X)
        del X
        res = {kind: run(kind, path, a.k, a.factors) for kind in kinds}
    ref = res["implicit-cosine"]
    for kind in [k for k in kinds if k != "als"]:
        r = res[kind]
        print(f"{kind:16s} {r['seconds']:7.2f} s  peak {r['peak_mib']:7.1f} MiB   "
              f"time ratio vs implicit {r['seconds'] / ref['seconds']:.2f}  "
              f"memory ratio {r['peak_mib'] / max(ref['peak_mib'], 0.1):.2f}")
    if "als" in res:
        print(f"ALS ({a.factors} factors, 5 iterations): {res['als']['per_iteration_s']:.3f} s per iteration "
              f"(total {res['als']['seconds']:.2f} s)")


if __name__ == "__main__":
    main()
