"""One refresh batch = one transaction: read events after the watermark, rebuild the touched users' lists,
replace their overlay rows, advance the watermark, log the batch, commit.

Exactly once: the overlay rows, the watermark and the ``recsys.refresh_batches`` row commit together, so a
crash anywhere before COMMIT leaves all three as they were and the rerun takes the same events again; a
crash after it finds them done. A user's list is deleted and rewritten inside that transaction, so a
reader sees the old list or the new one, never a mix.

Mutual exclusion: ``pg_try_advisory_xact_lock(lock_key)`` at the start of each batch. A second refresher
(the minutely DAG while ``--follow`` runs, or two followers) finds it taken and backs off instead of
working on the same users; the lock dies with the transaction, so a killed refresher never leaves it held.

Commit order: a batch never moves the watermark past an event id that a transaction still open may yet
commit. Ids visible in one unbroken run above the watermark are always safe. A gap (an id not visible below
one that is) is held back until it cannot be filled any more: its id was taken before the visible one, so the
transaction holding it was already writing to ``shop.events`` then (it holds the table's RowExclusiveLock
from the start of its INSERT). The batch that first meets a gap records the highest id it read and the
transactions writing to ``shop.events`` (``pg_locks``, read after the events); a later batch that finds none
of them still writing (read before its events) knows every gap below that id is for good (a rolled-back
insert, an unused id). Assumption: an event's id is taken in the statement that inserts it (a column default
``nextval(...)`` or ``nextval()`` in the INSERT); ids taken in an earlier statement are not covered. A shop
whose events come through a view (no locks to see) is trusted after a few seconds instead.

Events older than the live publication's oldest rows (``oldest_at``; its run's ``as_of`` unless a user-subset
run republished older rows) are already in its lists: they move the watermark but trigger no rebuild (this is
also how a first refresh after install skips the history the nightly run covered). A user-subset run's own
users may so get a list rebuilt from events their new nightly rows already saw: harmless, where the run's
``as_of`` as the cut-off would skip the other users' events since their older rows for good.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.db.copy import copy_frame
from pipeline.db.engine import connect
from pipeline.db.overlay import BATCH_LOG_DAYS, STALE_OVERLAY_SQL
from pipeline.errors import PipelineError
from pipeline.recommend import RecommendConfig, recommend
from pipeline.refresh.live import cached_runs_for, load_live
from pipeline.validate.sqlchecks import clean_events_predicate

#: Default advisory lock key (ASCII "RRFS"); refreshers of one database must agree on it.
DEFAULT_LOCK_KEY = 0x52524653
DEFAULT_BATCH_SIZE = 2000
OVERLAY_COLUMNS = ["user_id", "rank", "item_id", "score", "reason", "anchor_item_id", "source", "variant",
                   "model_version", "run_id", "generated_at"]
EVENT_COLUMNS = ["event_id", "user_id", "item_id", "event_type", "query", "session_id", "quantity", "ts"]
#: Points where a test hook is called (the fault test pauses at one and is SIGKILLed there).
HOOK_POINTS = ("locked", "events_read", "lists_built", "rows_written", "watermark_moved", "committed")

Hook = Callable[[str, dict], None]

def _batch_sql(events_is_table: bool) -> str:
    """The batch query, built per batch: the clean-row predicate holds the "in the future" cutoff of *now*
    (a module-level constant would freeze it at import and, a day later, skip every new event)."""
    # A table's gaps are judged by settled_count; a view has no locks to look at: rows older than a few seconds
    # are taken as committed in order.
    settled = "true" if events_is_table else "e.ts < now() - interval '5 seconds'"
    return f"""
SELECT e.event_id, e.user_id, e.item_id, e.event_type, e.query, e.session_id, e.quantity, e.ts,
       {clean_events_predicate()} AS clean,
       {settled} AS settled
  FROM shop.events e
 WHERE e.event_id > %(after)s
 ORDER BY e.event_id
 LIMIT %(limit)s
"""


#: The transactions now writing to shop.events in this database (their virtual ids, unique while they run).
_WRITERS_SQL = """
SELECT coalesce(array_agg(DISTINCT r.virtualtransaction), '{}')
  FROM pg_locks r
 WHERE r.locktype = 'relation' AND r.relation = 'shop.events'::regclass AND r.mode = 'RowExclusiveLock'
   AND r.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND r.pid <> pg_backend_pid()
"""


def _writers(cur) -> set[str]:  # noqa: ANN001 - a psycopg2 cursor
    cur.execute(_WRITERS_SQL)
    return set(cur.fetchone()[0])


def settled_count(ids: list[int], after: int, passable_below: int | None) -> int:
    """How many of ``ids`` (visible event ids above the watermark ``after``, ascending) the batch may take: up
    to the first gap that may still be filled. Gaps whose ids all lie below ``passable_below`` are for good."""
    expected = after + 1
    for i, eid in enumerate(ids):
        if eid != expected and (passable_below is None or eid - 1 > passable_below):
            return i
        expected = eid + 1
    return len(ids)


def _history_sql() -> str:
    return f"""
SELECT e.event_id, e.user_id, e.item_id, e.event_type, e.query, e.session_id, e.quantity, e.ts
  FROM shop.events e
 WHERE e.user_id = ANY(%(users)s) AND e.ts >= %(since)s AND e.event_id <= %(upto)s
   AND {clean_events_predicate()}
"""


@dataclass(frozen=True)
class BatchResult:
    """What one batch did; ``more`` says whether events were left behind (batch full or held back)."""

    status: str  # "ok" | "empty" | "busy" | "no_live_run"
    events: int = 0
    skipped: int = 0
    users: int = 0
    rows: int = 0
    watermark: int = 0
    held_back: bool = False
    more: bool = False


def _frame(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=columns)
    df["item_id"] = df["item_id"].astype("Int64")
    df["user_id"] = df["user_id"].astype("int64")
    df["event_id"] = df["event_id"].astype("int64")
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    return df


def _live_pub(cur) -> dict | None:
    cur.execute("SELECT publication_id, run_id, generated_at, "
                "(SELECT max(model_version) FROM recsys.models WHERE status = 'champion') "
                "FROM recsys.publications WHERE live")
    row = cur.fetchone()
    return dict(zip(["publication_id", "run_id", "generated_at", "champion"], row, strict=True)) if row else None


#: The batch's state in one round trip (after the lock): the watermark row (locked) with its held gap, the transaction's
#: now(), whether shop.events is a table (a view has no xmin), and the live publication with the champion.
_STATE_SQL = """
INSERT INTO recsys.refresh_state (name) VALUES (%(name)s) ON CONFLICT (name) DO NOTHING;
SELECT s.last_event_id, s.hold_below, s.hold_writers, now(),
       (SELECT relkind IN ('r', 'p') FROM pg_class WHERE oid = 'shop.events'::regclass),
       p.publication_id, p.run_id, p.generated_at,
       (SELECT max(model_version) FROM recsys.models WHERE status = 'champion'),
       coalesce(p.oldest_at, p.generated_at)
  FROM recsys.refresh_state s LEFT JOIN recsys.publications p ON p.live
 WHERE s.name = %(name)s
   FOR UPDATE OF s
"""


def _prepare(conn, url: str, home: str | Path) -> None:
    """Load the live run's inputs *before* the batch transaction takes the lock, when none is cached yet
    (a process's first batch); afterwards the cache answers and this costs nothing."""
    if cached_runs_for(url, home):
        return
    with conn.cursor() as cur:
        pub = _live_pub(cur)
    conn.commit()
    if pub:
        load_live(url, home, pub, pub["champion"])


def _rerank_inputs(cur, now) -> dict:  # noqa: ANN001 - the batch's cursor, a datetime from the database
    """The nightly run's re-rank inputs as of ``now``: settings, active rules, repurchase windows, A/B arms
    (read per batch in the batch's transaction, so a rule a merchandiser adds applies to the next overlay
    lists too, at the cost of two small queries rather than two new connections)."""
    from pipeline.rerank import RerankConfig, load_repurchase_windows, load_rules
    from pipeline.settings import get_settings

    s = get_settings()
    config = RerankConfig(**{"repurchase_days": load_repurchase_windows(cur), **s.rerank})
    return {"rerank": config, "rules": load_rules(cur, now), "variants": dict(s.variants),
            "variant_salt": s.variant_salt}


def run_batch(conn, url: str, home: str | Path, *, name: str = "default", batch_size: int = DEFAULT_BATCH_SIZE,
              lock_key: int = DEFAULT_LOCK_KEY, cfg: RecommendConfig | None = None, history_days: int = 90,
              hook: Hook | None = None) -> BatchResult:
    """One batch in one transaction on ``conn`` (autocommit off); commits or rolls back before returning."""
    cfg = cfg or RecommendConfig()
    hook = hook or (lambda point, info: None)
    _prepare(conn, url, home)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (lock_key,))
            if not cur.fetchone()[0]:
                conn.rollback()
                return BatchResult("busy")
            cur.execute(_STATE_SQL, {"name": name})
            after, hold_below, hold_writers, now, events_is_table, *pub_row = cur.fetchone()
            if pub_row[0] is None:  # nothing to overlay yet; keep the events for when a nightly run has published
                conn.rollback()
                return BatchResult("no_live_run", watermark=after)
            *pub_row, covered_until = pub_row
            pub = dict(zip(["publication_id", "run_id", "generated_at", "champion"], pub_row, strict=True))
            # The cached live run when it is this publication's with this champion; else (a nightly run
            # published or a champion was promoted since the last batch: rare) it is loaded here.
            live = load_live(url, home, pub, pub["champion"])
            hook("locked", {"watermark": after})
            # writers before the events, then the events (each statement its own snapshot): a writer holding a
            # gap's id that runs on now was already writing when the gap was recorded
            writing = _writers(cur) if events_is_table else set()
            cur.execute(_batch_sql(bool(events_is_table)), {"after": after, "limit": batch_size})
            rows = cur.fetchall()
            n_read = len(rows)
            settled = [r[-1] for r in rows]
            cut = settled.index(False) if False in settled else n_read
            hold = (hold_below, hold_writers)
            if events_is_table:
                resolved = hold_below is not None and not (writing & set(hold_writers or ()))
                cut = settled_count([int(r[0]) for r in rows], after, hold_below if resolved else None)
                if resolved:
                    hold = (None, None)
                if cut < n_read and hold[0] is None:  # a gap to wait for: who may still fill it
                    hold = (int(rows[-1][0]), sorted(_writers(cur)))
                if hold != (hold_below, hold_writers):
                    cur.execute("UPDATE recsys.refresh_state SET hold_below = %s, hold_writers = %s WHERE name = %s",
                                (*hold, name))
            rows = rows[:cut]
            if not rows:
                conn.commit()  # the held gap's record, if any
                return BatchResult("empty", watermark=after, held_back=cut < n_read, more=cut < n_read)
            batch = _frame([r[:8] for r in rows], EVENT_COLUMNS).assign(clean=[bool(r[8]) for r in rows])
            upto = int(batch["event_id"].iloc[-1])
            clean = batch[batch["clean"]]
            fresh = clean[clean["ts"] >= pd.Timestamp(covered_until)]
            users = np.unique(fresh["user_id"].to_numpy(dtype="int64"))
            hook("events_read", {"watermark": after, "upto": upto, "events": len(batch), "users": len(users)})
            n_rows = 0
            if len(users):
                cur.execute(_history_sql(), {"users": users.tolist(), "upto": upto,
                                           "since": now - pd.Timedelta(days=history_days).to_pytimedelta()})
                history = _frame(cur.fetchall(), EVENT_COLUMNS)
                rerank = _rerank_inputs(cur, now)
                lists, _ = recommend(users, history, live.art, now, cfg, fresh_ids=fresh["event_id"].to_numpy(),
                                     **rerank)
                hook("lists_built", {"users": len(users), "rows": len(lists)})
                cur.execute("DELETE FROM recsys.recs_realtime WHERE user_id = ANY(%s); "
                            "SELECT nextval('recsys.refresh_batches_batch_id_seq')", (users.tolist(),))
                batch_id = cur.fetchone()[0]
                if "variant" not in lists:
                    lists["variant"] = "control"
                lists = lists.assign(model_version=live.model_version, run_id=f"refresh_{batch_id}", generated_at=now)
                n_rows = copy_frame(cur, "recsys.recs_realtime", lists[OVERLAY_COLUMNS], OVERLAY_COLUMNS)
                hook("rows_written", {"users": len(users), "rows": n_rows})
            else:
                cur.execute("SELECT nextval('recsys.refresh_batches_batch_id_seq')")
                batch_id = cur.fetchone()[0]
            cur.execute(  # the watermark and the batch log in one round trip
                "UPDATE recsys.refresh_state SET last_event_id = %(upto)s, updated_at = now() WHERE name = %(name)s; "
                "INSERT INTO recsys.refresh_batches (batch_id, name, from_event_id, to_event_id, events, skipped, "
                "users, rows, started_at) VALUES (%(batch_id)s, %(name)s, %(after)s, %(upto)s, %(events)s, "
                "%(skipped)s, %(users)s, %(rows)s, %(now)s)",
                {"upto": upto, "name": name, "batch_id": batch_id, "after": after, "events": len(clean),
                 "skipped": len(batch) - len(clean), "users": len(users), "rows": n_rows, "now": now})
            hook("watermark_moved", {"watermark": upto})
        conn.commit()
    except BaseException:
        if not conn.closed:
            conn.rollback()
        raise
    hook("committed", {"watermark": upto})
    return BatchResult("ok", events=len(clean), skipped=len(batch) - len(clean), users=len(users), rows=n_rows,
                       watermark=upto, held_back=cut < n_read, more=n_read >= batch_size or cut < n_read)


#: Times a drain looks again at a gap it holds back at, and the pause between looks (writers are short).
GAP_RETRIES = 3
GAP_RETRY_S = 0.05


def clean_overlay(conn) -> int:
    """Delete overlay rows no newer than every kept publication (the view ignores them, and would after a
    rollback too; rows newer than an older kept run must stay, or a rollback to it loses the fresh lists the
    watermark already passed) and batch-log rows older than BATCH_LOG_DAYS; returns the overlay rows deleted."""
    with conn.cursor() as cur:
        cur.execute(STALE_OVERLAY_SQL)
        n = cur.rowcount
        cur.execute("DELETE FROM recsys.refresh_batches WHERE committed_at < now() - make_interval(days => %s)",
                    (BATCH_LOG_DAYS,))
    conn.commit()
    return n


def drain(conn, url: str, home: str | Path, *, name: str = "default", batch_size: int = DEFAULT_BATCH_SIZE,
          lock_key: int = DEFAULT_LOCK_KEY, cfg: RecommendConfig | None = None, max_batches: int | None = None,
          hook: Hook | None = None) -> dict:
    """Run batches until nothing is pending (or ``max_batches``); return the totals."""
    t0 = time.perf_counter()
    totals = {"status": "ok", "batches": 0, "events": 0, "skipped": 0, "users": 0, "rows": 0, "watermark": None,
              "held_back": False}
    gap_retries = GAP_RETRIES
    while max_batches is None or totals["batches"] < max_batches:
        res = run_batch(conn, url, home, name=name, batch_size=batch_size, lock_key=lock_key, cfg=cfg, hook=hook)
        totals["watermark"] = res.watermark if res.status != "busy" else totals["watermark"]
        totals["held_back"] = res.held_back
        if res.status == "empty" and res.held_back and gap_retries:
            # a gap just recorded is often for good (a rolled-back insert): look again once its writers are gone
            gap_retries -= 1
            time.sleep(GAP_RETRY_S)
            continue
        if res.status != "ok":
            if totals["batches"] == 0:
                totals["status"] = res.status
            break
        totals["batches"] += 1
        for k in ("events", "skipped", "users", "rows"):
            totals[k] += getattr(res, k)
        if not res.more:
            break
    totals["seconds"] = round(time.perf_counter() - t0, 3)
    return totals


def refresh_once(url: str, home: str | Path, *, name: str = "default", batch_size: int = DEFAULT_BATCH_SIZE,
                 lock_key: int = DEFAULT_LOCK_KEY, cfg: RecommendConfig | None = None, max_batches: int | None = None,
                 hook: Hook | None = None) -> dict:
    """Process every pending event once and return counts (``rerank refresh --once`` and the minutely DAG).

    ``status`` is ``ok`` (work done), ``empty`` (nothing pending), ``busy`` (another refresher holds the
    lock: nothing done, nothing lost) or ``no_live_run`` (no nightly run is published yet; events wait).
    """
    if batch_size < 1:
        raise PipelineError(f"batch_size must be at least 1, got {batch_size}")
    cfg = cfg or default_config()
    with connect(url) as conn:
        cleaned = clean_overlay(conn)
        out = drain(conn, url, home, name=name, batch_size=batch_size, lock_key=lock_key, cfg=cfg,
                    max_batches=max_batches, hook=hook)
    return {**out, "overlay_rows_cleaned": cleaned}


def default_config() -> RecommendConfig:
    """The refresh's configuration from the settings (the nightly run's top_n, candidates and weights)."""
    return RecommendConfig.from_settings()


def pending(url: str, name: str = "default") -> int:
    """Events after the watermark (clean or not): the refresh's backlog."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM shop.events WHERE event_id > "
                    "coalesce((SELECT last_event_id FROM recsys.refresh_state WHERE name = %s), 0)", (name,))
        return int(cur.fetchone()[0])


__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_LOCK_KEY", "HOOK_POINTS", "BatchResult", "clean_overlay", "drain",
           "pending", "refresh_once", "run_batch"]
