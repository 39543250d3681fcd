"""Benchmark extraction and the feature stages.

    python benchmarks/bench_extract.py [--tier S|M] [--url postgresql://...] [--seed N] [--skip-generate]
                                       [--skip-features]

1. Generates the tier's shop (unless ``--skip-generate`` and the shop is already there).
2. Raw baseline: ``COPY (SELECT <the same columns> FROM shop.events WHERE <clean>) TO STDOUT`` into a
   discarding sink, in this process: the rows a full extraction reads, at the server's own export speed.
   Measured before and again after the extractions (the machine may be shared: both are printed).
3. ``extract_snapshot(full=True)`` on a LocalCluster with 2 workers (Postgres COPY csv -> pyarrow -> Parquet
   date partitions in a temporary store); events/s and the ratio to the raw COPY of the same run (goal
   >= 0.7), cold and warm; then an incremental run with nothing new (the nightly case when idle).
4. Item + user feature stages with 1 and with 2 workers: wall time of each, and peak RSS of the workers
   and of this process.

Without ``--url`` the embedded server under RERANK_HOME is used. Figures only, never asserted.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.datagen import DEFAULT_DAYS, DEFAULT_END, generate_shop, tier_sizes  # noqa: E402
from pipeline.db.engine import connect, database_url  # noqa: E402
from pipeline.frames import EVENT_COLUMNS  # noqa: E402
from pipeline.validate.sqlchecks import clean_events_predicate, proven_unique  # noqa: E402


class Sink:
    """A file-like object that counts and drops what COPY writes."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.bytes += len(data)
        return len(data)


def raw_copy(url: str) -> tuple[int, float, int]:
    """Rows, seconds and bytes of a raw COPY TO STDOUT of the rows extraction reads."""
    with connect(url) as conn, conn.cursor() as cur:
        clean = clean_events_predicate(unique_proven=proven_unique(cur, "shop.events", "event_id"),
                                       items_unique_proven=proven_unique(cur, "shop.items", "item_id"))
        cols = ", ".join(EVENT_COLUMNS)
        sink = Sink()
        t = time.perf_counter()
        cur.copy_expert(f"COPY (SELECT {cols} FROM shop.events WHERE {clean}) TO STDOUT", sink)
        secs = time.perf_counter() - t
        rows = cur.rowcount
    return rows, secs, sink.bytes


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def features(snap: Path, as_of: datetime, workers: int) -> tuple[float, float]:
    """Wall seconds of item + user features on ``workers`` workers; peak RSS (MB) of the largest worker."""
    from distributed import Client, LocalCluster

    from pipeline.features import build_item_features, build_user_features
    from pipeline.settings import load_settings

    s = load_settings()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      memory_limit="6GiB", silence_logs=40) as lc, Client(lc) as client:
        client.run(lambda: __import__("pipeline.features.users"))  # warm imports outside the timing
        t = time.perf_counter()
        build_item_features(snap, as_of, client, weights=s.event_weights, half_life_days=s.half_life_days)
        build_user_features(snap, as_of, client, weights=s.event_weights, half_life_days=s.half_life_days)
        secs = time.perf_counter() - t
        peaks = client.run(_peak_mb)
    return secs, max(peaks.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tier", default="S")
    ap.add_argument("--url")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--skip-features", action="store_true", help="extraction figures only")
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    from pipeline.db import migrate
    from pipeline.extract import extract_snapshot

    url = args.url or database_url()
    migrate.upgrade(url)
    users, items, target = tier_sizes(args.tier)
    if not args.skip_generate:
        t = time.perf_counter()
        g = generate_shop(url, users=users, items=items, days=DEFAULT_DAYS, seed=args.seed, end=DEFAULT_END)
        print(f"generated tier {args.tier}: {g.events} events in {time.perf_counter() - t:.1f} s")
    as_of = datetime.combine(DEFAULT_END.date(), datetime.min.time(), tzinfo=UTC)

    rows, raw_s, raw_bytes = raw_copy(url)
    print(f"raw COPY TO STDOUT: {rows} rows in {raw_s:.2f} s = {rows / raw_s:,.0f} rows/s ({raw_bytes / 1e6:.0f} MB)")
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        snap = Path(tmp) / "snapshot"
        store = str(Path(tmp) / "store")
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                          memory_limit="6GiB", silence_logs=40) as lc, Client(lc) as client:
            client.run(lambda: __import__("pipeline.extract.snapshot"))
            for label in ("cold (first call: connections, imports)", "warm"):
                t = time.perf_counter()
                counts = extract_snapshot(url, snap, as_of, client, store_url=store, full=True)
                ext_s = time.perf_counter() - t
                n = counts["events_read"]
                print(f"extract_snapshot full, 2 workers, {label}: {n} events in {ext_s:.2f} s = {n / ext_s:,.0f} "
                      f"events/s; ratio to raw COPY {(n / ext_s) / (rows / raw_s):.2f} (goal >= 0.7)")
            rows2, raw2_s, _ = raw_copy(url)
            print(f"raw COPY again after extraction: {rows2 / raw2_s:,.0f} rows/s; ratio of the warm extraction "
                  f"to it {(n / ext_s) / (rows2 / raw2_s):.2f}; to the mean of both baselines "
                  f"{(n / ext_s) / ((rows / raw_s + rows2 / raw2_s) / 2):.2f}")
            t = time.perf_counter()
            inc = extract_snapshot(url, Path(tmp) / "next" / "snapshot", as_of, client, store_url=store)
            print(f"incremental run with no new events: mode {inc['mode']}, read {inc['events_read']}, view "
                  f"{inc['events']} events in {time.perf_counter() - t:.2f} s")
            ext_peak = max(client.run(_peak_mb).values())
        print(f"extraction peak worker RSS {ext_peak:,.0f} MB")
        if args.skip_features:
            return
        one_s, one_mb = features(snap, as_of, 1)
        two_s, two_mb = features(snap, as_of, 2)
        print(f"item + user features: 1 worker {one_s:.2f} s (peak worker RSS {one_mb:,.0f} MB); 2 workers "
              f"{two_s:.2f} s (peak {two_mb:,.0f} MB); speed-up {one_s / two_s:.2f}x")
        print(f"peak RSS of this process: {_peak_mb():,.0f} MB")


if __name__ == "__main__":
    main()
