"""Row-level checks of the source tables, expressed once in SQL so that quarantine and extraction agree.

Each rule is (reason, SQL predicate that is TRUE for a bad row). ``validate_source`` stores every bad row
with all its reasons in ``recsys.quarantine`` (replacing that run's earlier rows, so a re-run gives the same
result) and fails when a table's bad share passes the threshold. Extraction reads ``NOT (any rule)``.
"""

from __future__ import annotations

from datetime import datetime

from psycopg2 import sql

from pipeline.db.engine import connect
from pipeline.errors import ValidationFailed
from pipeline.frames import EVENT_TYPES

TS_FLOOR = "1990-01-01"

EVENT_RULES: list[tuple[str, str]] = [
    ("event_type not in the allowed set", "event_type NOT IN ({types})"),
    ("ts in the future", "ts > now() + interval '1 day'"),
    (f"ts before {TS_FLOOR}", f"ts < '{TS_FLOOR}'::timestamptz"),
    ("item_id missing on a non-search event", "event_type <> 'search' AND item_id IS NULL"),
    ("item_id not in shop.items", "event_type <> 'search' AND item_id IS NOT NULL AND NOT EXISTS "
                                  "(SELECT 1 FROM shop.items i WHERE i.item_id = e.item_id)"),
    ("search without a query", "event_type = 'search' AND coalesce(btrim(query), '') = ''"),
    ("quantity < 1", "quantity < 1"),
]
ITEM_RULES: list[tuple[str, str]] = [
    ("empty title", "coalesce(btrim(title), '') = ''"),
    ("price < 0", "price < 0"),
    ("title longer than 2000 characters", "length(title) > 2000"),
]


def _types() -> str:
    return ", ".join(f"'{t}'" for t in EVENT_TYPES)


def _rules(rules: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(reason, pred.format(types=_types())) for reason, pred in rules]


def clean_events_predicate() -> str:
    """SQL boolean for a clean row of ``shop.events e`` (constant text, no user values)."""
    return "NOT (" + " OR ".join(f"coalesce(({p}), false)" for _, p in _rules(EVENT_RULES)) + ")"


def _quarantine_table(cur, table: str, alias: str, rules: list[tuple[str, str]], run_id: str) -> dict:
    schema, name = table.split(".")
    reasons = sql.SQL(", ").join(
        sql.SQL("CASE WHEN coalesce(({}), false) THEN {} END").format(sql.SQL(p), sql.Literal(r)) for r, p in rules
    )
    bad = sql.SQL(" OR ").join(sql.SQL("coalesce(({}), false)").format(sql.SQL(p)) for _, p in rules)
    tbl = sql.SQL("{} {}").format(sql.Identifier(schema, name), sql.Identifier(alias))
    cur.execute(
        sql.SQL(
            "INSERT INTO recsys.quarantine (source, raw, reason, run_id) "
            "SELECT {src}, to_jsonb({a}), concat_ws('; ', {reasons}), {run} FROM {tbl} WHERE {bad}"
        ).format(src=sql.Literal(table), a=sql.Identifier(alias), reasons=reasons, run=sql.Literal(run_id),
                 tbl=tbl, bad=bad)
    )
    quarantined = cur.rowcount
    cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name)))
    read = cur.fetchone()[0]
    cur.execute(
        "SELECT reason, count(*) FROM recsys.quarantine WHERE run_id = %s AND source = %s "
        "GROUP BY reason ORDER BY count(*) DESC LIMIT 3",
        (run_id, table),
    )
    top = {r: n for r, n in cur.fetchall()}
    return {"read": read, "clean": read - quarantined, "quarantined": quarantined, "top_reasons": top}


def validate_source(url: str, run_id: str, as_of: datetime, *, max_bad_share: float = 0.01) -> dict:
    """Quarantine bad rows of shop.items and shop.events for ``run_id``; fail past ``max_bad_share``."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM recsys.quarantine WHERE run_id = %s AND source LIKE 'shop.%%'", (run_id,))
        report = {
            "shop.items": _quarantine_table(cur, "shop.items", "i", _rules(ITEM_RULES), run_id),
            "shop.events": _quarantine_table(cur, "shop.events", "e", _rules(EVENT_RULES), run_id),
        }
    failures = []
    for table, r in report.items():
        share = r["quarantined"] / r["read"] if r["read"] else 0.0
        r["bad_share"] = round(share, 6)
        if share > max_bad_share:
            top = ", ".join(f"{reason} ({n})" for reason, n in r["top_reasons"].items())
            failures.append(f"{table}: {r['quarantined']} of {r['read']} rows bad ({share:.2%}): {top}")
    if failures:
        raise ValidationFailed("validation refused the input: " + "; ".join(failures),
                               f"recsys.quarantine WHERE run_id = '{run_id}'; the bad-row threshold is "
                               f"{max_bad_share:.0%}")
    return report
