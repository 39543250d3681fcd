"""``rerank refresh --follow``: drain, then sleep until shop.events notifies (or the poll interval passes).

Two connections: one LISTENs (autocommit, never in a transaction), one does the batches. The trigger of
migration 0004 notifies once per INSERT statement at commit, so a wake-up always finds its rows; without the
trigger (a shop that maps events through a view) the poll interval is the freshness bound. SIGTERM / SIGINT
(or the ``stop`` event, for tests and embedding) end the loop after the batch in flight has committed.
"""

from __future__ import annotations

import logging
import select
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2

from pipeline.db.engine import connect
from pipeline.errors import DatabaseError
from pipeline.recommend import RecommendConfig
from pipeline.refresh.core import DEFAULT_BATCH_SIZE, DEFAULT_LOCK_KEY, Hook, clean_overlay, default_config, drain

CHANNEL = "rerank_events"
log = logging.getLogger(__name__)
#: How long to wait before re-reading when a batch was held back behind a transaction still writing events.
HELD_BACK_RETRY_S = 0.02
_SLICE_S = 0.25  # longest single wait, so a stop request is seen quickly
#: Reconnect backoff after a lost connection: doubles from the first to the cap, back to the first once a
#: connection works again.
RECONNECT_FIRST_S = 0.2
RECONNECT_CAP_S = 10.0


def _wait(listen_conn, seconds: float, stop: threading.Event) -> bool:
    """Sleep until a notification, ``seconds`` or ``stop``; True when notified."""
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        listen_conn.poll()
        if listen_conn.notifies:
            listen_conn.notifies.clear()
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        select.select([listen_conn], [], [], min(left, _SLICE_S))
    return False


def follow(url: str | Callable[[], str], home: str | Path, *, poll_seconds: float = 5.0, name: str = "default",
           batch_size: int = DEFAULT_BATCH_SIZE, lock_key: int = DEFAULT_LOCK_KEY, cfg: RecommendConfig | None = None,
           stop: threading.Event | None = None, on_drain: Callable[[dict], None] | None = None,
           hook: Hook | None = None) -> dict:
    """Refresh continuously until stopped; return the totals.

    Any lost or refused connection (a database restart, a failover) is retried with capped exponential
    backoff; ``url`` may be a function, asked again before each reconnect (the embedded server's URL, which a
    restart may change). After reconnecting it LISTENs again and catches up from the watermark.
    """
    stop = stop or threading.Event()
    cfg = cfg or default_config()
    resolve = url if callable(url) else (lambda: url)
    restore = _install_signals(stop)
    totals = {"drains": 0, "batches": 0, "events": 0, "users": 0, "rows": 0, "wakeups": 0, "polls": 0,
              "reconnects": 0}
    backoff = RECONNECT_FIRST_S
    try:
        while not stop.is_set():
            drains = totals["drains"]
            try:
                _loop(resolve(), home, poll_seconds, name, batch_size, lock_key, cfg, stop, on_drain, hook, totals)
            except (psycopg2.OperationalError, psycopg2.InterfaceError, DatabaseError) as exc:
                if stop.is_set():
                    break
                if totals["drains"] > drains:  # it had worked: start the backoff afresh
                    backoff = RECONNECT_FIRST_S
                totals["reconnects"] += 1
                log.warning("refresh connection lost (%s); reconnecting in %.1f s", str(exc).strip(), backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_CAP_S)
    finally:
        restore()
    return totals


def _loop(url: str, home: str | Path, poll_seconds: float, name: str, batch_size: int, lock_key: int,
          cfg: RecommendConfig, stop: threading.Event, on_drain: Callable[[dict], None] | None, hook: Hook | None,
          totals: dict) -> None:
    with connect(url, autocommit=True) as listen_conn, connect(url) as work:
        with listen_conn.cursor() as cur:
            cur.execute(f"LISTEN {CHANNEL}")
        last_pub = None
        while not stop.is_set():
            res = drain(work, url, home, name=name, batch_size=batch_size, lock_key=lock_key, cfg=cfg, hook=hook)
            totals["drains"] += 1
            for k in ("batches", "events", "users", "rows"):
                totals[k] += res[k]
            if on_drain is not None:
                on_drain(res)
            pub = _live_pub_id(work)
            if pub != last_pub:  # a nightly run published: drop the overlay rows it made obsolete
                clean_overlay(work)
                last_pub = pub
            if res["held_back"]:
                stop.wait(HELD_BACK_RETRY_S)
                continue
            wait = poll_seconds if res["status"] in ("ok", "empty") else min(poll_seconds, 1.0)
            if _wait(listen_conn, wait, stop):
                totals["wakeups"] += 1
            elif not stop.is_set():
                totals["polls"] += 1


def _live_pub_id(conn) -> int | None:
    with conn.cursor() as cur:
        cur.execute("SELECT publication_id FROM recsys.publications WHERE live")
        row = cur.fetchone()
    conn.commit()
    return row[0] if row else None


def _install_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM / SIGINT set ``stop`` (main thread only; elsewhere the caller owns signals)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
