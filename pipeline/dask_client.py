"""The Dask client handed to every parallel stage: an existing cluster by address, else a LocalCluster."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.settings import Settings, get_settings


@contextmanager
def dask_client(settings: Settings | None = None, *, address: str | None = None,
                workers: int | None = None) -> Iterator[object]:
    """Yield a ``distributed.Client``; a LocalCluster is closed on exit, an external one is left running."""
    from distributed import Client, LocalCluster

    settings = settings or get_settings()
    address = address or settings.dask_address
    if address:
        client = Client(address, timeout="30s")
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(n_workers=workers or settings.dask_workers, threads_per_worker=1, processes=True,
                           # ":0": a free port for the HTTP server (None still binds 8787, and warns when taken)
                           dashboard_address=":0", memory_limit=settings.worker_memory, silence_logs=40)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
