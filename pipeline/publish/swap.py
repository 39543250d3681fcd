"""Load a run's lists into their own table, then point the read views at it in one short transaction.

Readers never see a half-written run:

1. *load* (one transaction): ``CREATE TABLE recsys.recs_<run>_p<id>``, ``COPY ... FREEZE`` (rows already
   frozen, so the first reads set no hint bits), ``CREATE INDEX (user_id, rank)``, ``ANALYZE``. Killed
   anywhere in here, Postgres rolls the whole thing back: no table is left.
2. *swap* (one short transaction): insert the publication, move the ``live`` flag, ``CREATE OR REPLACE
   VIEW`` both read views. It waits at most ``lock_timeout`` for running reads and retries, so readers queue
   behind it for milliseconds, never for a load. Killed before its commit, the previous run stays live.
3. *tidy* (after the swap): keep the live and the last ``keep`` publications, delete overlay rows no kept
   publication can show (never failing the publication: the swap has committed).

A table committed by step 1 whose swap never happened (killed between 1 and 2) is an orphan; the next
publication drops it. Step 1 registers each table it creates with a comment naming its publication id
(committed with the table), and only such registered tables, named as :func:`table_name` names them, whose
publication never reached ``recsys.publications``, count as orphans: a table someone else keeps in the
schema is never dropped. Publications are serialised by a session advisory lock, so one run never mistakes
another's table in the making for an orphan; the lock dies with a killed session.

``hook(point)`` (an argument, never the environment) is called at each of :data:`PAUSE_POINTS`; tests pass
one that pauses there so they can SIGKILL the process.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg2
import psycopg2.errors
import pyarrow as pa
from psycopg2 import sql

from pipeline.db.copy import frame_to_csv
from pipeline.db.engine import connect
from pipeline.db.overlay import BATCH_LOG_DAYS, STALE_OVERLAY_SQL
from pipeline.errors import PublishError

log = logging.getLogger(__name__)
VIEWS_DIR = Path(__file__).resolve().parents[2] / "sql" / "views"
RECS_COLUMNS = ["user_id", "rank", "item_id", "score", "reason", "anchor_item_id", "source", "variant",
                "model_version", "run_id", "generated_at"]
SIMILAR_COLUMNS = ["item_id", "rank", "similar_item_id", "score", "method"]
#: Named points of a publication where the test hook can pause it.
PAUSE_POINTS = ("create", "copy", "index", "loaded", "swap")
#: Advisory lock key serialising publications and rollbacks (any constant; "rerank" in ASCII).
PUBLISH_LOCK = 0x7265_72616E6B
_PROTECTED = ("recs_bootstrap", "similar_bootstrap", "recs_realtime")

Hook = Callable[[str], None]


def _view_sql(name: str, **parts: sql.Composable) -> sql.Composed:
    """Fill a read-view template from sql/views with composed identifiers / literals."""
    text = (VIEWS_DIR / f"{name}.sql").read_text()
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return sql.SQL(text.replace("{", "{{").replace("}", "}}").replace("{{recs_table}}", "{recs_table}")
                   .replace("{{generated_at}}", "{generated_at}")
                   .replace("{{similar_table}}", "{similar_table}")).format(**parts)


def table_name(prefix: str, run_id: str, pub_id: int) -> str:
    """``<prefix>_<run_id>_p<pub_id>``: lower-case, only [a-z0-9_], within Postgres' 63-byte identifier limit."""
    suffix = f"_p{pub_id}"
    base = re.sub(r"[^a-z0-9_]+", "_", run_id.lower()).strip("_") or "run"
    return f"{prefix}_{base}"[: 63 - len(suffix)] + suffix


#: The comment that registers a table as made by a publication (the id follows); see :func:`_register`.
TABLE_MARK = "ecom-rerank publication "


def _register(cur, table: sql.Composable, pub_id: int) -> None:
    """Mark ``table`` as made by publication ``pub_id``, in the transaction that creates it."""
    cur.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(table, sql.Literal(f"{TABLE_MARK}{pub_id}")))


def _orphans(cur) -> list[str]:
    """Registered publication tables whose publication never committed (its id is not in the registry)."""
    cur.execute(
        """
        SELECT c.relname, obj_description(c.oid, 'pg_class')
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'recsys' AND c.relkind = 'r'
           AND c.relname ~ '^(recs|similar)_[a-z0-9_]*_p[0-9]+$'
           AND c.relname <> ALL(%s)
           AND obj_description(c.oid, 'pg_class') LIKE %s
           AND c.relname NOT IN (SELECT recs_table FROM recsys.publications
                                 UNION SELECT similar_table FROM recsys.publications WHERE similar_table IS NOT NULL)
         ORDER BY 1
        """,
        (list(_PROTECTED), TABLE_MARK + "%"),
    )
    out = []
    with_ids = cur.fetchall()
    cur.execute("SELECT publication_id FROM recsys.publications")
    registered = {r[0] for r in cur.fetchall()}
    for name, comment in with_ids:
        pub = comment[len(TABLE_MARK):]
        # the name carries the same id as the mark: a copied comment on another table does not qualify
        if pub.isdigit() and int(pub) not in registered and name.endswith(f"_p{pub}"):
            out.append(name)
    return out


def _drop_orphans(cur) -> list[str]:
    """Tables of publications that never committed their swap (a killed run) are dropped."""
    names = _orphans(cur)
    for name in names:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("recsys", name)))
    return names


def _sorted_by_user_rank(recs: pd.DataFrame) -> pd.DataFrame:
    """Rows in (user_id, rank) order: the index builds from presorted input and a user's list sits on one page."""
    u, r = recs["user_id"].to_numpy(), recs["rank"].to_numpy()
    if len(u) < 2:
        return recs
    du = np.diff(u)
    if np.all((du > 0) | ((du == 0) & (np.diff(r) > 0))):
        return recs
    return recs.sort_values(["user_id", "rank"], kind="stable")


def _copy_frozen(cur, table: sql.Composable, df: pd.DataFrame, columns: list[str], chunk_rows: int,
                 hook: Hook | None) -> None:
    """COPY in chunks with FREEZE (the table was created in this transaction); the hook runs between chunks."""
    stmt = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, FREEZE)").format(
        table, sql.SQL(", ").join(sql.Identifier(c) for c in columns)).as_string(cur.connection)
    df = df[columns]
    for start in range(0, max(len(df), 1), chunk_rows):
        part = df.iloc[start: start + chunk_rows]
        if len(part):
            cur.copy_expert(stmt, frame_to_csv(part))
        if hook and start + chunk_rows < len(df):
            hook("copy")


def _copy_parts(cur, table: sql.Composable, parts: Sequence[Path], columns: list[str], chunk_rows: int,
                hook: Hook | None) -> tuple[int, datetime | None]:
    """Stream Parquet parts into COPY ... FREEZE, ``chunk_rows`` rows at a time (one chunk's CSV in memory,
    never a whole part or run); the hook runs between chunks. Returns (rows, oldest generated_at)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    stmt = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, FREEZE)").format(
        table, sql.SQL(", ").join(sql.Identifier(c) for c in columns)).as_string(cur.connection)
    rows, oldest = 0, None
    for path in parts:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=columns):
            if batch.num_rows == 0:
                continue
            if hook and rows:
                hook("copy")
            batch = batch.select(columns)  # the file's column order may differ from the table's
            cur.copy_expert(stmt, frame_to_csv(pa.Table.from_batches([batch])))
            rows += batch.num_rows
            low = pc.min(batch.column("generated_at")).as_py()
            if low is not None and (oldest is None or low < oldest):
                oldest = low
    return rows, oldest


#: Inside the load transaction of a user-subset publication: the live rows of every user the new lists do
#: not hold, copied table to table by Postgres (never through the client), in (user_id, rank) order.
_CARRY_LIVE_SQL = """
WITH carried AS (
    INSERT INTO {new} ({cols})
    SELECT {cols} FROM {live} l
     WHERE NOT EXISTS (SELECT 1 FROM {new} n WHERE n.user_id = l.user_id)
     ORDER BY l.user_id, l.rank
    RETURNING generated_at)
SELECT count(*), min(generated_at) FROM carried
"""


def _acquire_lock(conn, wait_s: float) -> None:
    with conn.cursor() as cur:
        cur.execute("SET lock_timeout = %s", (f"{int(wait_s * 1000)}ms",))
        try:
            cur.execute("SELECT pg_advisory_lock(%s)", (PUBLISH_LOCK,))
        except psycopg2.errors.LockNotAvailable:
            raise PublishError(f"another publication held the publish lock for {wait_s:.0f} s",
                               "a running `rerank run nightly` or `rerank publish rollback`") from None
        cur.execute("SET lock_timeout = 0")


def _session(url: str, wait_s: float):  # noqa: ANN202 - a psycopg2 connection holding the publish lock
    conn = psycopg2.connect(url, application_name="ecom-rerank-publish")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            # A killed client must not leave its backend running a long statement (PG 14+).
            cur.execute("SELECT current_setting('server_version_num')::int >= 140000")
            if cur.fetchone()[0]:
                cur.execute("SET client_connection_check_interval = '1s'")
        _acquire_lock(conn, wait_s)
        conn.autocommit = False  # from here, `with conn:` blocks are transactions; the lock is per session
    except BaseException:
        conn.close()
        raise
    return conn


def _swap(conn, pub_id: int, insert: tuple | None, *, lock_timeout_ms: int, attempts: int,
          hook: Hook | None, before_views: Callable[[Any], None] | None = None) -> float:
    """One short transaction making ``pub_id`` live; retried when running reads hold the views too long.
    ``before_views(cursor)`` runs inside that transaction first (a rollback's overlay undo).

    Returns the duration of the successful transaction in seconds.
    """
    for attempt in range(1, attempts + 1):
        t0 = time.perf_counter()
        try:
            with conn, conn.cursor() as cur:  # a transaction: commit on success, rollback on error
                cur.execute(f"SET LOCAL lock_timeout = '{lock_timeout_ms}ms'")
                cur.execute("SET LOCAL statement_timeout = '30s'")
                if insert is not None:
                    cur.execute(
                        "INSERT INTO recsys.publications (publication_id, run_id, recs_table, similar_table, "
                        "generated_at, oldest_at, stats) VALUES (%s, %s, %s, %s, %s, %s, %s)", insert)
                if before_views is not None:
                    before_views(cur)
                _point_views(cur, pub_id)
                if hook:
                    hook("swap")
            return time.perf_counter() - t0
        except psycopg2.errors.LockNotAvailable:
            if attempt == attempts:
                raise PublishError(f"could not swap the read views after {attempts} tries of {lock_timeout_ms} ms",
                                   "long-running transactions reading recsys.user_recommendations") from None
            time.sleep(min(0.05 * 2 ** attempt, 2.0))
    raise AssertionError("unreachable")


def _check_columns(recs: pd.DataFrame | Sequence[Path]) -> None:
    if isinstance(recs, pd.DataFrame):
        have = set(recs.columns)
    else:
        import pyarrow.parquet as pq

        have = set(RECS_COLUMNS)
        for path in recs:  # the footers only
            have &= set(pq.ParquetFile(path).schema_arrow.names)
    missing = set(RECS_COLUMNS) - have
    if missing:
        raise PublishError(f"recommendations lack columns {sorted(missing)}", "the rerank stage's output")


def publish_run(url: str, run_id: str, recs: pd.DataFrame | Sequence[Path], similar: pd.DataFrame | None, *,
                generated_at: datetime, keep: int = 3, stats: dict | None = None, hook: Hook | None = None,
                chunk_rows: int = 500_000, lock_wait_s: float = 600.0, swap_lock_timeout_ms: int = 2000,
                swap_attempts: int = 10, allow_older: bool = False, keep_other_users: bool = False) -> dict:
    """Publish ``recs`` (and item neighbours) for ``run_id``; return table names and timings.

    ``recs``: one frame, or the run's Parquet parts (pipeline.publish.parts.rec_parts: each part the whole
    lists of its users, sorted by user and rank), streamed into COPY ``chunk_rows`` rows at a time.
    ``keep_other_users``: a user-subset publication; every user without a list in ``recs`` keeps the live
    publication's rows, copied inside Postgres in the same load transaction.
    A run older than the live one (``generated_at`` earlier, another run: a backfill, or an old date's task
    cleared and re-run) is not made live unless ``allow_older``: it returns ``published: False`` and writes
    nothing (``rerank publish rollback`` is the way back to older lists).
    ``hook(point)`` is called at each of :data:`PAUSE_POINTS` (tests use it to kill the process there).
    """
    _check_columns(recs)
    if similar is not None and set(SIMILAR_COLUMNS) - set(similar.columns):
        raise PublishError(f"item neighbours lack columns {sorted(set(SIMILAR_COLUMNS) - set(similar.columns))}",
                           "the neighbours snapshot")
    in_frame = isinstance(recs, pd.DataFrame)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    conn = _session(url, lock_wait_s)
    try:
        with conn, conn.cursor() as cur:
            # under the publish lock: no other publication or rollback can change the live one meanwhile
            cur.execute("SELECT run_id, generated_at FROM recsys.publications WHERE live AND generated_at > %s "
                        "AND run_id <> %s", (generated_at, run_id))
            newer = cur.fetchone()
            cur.execute("SELECT recs_table FROM recsys.publications WHERE live")
            live = cur.fetchone()
        if newer is not None and not allow_older:
            log.warning("not publishing %s: the live run %s is newer (%s)", run_id, newer[0], newer[1])
            n = len(recs) if in_frame else _rows_in(recs)
            return {"published": False, "publication_id": None, "rows": n, "live_run_id": newer[0],
                    "reason": f"the live run {newer[0]} (generated {newer[1]}) is newer than {run_id}"}
        with conn, conn.cursor() as cur:
            orphans = _drop_orphans(cur)
            cur.execute("SELECT nextval('recsys.publications_publication_id_seq')")
            pub_id = cur.fetchone()[0]
        recs_table = table_name("recs", run_id, pub_id)
        similar_table = table_name("similar", run_id, pub_id) if similar is not None else None

        # 1. Load: one transaction, so a crash anywhere inside leaves nothing behind.
        t0 = time.perf_counter()
        with conn, conn.cursor() as cur:
            cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
            rt = sql.Identifier("recsys", recs_table)
            cur.execute(sql.SQL("CREATE TABLE {} (LIKE recsys.recs_bootstrap INCLUDING ALL)").format(rt))
            _register(cur, rt, pub_id)
            if hook:
                hook("create")
            if in_frame:
                recs = _sorted_by_user_rank(recs)
                _copy_frozen(cur, rt, recs, RECS_COLUMNS, chunk_rows, hook)
                rows = len(recs)
                oldest = pd.Timestamp(recs["generated_at"].min()).to_pydatetime() if rows else None
            else:
                rows, oldest = _copy_parts(cur, rt, list(recs), RECS_COLUMNS, chunk_rows, hook)
            timings["copy_s"] = time.perf_counter() - t0
            if keep_other_users and live is not None:
                cols = sql.SQL(", ").join(sql.Identifier(c) for c in RECS_COLUMNS)
                cur.execute(sql.SQL(_CARRY_LIVE_SQL).format(new=rt, cols=cols,
                                                            live=sql.Identifier("recsys", live[0])))
                carried, carried_oldest = cur.fetchone()
                rows += carried
                if carried_oldest is not None and (oldest is None or carried_oldest < oldest):
                    oldest = carried_oldest
            cur.execute(sql.SQL("CREATE INDEX {} ON {} (user_id, rank)").format(
                sql.Identifier(f"{recs_table}_user_rank"[:63]), rt))
            if similar_table:
                st = sql.Identifier("recsys", similar_table)
                cur.execute(sql.SQL("CREATE TABLE {} (LIKE recsys.similar_bootstrap INCLUDING ALL)").format(st))
                _register(cur, st, pub_id)
                _copy_frozen(cur, st, similar, SIMILAR_COLUMNS, chunk_rows, None)
                cur.execute(sql.SQL("CREATE INDEX {} ON {} (item_id, rank)").format(
                    sql.Identifier(f"{similar_table}_item_rank"[:63]), st))
            if hook:
                hook("index")
            cur.execute(sql.SQL("ANALYZE {}").format(rt))
            # The read views belong to rerank_writer (migration 0005) and read the run's tables with its
            # rights; owning them also lets a pipeline logged in as rerank_writer prune them later.
            cur.execute(sql.SQL("ALTER TABLE {} OWNER TO rerank_writer").format(rt))
            if similar_table:
                cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier("recsys", similar_table)))
                cur.execute(sql.SQL("ALTER TABLE {} OWNER TO rerank_writer").format(
                    sql.Identifier("recsys", similar_table)))
        timings["load_s"] = time.perf_counter() - t0
        if hook:
            hook("loaded")

        # 2. Swap: short, retried on lock timeouts.
        # A user-subset run carries the other users' live rows with their own (older) generated_at.
        oldest_at = pd.Timestamp(oldest).to_pydatetime() if oldest is not None else generated_at
        insert = (pub_id, run_id, recs_table, similar_table, generated_at, oldest_at,
                  json.dumps(stats or {}, default=str))
        timings["swap_s"] = _swap(conn, pub_id, insert, lock_timeout_ms=swap_lock_timeout_ms,
                                  attempts=swap_attempts, hook=hook)

        # 3. Tidy: never blocks the swap; a failure here leaves extra tables for the next run.
        t0 = time.perf_counter()
        pruned = _prune(conn, keep)
        _drop_stale_overlay(conn)
        timings["tidy_s"] = time.perf_counter() - t0
    finally:
        conn.close()  # also releases the advisory lock
    timings["total_s"] = time.perf_counter() - t_all
    return {"published": True, "publication_id": pub_id, "recs_table": recs_table, "similar_table": similar_table,
            "rows": rows, "orphans_dropped": orphans, "pruned": pruned,
            **{k: round(v, 4) for k, v in timings.items()}}


def _rows_in(parts: Sequence[Path]) -> int:
    from pipeline.publish.parts import rows_in_parts

    return rows_in_parts(list(parts))


def _point_views(cur, pub_id: int) -> None:
    """Inside the caller's transaction: make publication ``pub_id`` the live one."""
    cur.execute("SELECT recs_table, similar_table, coalesce(oldest_at, generated_at) FROM recsys.publications "
                "WHERE publication_id = %s", (pub_id,))
    row = cur.fetchone()
    if row is None:
        raise PublishError(f"publication {pub_id} does not exist", "recsys.publications")
    recs_table, similar_table, oldest_at = row
    if similar_table is None:
        cur.execute("SELECT similar_table FROM recsys.publications WHERE live")
        live = cur.fetchone()
        similar_table = live[0] if live and live[0] else "similar_bootstrap"
        if similar_table != "similar_bootstrap":
            # Record the inherited table, so pruning the publication that made it sees it is still in use.
            cur.execute("UPDATE recsys.publications SET similar_table = %s WHERE publication_id = %s",
                        (similar_table, pub_id))
    cur.execute("UPDATE recsys.publications SET live = false WHERE live")
    cur.execute("UPDATE recsys.publications SET live = true, published_at = now() WHERE publication_id = %s",
                (pub_id,))
    cur.execute(_view_sql("user_recommendations", recs_table=sql.Identifier("recsys", recs_table),
                          generated_at=sql.SQL("{}::timestamptz").format(sql.Literal(oldest_at))))
    cur.execute(_view_sql("similar_items", similar_table=sql.Identifier("recsys", similar_table)))


def _drop_stale_overlay(conn) -> None:
    """Delete overlay rows that no kept publication can show (a rollback brings back the ones newer than the
    publication it restores, so they outlive a newer run). A refresh batch in flight holds row locks on the
    lists it rewrites: past a short wait, skip; the refresher's ``clean_overlay`` deletes them later. The
    swap has committed by now, so a failure here must not fail the publication."""
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = '5s'")
            cur.execute(STALE_OVERLAY_SQL)
    except psycopg2.errors.LockNotAvailable:
        pass


def _prune(conn, keep: int) -> list[str]:
    """Keep the live publication and the latest publication of each of the ``keep`` most recent runs; drop
    the rest with their tables (an earlier publication of a kept run, e.g. before a user-subset re-publish,
    is superseded, so re-publishing one run never pushes older runs out of the rollback window).

    One transaction per publication, each with a short lock timeout: a reader still on an old table delays
    only its own drop, which the next run retries.
    """
    with conn, conn.cursor() as cur:
        cur.execute(
            """
            WITH latest AS (
                SELECT DISTINCT ON (run_id) publication_id FROM recsys.publications
                 ORDER BY run_id, publication_id DESC),
            kept AS (SELECT publication_id FROM latest ORDER BY publication_id DESC LIMIT %s)
            SELECT publication_id, recs_table, similar_table FROM recsys.publications
             WHERE NOT live AND publication_id NOT IN (SELECT publication_id FROM kept)
             ORDER BY publication_id
            """,
            (keep,),
        )
        old = cur.fetchall()
    dropped = []
    for pub_id, recs_table, similar_table in old:
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SET LOCAL lock_timeout = '5s'")
                cur.execute("SELECT 1 FROM recsys.publications WHERE similar_table = %s AND publication_id <> %s",
                            (similar_table, pub_id))
                shared = cur.fetchone() is not None
                cur.execute("DELETE FROM recsys.publications WHERE publication_id = %s", (pub_id,))
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("recsys", recs_table)))
                if similar_table and not shared:
                    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("recsys", similar_table)))
            dropped.append(recs_table)
        except (psycopg2.errors.LockNotAvailable, psycopg2.errors.DependentObjectsStillExist):
            continue  # in use (a reader, or the live view): the next run retries
    return dropped


def live_publication(url: str) -> dict | None:
    """The live publication's id, run, table and generation time (None before the first publication)."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT publication_id, run_id, recs_table, generated_at FROM recsys.publications WHERE live")
        row = cur.fetchone()
    if row is None:
        return None
    return dict(zip(["publication_id", "run_id", "recs_table", "generated_at"], row, strict=True))


def live_lists(url: str, columns: tuple[str, ...] = ("user_id", "item_id")) -> pd.DataFrame | None:
    """The live run's rows (for the gate's churn check); None before the first publication."""
    live = live_publication(url)
    if live is None:
        return None
    bad = set(columns) - set(RECS_COLUMNS)
    if bad:
        raise PublishError(f"unknown columns {sorted(bad)}", f"one of {RECS_COLUMNS}")
    q = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns),
                                            sql.Identifier("recsys", live["recs_table"]))
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(q)
        return pd.DataFrame(cur.fetchall(), columns=list(columns))


class LiveRows:
    """The live publication's rows of given users, read by user id from its table (indexed on user_id): the
    streamed gate's churn check reads the live lists part by part, never the whole table. Picklable, so a
    Dask worker can call it."""

    def __init__(self, url: str, recs_table: str, columns: tuple[str, ...] = ("user_id", "item_id")) -> None:
        bad = set(columns) - set(RECS_COLUMNS)
        if bad:
            raise PublishError(f"unknown columns {sorted(bad)}", f"one of {RECS_COLUMNS}")
        self.url, self.recs_table, self.columns = url, recs_table, tuple(columns)

    @classmethod
    def of_live(cls, url: str) -> LiveRows | None:
        """The reader of the live publication's table; None before the first publication."""
        live = live_publication(url)
        return None if live is None else cls(url, live["recs_table"])

    def __call__(self, user_ids: np.ndarray) -> pd.DataFrame:
        q = sql.SQL("SELECT {} FROM {} WHERE user_id = ANY(%s)").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in self.columns), sql.Identifier("recsys", self.recs_table))
        with connect(self.url) as conn, conn.cursor() as cur:
            cur.execute(q, ([int(u) for u in user_ids],))
            return pd.DataFrame(cur.fetchall(), columns=list(self.columns))


#: In one transaction with a rollback's swap: lock the refresh watermarks first (a refresh batch takes its
#: watermark row before the overlay rows, so the same order cannot deadlock with one in flight), move each
#: back to where it stood when the rolled-back publication went live (the first batch after that read from
#: there; not when that is older than the kept batch log, which may have lost batches), then delete the
#: overlay lists built on the rolled-back run.
_UNDO_OVERLAY_SQL = """
SELECT name FROM recsys.refresh_state ORDER BY name FOR UPDATE;
UPDATE recsys.refresh_state s SET last_event_id = b.first_from, updated_at = now()
  FROM (SELECT name, min(from_event_id) AS first_from FROM recsys.refresh_batches
         WHERE started_at >= %(since)s GROUP BY name) b
 WHERE s.name = b.name AND s.last_event_id > b.first_from
   AND %(since)s > now() - make_interval(days => %(log_days)s);
DELETE FROM recsys.recs_realtime WHERE generated_at >= %(since)s;
"""


def rollback(url: str, *, lock_wait_s: float = 60.0) -> dict:
    """Make the previous run's publication live again (its table is kept for this).

    "Previous" is the newest publication older than the live one that belongs to another run: rolling back
    after a re-publish of the same run (a user subset) goes back a run, not to a half-superseded list.

    Near-real-time lists built while the rolled-back publication was live came from its run (its model, its
    CF matrices): they go in the same transaction, and the refresh watermark moves back to where it stood
    then, so the refresh rebuilds those users' lists on the restored run. Older overlay lists stay.
    """
    conn = _session(url, lock_wait_s)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT publication_id, run_id, published_at FROM recsys.publications WHERE live")
            row = cur.fetchone()
            if row is None:
                raise PublishError("nothing is published, so there is nothing to roll back", "rerank run nightly")
            cur.execute(
                "SELECT publication_id, run_id FROM recsys.publications WHERE publication_id < %s "
                "AND run_id <> %s ORDER BY publication_id DESC LIMIT 1",
                (row[0], row[1]),
            )
            prev = cur.fetchone()
            if prev is None:
                raise PublishError("no earlier publication is kept", "RERANK_KEEP_RUNS keeps the last K runs")
        undone = {}

        def undo_overlay(cur) -> None:  # noqa: ANN001 - a psycopg2 cursor
            cur.execute(_UNDO_OVERLAY_SQL, {"since": row[2], "log_days": BATCH_LOG_DAYS})
            undone["overlay_rows_dropped"] = cur.rowcount

        _swap(conn, prev[0], None, lock_timeout_ms=2000, attempts=10, hook=None, before_views=undo_overlay)
    finally:
        conn.close()
    return {"publication_id": prev[0], "run_id": prev[1], **undone}
