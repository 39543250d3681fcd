"""Batch scoring helpers for the shard function: load the champion once per process, size torch's threads.

A Dask worker runs ``nthreads`` tasks at once; if each task also let torch use every core, 2 workers x 2
threads x 2 intra-op threads would fight over 2 cores. :func:`scoring_threads` gives each task its share
(honouring ``OMP_NUM_THREADS``, which Dask's nanny sets to 1 for its workers).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import torch

from pipeline.rank.model import SIDECAR_FILE, WEIGHTS_FILE, RankerModel

log = logging.getLogger(__name__)
_CACHE: dict[tuple[str, float], RankerModel] = {}
_LOCK = threading.Lock()


def scoring_threads() -> int:
    """Intra-op threads for one scoring task: ``OMP_NUM_THREADS`` if set, else cores / concurrent tasks."""
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    tasks = 1
    try:
        from distributed import get_worker

        tasks = max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        pass  # not inside a Dask worker
    return max(1, cores // tasks)


def load_model(artifact_uri: str | Path, *, threads: int | None = None) -> RankerModel:
    """The model saved at ``artifact_uri``, cached per process (keyed by path and file time), CPU."""
    p = Path(artifact_uri)
    key = (str(p.resolve()), max((p / f).stat().st_mtime for f in (WEIGHTS_FILE, SIDECAR_FILE)))
    with _LOCK:
        model = _CACHE.get(key)
        if model is None:
            model = RankerModel.load(p)
            _CACHE.clear()  # one model per process: the champion of this run
            _CACHE[key] = model
    n = threads or scoring_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return model


def release_models() -> None:
    """Forget the model :func:`load_model` keeps for this process."""
    with _LOCK:
        _CACHE.clear()


def load_champion(url: str) -> RankerModel | None:
    """The champion model from ``recsys.models`` (None when there is none, or its files are gone)."""
    from pipeline.rank.registry import champion

    row = champion(url)
    if row is None:
        return None
    p = Path(row["artifact_uri"])
    if not (p / WEIGHTS_FILE).exists():
        log.warning("champion %s has no files at %s; scoring falls back to recall only", row["model_version"], p)
        return None
    model = load_model(p)
    model.version = row["model_version"]
    return model
