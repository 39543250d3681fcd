"""Load a run's lists into their own table, then point the read views at it in one short transaction.

Readers never see a half-written run: the new table is complete, indexed and analysed before the swap,
and ``CREATE OR REPLACE VIEW`` plus the ``recsys.publications`` bookkeeping commit together. A crash at any
point before that commit leaves the previous publication live; an orphan table is dropped by the next run.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
from psycopg2 import sql

from pipeline.db.copy import copy_frame
from pipeline.db.engine import connect
from pipeline.errors import PublishError

VIEWS_DIR = Path(__file__).resolve().parents[2] / "sql" / "views"
RECS_COLUMNS = ["user_id", "rank", "item_id", "score", "reason", "anchor_item_id", "source", "variant",
                "model_version", "run_id", "generated_at"]
SIMILAR_COLUMNS = ["item_id", "rank", "similar_item_id", "score", "method"]


def _view_sql(name: str, **parts: sql.Composable) -> sql.Composed:
    """Fill a read-view template from sql/views with composed identifiers / literals."""
    text = (VIEWS_DIR / f"{name}.sql").read_text()
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return sql.SQL(text.replace("{", "{{").replace("}", "}}").replace("{{recs_table}}", "{recs_table}")
                   .replace("{{generated_at}}", "{generated_at}")
                   .replace("{{similar_table}}", "{similar_table}")).format(**parts)


def _drop_orphans(cur) -> None:
    """Tables of publications that never committed (a killed run) are dropped."""
    cur.execute(
        """
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'recsys' AND c.relkind = 'r'
           AND (c.relname LIKE 'recs\\_%%' OR c.relname LIKE 'similar\\_%%')
           AND c.relname NOT IN ('recs_bootstrap', 'similar_bootstrap', 'recs_realtime')
           AND c.relname NOT IN (SELECT recs_table FROM recsys.publications
                                 UNION SELECT similar_table FROM recsys.publications WHERE similar_table IS NOT NULL)
        """
    )
    for (name,) in cur.fetchall():
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("recsys", name)))


def publish_run(url: str, run_id: str, recs: pd.DataFrame, similar: pd.DataFrame | None, *,
                generated_at: datetime, keep: int = 3, stats: dict | None = None) -> dict:
    """Publish ``recs`` (and item neighbours) for ``run_id``; return the publication's table names."""
    import json

    missing = set(RECS_COLUMNS) - set(recs.columns)
    if missing:
        raise PublishError(f"recommendations lack columns {sorted(missing)}", "the rerank stage's output")
    with connect(url) as conn, conn.cursor() as cur:
        _drop_orphans(cur)
        cur.execute("SELECT nextval('recsys.publications_publication_id_seq')")
        pub_id = cur.fetchone()[0]
    base = run_id.lower()
    recs_table = f"recs_{base}_p{pub_id}"
    similar_table = f"similar_{base}_p{pub_id}" if similar is not None else None

    # Load and index outside the swap transaction: long work here never blocks readers.
    with connect(url) as conn, conn.cursor() as cur:
        rt = sql.Identifier("recsys", recs_table)
        cur.execute(sql.SQL("CREATE TABLE {} (LIKE recsys.recs_bootstrap INCLUDING ALL)").format(rt))
        copy_frame(cur, rt, recs[RECS_COLUMNS], RECS_COLUMNS)
        cur.execute(sql.SQL("CREATE INDEX ON {} (user_id, rank)").format(rt))
        if similar_table:
            st = sql.Identifier("recsys", similar_table)
            cur.execute(sql.SQL("CREATE TABLE {} (LIKE recsys.similar_bootstrap INCLUDING ALL)").format(st))
            copy_frame(cur, st, similar[SIMILAR_COLUMNS], SIMILAR_COLUMNS)
            cur.execute(sql.SQL("CREATE INDEX ON {} (item_id, rank)").format(st))
    with connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier("recsys", recs_table)))

    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SET LOCAL lock_timeout = '10s'")
        cur.execute(
            """
            INSERT INTO recsys.publications (publication_id, run_id, recs_table, similar_table, generated_at, stats)
            VALUES (%s, %s, %s, %s, %s, %s)
            """,
            (pub_id, run_id, recs_table, similar_table, generated_at, json.dumps(stats or {})),
        )
        _point_views(cur, pub_id)
    with connect(url) as conn, conn.cursor() as cur:
        _prune(cur, keep)
    return {"publication_id": pub_id, "recs_table": recs_table, "similar_table": similar_table,
            "rows": len(recs)}


def _point_views(cur, pub_id: int) -> None:
    """Inside the caller's transaction: make publication ``pub_id`` the live one."""
    cur.execute("SELECT recs_table, similar_table, generated_at FROM recsys.publications WHERE publication_id = %s",
                (pub_id,))
    recs_table, similar_table, generated_at = cur.fetchone()
    if similar_table is None:
        cur.execute("SELECT similar_table FROM recsys.publications WHERE live")
        row = cur.fetchone()
        similar_table = row[0] if row and row[0] else "similar_bootstrap"
    cur.execute("UPDATE recsys.publications SET live = false WHERE live")
    cur.execute("UPDATE recsys.publications SET live = true, published_at = now() WHERE publication_id = %s",
                (pub_id,))
    cur.execute(_view_sql("user_recommendations", recs_table=sql.Identifier("recsys", recs_table),
                          generated_at=sql.SQL("{}::timestamptz").format(sql.Literal(generated_at))))
    cur.execute(_view_sql("similar_items", similar_table=sql.Identifier("recsys", similar_table)))
    # Overlay rows older than the live run are obsolete (the view ignores them already).
    cur.execute("DELETE FROM recsys.recs_realtime WHERE generated_at <= %s", (generated_at,))


def _prune(cur, keep: int) -> None:
    """Keep the live publication and the ``keep`` most recent ones; drop the rest with their tables."""
    cur.execute(
        """
        SELECT publication_id, recs_table, similar_table FROM recsys.publications
         WHERE NOT live AND publication_id NOT IN (
               SELECT publication_id FROM recsys.publications ORDER BY publication_id DESC LIMIT %s)
        """,
        (keep,),
    )
    for pub_id, recs_table, similar_table in cur.fetchall():
        cur.execute("SELECT 1 FROM recsys.publications WHERE live AND similar_table = %s", (similar_table,))
        shared = cur.fetchone() is not None
        cur.execute("DELETE FROM recsys.publications WHERE publication_id = %s", (pub_id,))
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("recsys", recs_table)))
        if similar_table and not shared:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("recsys", similar_table)))


def live_publication(url: str) -> dict | None:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT publication_id, run_id, recs_table, generated_at FROM recsys.publications WHERE live")
        row = cur.fetchone()
    if row is None:
        return None
    return dict(zip(["publication_id", "run_id", "recs_table", "generated_at"], row, strict=True))


def rollback(url: str) -> dict:
    """Make the publication before the live one live again."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT publication_id FROM recsys.publications WHERE live")
        row = cur.fetchone()
        if row is None:
            raise PublishError("nothing is published, so there is nothing to roll back", "rerank run nightly")
        cur.execute(
            "SELECT publication_id, run_id FROM recsys.publications WHERE publication_id < %s "
            "ORDER BY publication_id DESC LIMIT 1",
            (row[0],),
        )
        prev = cur.fetchone()
        if prev is None:
            raise PublishError("no earlier publication is kept", "RERANK_KEEP_RUNS keeps the last K runs")
        cur.execute("SET LOCAL lock_timeout = '10s'")
        _point_views(cur, prev[0])
    return {"publication_id": prev[0], "run_id": prev[1]}
