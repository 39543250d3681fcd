"""The two entry points the nightly run calls: the CF/ALS build and the per-shard candidate generation.

``build_recall_models`` runs once per run (task ``cf_build``): one interaction matrix from the snapshot,
item-item neighbours on the Dask workers (``snapshot/neighbours.parquet``, published as similar items),
each item's top-K "followed-by" items for the ``seq`` source (``snapshot/followers.parquet``, streamed from the
snapshot's date partitions in time order, see :class:`~pipeline.recall.sequential.FollowerBuilder`) and
ALS factors under ``<run_dir>/recall/als/``. ``run_recall_tables`` and ``load_followers`` load what every
shard reads, once per worker and version of the files (:func:`pipeline.recommend.load_artefacts`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, InputDataError
from pipeline.extract.snapshot import events_path
from pipeline.files import files_stamp, write_parquet
from pipeline.recall.factors import BM25Weights, Factors, load_factors, save_factors, train_als
from pipeline.recall.matrix import interactions_from_chunks
from pipeline.recall.neighbours import neighbours_from_interactions
from pipeline.recall.sequential import FOLLOWER_COLUMNS, FollowerBuilder, SeqParams

#: The ``seq`` source's table in a snapshot (absent: the source is off, e.g. a run that predates it).
FOLLOWERS = "followers.parquet"


def factors_dir(snapshot_dir: str | Path, model: str = "als") -> Path:
    """Where a run keeps its factors: ``<run_dir>/recall/<model>/`` next to the snapshot."""
    return Path(snapshot_dir).parent / "recall" / model


def event_chunks(snapshot_dir: str | Path, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """The snapshot's events one date partition at a time, oldest first (a snapshot written without date
    partitions comes as one chunk)."""
    cols = columns or ["event_id", "user_id", "item_id", "event_type", "ts"]
    root = events_path(snapshot_dir)
    days = sorted(p for p in root.glob("date=*") if p.is_dir())
    for part in days or ([root] if root.exists() else []):
        yield pd.read_parquet(part, columns=cols)


def build_followers(snapshot_dir: str | Path, item_ids: np.ndarray, params: SeqParams | None = None) -> dict:
    """Write ``followers.parquet`` (each catalogue item's top ``params.k`` followers) from the snapshot's
    events, streamed by date partition; ``params.k`` 0 removes the table (the ``seq`` source is off)."""
    params = params or SeqParams()
    out = Path(snapshot_dir) / FOLLOWERS
    if params.k <= 0:
        out.unlink(missing_ok=True)
        return {"follower_rows": 0}
    b = FollowerBuilder(item_ids, params)
    for chunk in event_chunks(snapshot_dir):
        b.add(chunk)
    table = b.table()
    write_parquet(table, out)
    return {"follower_rows": len(table), "items_with_followers": int(table["item_id"].nunique()),
            "follower_events": b.events, "follower_pairs": int(b.counts.nnz)}


def build_recall_models(snapshot_dir: str | Path, as_of: datetime, client: object, *, weights: dict[str, float],
                        half_life_days: dict[str, float], k: int = 20, factors: int = 64, seed: int = 42,
                        regularization: float = 20.0, alpha: float = 3.0, iterations: int = 15,
                        method: str = "cosine", block_size: int | None = None, algorithm: str | None = None,
                        weighting: str = "none", decay_from: str = "as_of", seq_k: int | None = None) -> dict:
    """Write ``neighbours.parquet`` (item-CF on Dask), ``followers.parquet`` (``seq_k`` followers per item, the
    settings' ``seq_neighbours`` when None; 0: none) and the ALS factors of the run; return counts/seconds.

    ``weighting="bm25"`` trains ALS on :class:`~pipeline.recall.factors.BM25Weights` of the interaction
    weights, saved with the factors so a fold-in weights a new history alike."""
    if weighting not in ("none", "bm25"):
        raise ConfigError(f"unknown ALS weighting {weighting!r}", "RERANK_ALS_WEIGHTING: one of none, bm25")
    snap = Path(snapshot_dir)
    if not (snap / "items.parquet").exists():
        raise InputDataError(f"no snapshot at {snap}", "run the extract stage for this run first")
    t0 = time.perf_counter()
    items = pd.read_parquet(snap / "items.parquet", columns=["item_id"])
    # the events one date partition at a time: the client's memory follows the matrix, not the events
    inter = interactions_from_chunks(
        lambda: event_chunks(snap, ["event_id", "user_id", "item_id", "event_type", "ts"]), as_of,
        weights=weights, half_life_days=half_life_days, decay_from=decay_from,
        item_ids=np.sort(items["item_id"].to_numpy()))
    t1 = time.perf_counter()
    if algorithm is None:
        from pipeline.settings import get_settings

        algorithm = get_settings().itemcf_algorithm
    nb = neighbours_from_interactions(inter, k=k, method=method, client=client, block_size=block_size,
                                      algorithm=algorithm)
    write_parquet(nb, snap / "neighbours.parquet")
    t2 = time.perf_counter()
    out = {"users": len(inter.user_ids), "items": len(inter.item_ids), "nnz": int(inter.user_items.nnz),
           "neighbour_rows": len(nb), "items_with_neighbours": int(nb["item_id"].nunique()),
           "matrix_seconds": round(t1 - t0, 3), "itemcf_seconds": round(t2 - t1, 3)}
    if seq_k is None:
        from pipeline.settings import get_settings

        seq_k = get_settings().seq_neighbours
    out.update(build_followers(snap, inter.item_ids, SeqParams(k=seq_k)))
    t3 = time.perf_counter()
    out["seq_seconds"] = round(t3 - t2, 3)
    t2 = t3  # ALS is timed from here
    if inter.user_items.nnz:
        bm25, matrix = BM25Weights.fit_transform(inter.user_items) if weighting == "bm25" else (None, inter.user_items)
        uf, itf, meta = train_als(matrix, factors=factors, regularization=regularization, alpha=alpha,
                                  iterations=iterations, seed=seed, use_gpu=None)
        d = save_factors(factors_dir(snap), Factors(uf, itf, inter.user_ids, inter.item_ids,
                                                    {**meta, "as_of": as_of.isoformat()}, weighting=bm25))
        out.update({"als_dir": str(d), "als_seconds": round(time.perf_counter() - t2, 3)})
    return out


def _stamp(snap: str) -> tuple:
    """(path, mtime_ns, size) of every file :func:`run_recall_tables` reads: a re-run of a stage for the same
    run (the run id is the date) rewrites them, and a long-lived worker must not keep serving the first
    attempt's copy."""
    p = Path(snap)
    files = [p / f for f in ("items.parquet", "item_features.parquet", "neighbours.parquet", FOLLOWERS)]
    files += [factors_dir(p) / f for f in ("user_factors.npy", "item_factors.npy", "user_ids.npy", "item_ids.npy")]
    return files_stamp(files)


def run_recall_tables(snap: str) -> tuple[pd.DataFrame, pd.DataFrame, Factors | None]:
    """What every shard of a run reads (item features with titles, neighbours, factors): once per worker
    and version of the files."""
    return _shared_cached(snap, _stamp(snap))


@lru_cache(maxsize=2)
def _shared_cached(snap: str, stamp: tuple) -> tuple[pd.DataFrame, pd.DataFrame, Factors | None]:
    p = Path(snap)
    items = pd.read_parquet(p / "items.parquet")
    if (p / "item_features.parquet").exists():
        feats = pd.read_parquet(p / "item_features.parquet")
        if "title" not in feats.columns:
            feats = feats.merge(items[["item_id", "title"]], on="item_id", how="left")
    else:  # the features stage has not run (a partial re-run): no activity, the catalogue still recalls
        from pipeline.features.items import top_category

        feats = items.assign(activity=0.0, events=0, recent_events=0, trend=0.0,
                             top_category=top_category(items["category"]))
    nb = (pd.read_parquet(p / "neighbours.parquet", columns=["item_id", "similar_item_id", "score"])
          if (p / "neighbours.parquet").exists() else
          pd.DataFrame({"item_id": [], "similar_item_id": [], "score": []}))
    fdir = factors_dir(p)
    fac = load_factors(fdir) if (fdir / "item_factors.npy").exists() else None
    return feats, nb, fac


def release_tables() -> None:
    """Drop the run tables and followers this process holds (a worker after its run's scoring stage)."""
    _shared_cached.cache_clear()
    _followers_cached.cache_clear()


def load_followers(snap: str | Path) -> pd.DataFrame | None:
    """The run's ``followers.parquet`` (once per worker and version of the snapshot's files); None when the
    run has none (the ``seq`` source is off)."""
    snap = str(Path(snap).resolve())
    return _followers_cached(snap, _stamp(snap))


@lru_cache(maxsize=2)
def _followers_cached(snap: str, stamp: tuple) -> pd.DataFrame | None:
    f = Path(snap) / FOLLOWERS
    return pd.read_parquet(f, columns=FOLLOWER_COLUMNS[:3]) if f.exists() else None
