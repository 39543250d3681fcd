"""Benchmark the synthetic shop: build rate, and load_shop's events COPY against a raw COPY of the same rows.

    python benchmarks/bench_generate.py [--tier S|M|L] [--url postgresql://...] [--seed N] [--days D]

Prints the generator's events/s at the tier, then loads the shop with ``load_shop`` (timing its steps on
the events table) and copies the very CSV bytes that ``load_shop`` sent for the events, with
``cursor.copy_expert``, into a scratch table made ``LIKE shop.events INCLUDING ALL`` (same columns, same
indexes). Both run in the same transaction, which is rolled back at the end: the database is left as it was.
Without ``--url`` the embedded server (``RERANK_HOME``) is started and used.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline.db.copy as copy_mod  # noqa: E402 - after the path fix, for running from a checkout
import pipeline.db.shop as shop_mod  # noqa: E402
from pipeline.datagen import DEFAULT_DAYS, build_shop, tier_sizes  # noqa: E402
from pipeline.db.engine import connect, database_url  # noqa: E402


class Probe:
    """Times the steps of ``load_shop`` per table and keeps the events CSV bytes."""

    def __init__(self) -> None:
        self.table: str | None = None
        self.seconds: dict[tuple[str, str], float] = {}
        self.events_csv: bytes = b""

    def _add(self, table: str, step: str, dt: float) -> None:
        self.seconds[(table, step)] = self.seconds.get((table, step), 0.0) + dt

    def install(self) -> Callable[[], None]:
        """Wrap the functions load_shop calls; returns the undo."""
        orig_prepare, orig_copy_frame = shop_mod._prepare, shop_mod.copy_frame
        orig_to_csv = copy_mod.frame_to_csv
        probe = self

        def prepare(df, columns):  # noqa: ANN001, ANN202 - same signature as the wrapped function
            t = time.perf_counter()
            out = orig_prepare(df, columns)
            table = {"event_id": "events", "item_id": "items", "user_id": "users"}[columns[0]]
            probe._add(table, "prepare", time.perf_counter() - t)
            return out

        def copy_frame(cur, table, df, columns=None):  # noqa: ANN001, ANN202
            probe.table = str(table).split(".")[-1]
            t = time.perf_counter()
            n = orig_copy_frame(cur, table, df, columns)
            probe._add(probe.table, "copy_frame", time.perf_counter() - t)
            return n

        def to_csv(df):  # noqa: ANN001, ANN202
            t = time.perf_counter()
            buf = orig_to_csv(df)
            probe._add(probe.table or "?", "csv", time.perf_counter() - t)
            if probe.table == "events":
                probe.events_csv = buf.getvalue()
            return buf

        shop_mod._prepare, shop_mod.copy_frame, copy_mod.frame_to_csv = prepare, copy_frame, to_csv

        def undo() -> None:
            shop_mod._prepare, shop_mod.copy_frame = orig_prepare, orig_copy_frame
            copy_mod.frame_to_csv = orig_to_csv

        return undo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", default="M", help="S, M or L (default M)")
    parser.add_argument("--url", default=None, help="libpq URI; default: the embedded server")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS)
    args = parser.parse_args(argv)

    users, items, target = tier_sizes(args.tier)
    print(f"tier {args.tier.upper()}: {users:,} users, {items:,} items, target {target:,} events, "
          f"{args.days} days, seed {args.seed}")
    t = time.perf_counter()
    frames, tastes = build_shop(users, items, args.days, args.seed)
    build_s = time.perf_counter() - t
    n_events = len(frames.events)
    print(f"build: {n_events:,} events (+ {len(frames.users):,} users, {len(frames.items):,} items, "
          f"{len(tastes):,} taste rows) in {build_s:.2f} s = {n_events / build_s:,.0f} events/s")

    url = args.url or database_url()
    from pipeline.db import migrate

    migrate.upgrade(url)  # idempotent: a fresh RERANK_HOME has no schema yet
    probe = Probe()
    undo = probe.install()
    with connect(url) as conn, conn.cursor() as cur:
        try:
            t = time.perf_counter()
            shop_mod.load_shop(cur, frames, replace=True)
            load_s = time.perf_counter() - t
        finally:
            undo()
        # the same CSV bytes into an identical table (columns, PK and indexes), same transaction
        cur.execute("CREATE TABLE shop.bench_raw_events (LIKE shop.events INCLUDING ALL)")
        raw = probe.events_csv
        buf = io.BytesIO(raw)
        t = time.perf_counter()
        cur.copy_expert("COPY shop.bench_raw_events FROM STDIN WITH (FORMAT csv)", buf)
        raw_s = time.perf_counter() - t
        cur.execute("SELECT count(*) FROM shop.bench_raw_events")
        if cur.fetchone()[0] != n_events:
            raise SystemExit("raw COPY row count differs from the generated events")
        conn.rollback()  # leave the database as it was

    s = probe.seconds
    ev_prepare, ev_csv = s[("events", "prepare")], s[("events", "csv")]
    ev_total = ev_prepare + s[("events", "copy_frame")]
    ev_copy = s[("events", "copy_frame")] - ev_csv
    per_table = {k: s[(k, "prepare")] + s[(k, "copy_frame")] for k in ("users", "items")}
    print(f"load_shop: {load_s:.2f} s in all (users {per_table['users']:.2f} s, "
          f"items {per_table['items']:.2f} s, events {ev_total:.2f} s, rest = TRUNCATE + ANALYZE)")
    print(f"  events: prepare {ev_prepare:.2f} s, CSV {ev_csv:.2f} s, COPY {ev_copy:.2f} s "
          f"({len(raw) / 1e6:,.0f} MB CSV)")
    print(f"raw COPY of the same CSV bytes into an identical scratch table: {raw_s:.2f} s "
          f"= {n_events / raw_s:,.0f} rows/s")
    print(f"load rate (load_shop events, frame -> rows): {n_events / ev_total:,.0f} rows/s "
          f"= {raw_s / ev_total:.2f}x raw COPY")
    print(f"COPY statement alone inside load_shop: {n_events / ev_copy:,.0f} rows/s "
          f"= {raw_s / ev_copy:.2f}x raw COPY")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
