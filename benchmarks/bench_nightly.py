"""The whole nightly run at a tier's size: wall time per stage, the peak summed RSS of the run's process tree
(client, scheduler, workers; Postgres apart), and the physical limits measured in the same run.

    .venv/bin/python benchmarks/bench_nightly.py --tier S
    .venv/bin/python benchmarks/bench_nightly.py --tier M --shard-users 5000 --workers 2
    .venv/bin/python benchmarks/bench_nightly.py --tier S --dask-address tcp://127.0.0.1:8786   # scale-out

Without ``--url`` a throwaway embedded PostgreSQL is started under a temp folder (and removed). Limits beside
the stages, on the run's own lists and candidates:

- publish: rows/s of the streamed publication against a raw ``COPY`` of the same rows (same CSV writer);
- scoring: one shard end to end (recall, features, ranker, re-rank) against the ranker's bare forward passes on
  the same candidate tensors, and the share of that shard's time spent in Python outside torch, implicit and
  Postgres (cProfile, by the module of each function).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

AS_OF = datetime(2026, 11, 24, tzinfo=UTC)


class PeakRss:
    """Samples the summed RSS of this process and all its descendants; keeps the peak per named phase."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.phase, self.peaks, self._stop = every, "setup", {}, threading.Event()
        #: the largest single child process (a Dask worker, against its memory limit) per phase
        self.child_peaks: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[int, int]:
        me = psutil.Process()
        total = largest = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                if p.name().startswith("postgres"):
                    continue
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            if p.pid != me.pid:
                largest = max(largest, rss)
        return total, largest

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, child = self._sample()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
            self.child_peaks[self.phase] = max(self.child_peaks.get(self.phase, 0), child)
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _server(url: str | None) -> tuple[str, object | None, Path | None]:
    if url:
        return url, None, None
    from pipeline.db.embedded import EmbeddedPostgres

    root = Path(tempfile.mkdtemp(prefix="rerank-bench-nightly-"))
    pg = EmbeddedPostgres(root / "pg")
    return pg.up(), pg, root


def _raw_copy_ratio(url: str, run_dir: Path, publish_seconds: float, publish_out: dict | None = None) -> dict:
    """A raw COPY of the run's rows (pyarrow CSV, as the publish builds it) into a plain table created in the
    same transaction and rolled back: the publish writes a durable table, so the limit is one too (a TEMP
    table skips the WAL and shared buffers: its figure stands beside, as ``raw_copy_temp_s``)."""
    import pandas as pd

    from pipeline.db.copy import copy_frame
    from pipeline.db.engine import connect
    from pipeline.publish.parts import rec_parts
    from pipeline.publish.swap import RECS_COLUMNS

    seconds, rows = {}, 0
    for kind, create in (("plain", "CREATE TABLE public.bench_raw (LIKE recsys.recs_bootstrap)"),
                         ("temp", "CREATE TEMP TABLE bench_raw (LIKE recsys.recs_bootstrap)")):
        rows = 0
        with connect(url) as conn, conn.cursor() as cur:
            cur.execute(create)
            table = "public.bench_raw" if kind == "plain" else "bench_raw"
            t0 = time.perf_counter()
            for part in rec_parts(run_dir):
                rows += copy_frame(cur, table, pd.read_parquet(part)[RECS_COLUMNS], RECS_COLUMNS)
            seconds[kind] = time.perf_counter() - t0
            conn.rollback()
    raw = seconds["plain"]
    copy_s = (publish_out or {}).get("copy_s")
    return {"rows": rows, "raw_copy_s": round(raw, 2), "raw_copy_temp_s": round(seconds["temp"], 2),
            "publish_s": round(publish_seconds, 2),
            "publish_vs_raw_copy": round(raw / publish_seconds, 3) if publish_seconds else None,
            # the publish's own COPY (its index build, ANALYZE, neighbours and swap apart)
            "publish_copy_s": copy_s, "publish_copy_vs_raw_copy": round(raw / copy_s, 3) if copy_s else None}


_OUTSIDE = ("torch", "implicit", "psycopg2", "sqlalchemy")


def _shard_limits(home: Path, run_id: str, settings: object) -> dict:
    """Shard 0 end to end (artefacts already loaded, as on a worker's later shards) against the ranker's bare
    forward passes on the same tensors, in wall and CPU time; then a profiled pass of the same shard for the
    share of time outside torch, implicit and Postgres."""
    import numpy as np
    import pandas as pd

    from pipeline.extract.shards import plan_shards, read_shard_events, shard_users
    from pipeline.nightly import recommend_shard
    from pipeline.rank.score import load_model

    d = home / "runs" / run_id
    snap = d / "snapshot"
    users = pd.read_parquet(snap / "users.parquet", columns=["user_id"])["user_id"].to_numpy()
    bounds = plan_shards(users, settings.shard_users)
    mine = shard_users(users, bounds, 0)
    events = read_shard_events(snap, 0)
    chosen = json.loads((d / "model.json").read_text())
    forward = {"s": 0.0, "cpu": 0.0, "calls": 0}
    if chosen.get("artifact_uri"):
        net = load_model(chosen["artifact_uri"])._require()[1]
        plain = net.forward

        def timed(*a: object, **kw: object) -> object:
            t, c = time.perf_counter(), time.process_time()
            out = plain(*a, **kw)
            forward["s"] += time.perf_counter() - t
            forward["cpu"] += time.process_time() - c
            forward["calls"] += 1
            return out

        net.forward = timed
    kw = {"top_n": settings.top_n, "n_candidates": settings.candidates, "recent_days": settings.recent_days,
          "weights": dict(settings.event_weights), "half_life": dict(settings.half_life_days),
          "artifact_uri": chosen.get("artifact_uri"), "rerank": dict(settings.rerank),
          "variants": dict(settings.variants), "salt": settings.variant_salt}
    # warm: the run's artefacts load once per worker process, not per shard (a worker scores many shards)
    few = mine[:50]
    recommend_shard(few, events[events["user_id"].isin(few)], snap, AS_OF, **kw)
    forward.update(s=0.0, cpu=0.0, calls=0)
    t0, c0 = time.perf_counter(), time.process_time()
    lists, _ = recommend_shard(mine, events, snap, AS_OF, **kw)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    fw = dict(forward)  # the timed pass's forward calls only (the closure keeps counting into ``forward``)
    # a second, profiled pass only for the share of time outside torch, implicit and Postgres
    prof = cProfile.Profile()
    prof.enable()
    recommend_shard(mine, events, snap, AS_OF, **kw)
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    outside = sum(v[2] for k, v in stats.stats.items()  # type: ignore[attr-defined]
                  if any(m in f"{k[0]} {k[2]}" for m in _OUTSIDE))
    profiled = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    return {"shard_users": int(len(mine)), "shard_rows": int(len(lists)), "shard_s": round(total, 2),
            "bare_forward_s": round(fw["s"], 3), "forward_calls": fw["calls"],
            "forward_vs_end_to_end": round(fw["s"] / total, 3) if total else None,
            # CPU seconds of this process (all threads): other processes' load barely moves this ratio
            "shard_cpu_s": round(cpu, 2), "bare_forward_cpu_s": round(fw["cpu"], 3),
            "forward_vs_end_to_end_cpu": round(fw["cpu"] / cpu, 3) if cpu else None,
            "python_outside_torch_implicit_postgres": round(1 - outside / profiled, 3) if profiled else None,
            "users_per_s": round(len(mine) / total, 1) if total else None,
            "mean_events_per_user": float(np.round(len(events) / max(len(mine), 1), 1))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tier", choices=["S", "M", "L"], default="S")
    ap.add_argument("--users", type=int)
    ap.add_argument("--items", type=int)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--url", help="an existing database (migrated); default: a throwaway embedded server")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster workers (without --dask-address)")
    ap.add_argument("--dask-address", help="an external Dask scheduler, e.g. tcp://127.0.0.1:8786")
    ap.add_argument("--shard-users", type=int, default=2000)
    ap.add_argument("--skip-generate", action="store_true", help="the database already holds the shop")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here too")
    ap.add_argument("--keep-home", action="store_true", help="keep RERANK_HOME (the run's files) and print it")
    ap.add_argument("--embedding-method", choices=["multilingual", "tfidf", "auto"],
                    help="item text vectors (default: the settings' default, what users run)")
    ap.add_argument("--no-images", action="store_true", help="generate no pictures (default: one per item, as "
                    "`rerank generate` does)")
    args = ap.parse_args()

    from pipeline.datagen import generate_shop, tier_sizes
    from pipeline.db.migrate import upgrade
    from pipeline.nightly import STAGES, run_nightly
    from pipeline.settings import load_settings

    users_t, items_t, events_t = tier_sizes(args.tier)
    users, items = args.users or users_t, args.items or items_t
    work = Path(tempfile.mkdtemp(prefix="rerank-bench-home-"))
    url, pg, root = _server(args.url)
    figures: dict = {"tier": args.tier, "users": users, "items": items, "cores": os.cpu_count(),
                     "embedding_method": args.embedding_method or "default", "images": not args.no_images,
                     "workers": args.workers if not args.dask_address else args.dask_address,
                     "shard_users": args.shard_users}
    try:
        with PeakRss() as rss:
            upgrade(url)
            if not args.skip_generate:
                rss.phase = "generate"
                t0 = time.perf_counter()
                images = None if args.no_images else str(work / "images")
                stats = generate_shop(url, users=users, items=items, days=args.days, seed=42, end=AS_OF,
                                      events_per_user=events_t / users_t, images_dir=images)
                figures["events"] = stats.events
                figures["generate_s"] = round(time.perf_counter() - t0, 1)
            s = load_settings(database_url=url, home=str(work), dask_workers=args.workers,
                              dask_address=args.dask_address, shard_users=args.shard_users,
                              **({"embedding_method": args.embedding_method} if args.embedding_method else {}))
            stage_s: dict[str, float] = {}
            order = list(STAGES)
            rss.phase = order[0]

            def on_stage(name: str, out: dict, secs: float) -> None:
                stage_s[name] = round(secs, 1)
                # a line per stage as it ends: a run that fails later keeps its figures so far
                print(json.dumps({"stage": name, "seconds": stage_s[name],
                                  "peak_rss_gib": round(rss.peaks.get(name, 0) / 2**30, 2),
                                  "largest_child_rss_gib": round(rss.child_peaks.get(name, 0) / 2**30, 2),
                                  **({"workers_lost": out["workers_lost"]} if "workers_lost" in out else {})}),
                      file=sys.stderr, flush=True)
                nxt = order.index(name) + 1
                rss.phase = order[nxt] if nxt < len(order) else "after"

            t0 = time.perf_counter()
            res = run_nightly(s, as_of=AS_OF, on_stage=on_stage)
            figures["nightly_s"] = round(time.perf_counter() - t0, 1)
            rss.phase = "limits"
            figures["stages_s"] = stage_s
            figures["published_rows"] = res["score_users"]["rows"]
            figures["shards"] = res["score_users"]["shards"]
            figures["publish_limit"] = _raw_copy_ratio(url, work / "runs" / res["run_id"], stage_s["publish"],
                                                       res.get("publish"))
            figures["score_limit"] = _shard_limits(work, res["run_id"], s)
        figures["peak_rss_gib"] = {k: round(v / 2**30, 2) for k, v in rss.peaks.items()}
        figures["largest_child_rss_gib"] = {k: round(v / 2**30, 2) for k, v in rss.child_peaks.items()}
        run_peak = max(v for k, v in rss.peaks.items() if k in STAGES)
        figures["peak_rss_nightly_gib"] = round(run_peak / 2**30, 2)
        n_users = users
        figures["nightly_ms_per_user"] = round(1000 * figures["nightly_s"] / n_users, 3)
    finally:
        if args.keep_home:
            print(f"RERANK_HOME kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        if pg is not None:
            pg.down()
            shutil.rmtree(root, ignore_errors=True)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
