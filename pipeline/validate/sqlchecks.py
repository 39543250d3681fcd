"""Row-level checks of the source tables, written once in SQL so that quarantine, extraction and GX agree.

Each rule is a :class:`Rule`: a reason and a SQL predicate that is TRUE for a bad row. Predicates use only
the row's own, unqualified columns (cross-table checks are ``IN (SELECT ...)`` subqueries), so the same
text works in ``recsys.quarantine``'s INSERT, in the extraction query and inside a Great Expectations
``UnexpectedRowsExpectation`` (whose ``{batch}`` is an anonymous subquery).

``quarantine_source`` stores every bad row with all its reasons in ``recsys.quarantine``, once: a row already
there (same source, same md5 of the whole row) is not copied again, so a re-run, or the next night, adds
nothing for rows it has seen. Events are scanned only above the last successful validation's ``event_id``
mark (``recsys.validation_state``), with a periodic full pass: the shop's events are taken as append-only,
and an event edited in place, or committed late below the mark, is caught by the next full pass. Extraction
reads ``NOT (any rule)`` over its own range whatever validation scanned. Quarantine rows older than the
retention are pruned (a row still bad is quarantined again by a later pass that scans it).

Events at or after a run's ``as_of`` are not bad, only outside the run's window (an earlier ``as_of`` is
replayed over today's table): they are counted as ``after_as_of`` and left out by extraction. Timestamps
later than the wall clock plus one day, or before ``ts_floor``, are bad.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from psycopg2 import sql

from pipeline.db.engine import connect
from pipeline.errors import InputDataError
from pipeline.frames import EVENT_TYPES

#: Default floor for event and row timestamps (older is a corrupt or defaulted clock).
TS_FLOOR = "1990-01-01"
#: Slack for clock skew before a timestamp counts as "in the future".
FUTURE_SLACK = timedelta(days=1)
#: Sane maximum lengths of free-text columns (characters).
MAX_LEN = {"title": 2000, "description": 100_000, "category": 500, "brand": 500, "query": 1000,
           "session_id": 200}
# C0 control characters (other than tab, LF, CR) and U+FFFD (what a lossy UTF-8 decode leaves behind).
BAD_CHARS = r"[\x01-\x08\x0B\x0C\x0E-\x1F\uFFFD]"


@dataclass(frozen=True)
class Rule:
    """One row-level check. ``kind``/``column``/``args`` name the native GX expectation that mirrors it."""

    reason: str
    predicate: str
    kind: str = "rows"  # rows | not_null | unique | in_set | min | max | max_length
    column: str | None = None
    args: tuple = ()


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def future_cutoff(now: datetime | None = None) -> datetime:
    """The instant after which a timestamp is "in the future" (wall clock plus slack, whole seconds)."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    return now + FUTURE_SLACK


def _ts_rules(col: str, ts_floor: str, cutoff: datetime, *, label: str) -> list[Rule]:
    return [
        Rule(f"{label} is null", f"{col} IS NULL", "not_null", col),
        Rule(f"{label} before {ts_floor}", f"{col} < {_q(ts_floor)}::timestamptz", "min", col, (ts_floor,)),
        Rule(f"{label} in the future", f"{col} > {_q(cutoff.isoformat())}::timestamptz", "max", col,
             (cutoff.isoformat(),)),
    ]


def _too_long(col: str) -> Rule:
    n = MAX_LEN[col]
    return Rule(f"{col} longer than {n} characters", f"length({col}) > {n}", "max_length", col, (n,))


def _dup(table: str, key: str) -> Rule:
    return Rule(f"{key} duplicated", f"{key} IN (SELECT {key} FROM {table} GROUP BY {key} HAVING count(*) > 1)",
                "unique", key)


def user_rules(*, ts_floor: str = TS_FLOOR, cutoff: datetime | None = None) -> list[Rule]:
    """Rules for ``shop.users``."""
    cutoff = cutoff or future_cutoff()
    return [
        Rule("user_id is null", "user_id IS NULL", "not_null", "user_id"),
        _dup("shop.users", "user_id"),
        *_ts_rules("created_at", ts_floor, cutoff, label="created_at"),
    ]


def item_rules(*, ts_floor: str = TS_FLOOR, cutoff: datetime | None = None, unique_proven: bool = False) -> list[Rule]:
    """Rules for ``shop.items`` (``unique_proven``: the catalog shows a unique index on item_id)."""
    cutoff = cutoff or future_cutoff()
    rules = [Rule("item_id is null", "item_id IS NULL", "not_null", "item_id")]
    if not unique_proven:
        rules.append(_dup("shop.items", "item_id"))
    rules += [
        Rule("empty title", "coalesce(btrim(title), '') = ''"),
        _too_long("title"),
        Rule("title has control or replacement characters", f"title ~ '{BAD_CHARS}'"),
        _too_long("description"),
        Rule("description has control or replacement characters", f"description ~ '{BAD_CHARS}'"),
        Rule("empty category", "coalesce(btrim(category), '') = ''"),
        _too_long("category"),
        _too_long("brand"),
        Rule("price < 0", "price < 0", "min", "price", (0,)),
        Rule("created_at in the future", f"created_at > {_q(cutoff.isoformat())}::timestamptz", "max",
             "created_at", (cutoff.isoformat(),)),
    ]
    return rules


def _bad_items_subquery(ts_floor: str, cutoff: datetime) -> str:
    preds = [r.predicate for r in item_rules(ts_floor=ts_floor, cutoff=cutoff, unique_proven=True)
             if r.reason != "item_id is null"]
    return ("SELECT item_id FROM shop.items WHERE item_id IS NOT NULL AND ("
            + " OR ".join(f"coalesce(({p}), false)" for p in preds) + ")")


def event_rules(*, ts_floor: str = TS_FLOOR, cutoff: datetime | None = None, unique_proven: bool = False,
                items_unique_proven: bool = True) -> list[Rule]:
    """Rules for ``shop.events`` (skip the duplicate-id scan when the catalog proves event_id unique)."""
    cutoff = cutoff or future_cutoff()
    types = ", ".join(_q(t) for t in EVENT_TYPES)
    rules = [Rule("event_id is null", "event_id IS NULL", "not_null", "event_id")]
    if not unique_proven:
        rules.append(_dup("shop.events", "event_id"))
    bad_items = _bad_items_subquery(ts_floor, cutoff)
    if not items_unique_proven:
        bad_items += " OR item_id IN (SELECT item_id FROM shop.items GROUP BY item_id HAVING count(*) > 1)"
    rules += [
        Rule("user_id is null", "user_id IS NULL", "not_null", "user_id"),
        Rule("event_type is null", "event_type IS NULL", "not_null", "event_type"),
        Rule("event_type not in the allowed set", f"event_type NOT IN ({types})", "in_set", "event_type",
             tuple(EVENT_TYPES)),
        *_ts_rules("ts", ts_floor, cutoff, label="ts"),
        Rule("item_id missing on a non-search event", "event_type <> 'search' AND item_id IS NULL"),
        Rule("item_id not in shop.items",
             "event_type <> 'search' AND item_id IS NOT NULL AND item_id NOT IN "
             "(SELECT item_id FROM shop.items WHERE item_id IS NOT NULL)"),
        Rule("item_id refers to a quarantined item",
             f"event_type <> 'search' AND item_id IS NOT NULL AND item_id IN ({bad_items})"),
        Rule("search without a query", "event_type = 'search' AND coalesce(btrim(query), '') = ''"),
        _too_long("query"),
        _too_long("session_id"),
        Rule("quantity is null", "quantity IS NULL", "not_null", "quantity"),
        Rule("quantity < 1", "quantity < 1", "min", "quantity", (1,)),
    ]
    return rules


# Kept for callers of the walking skeleton: (reason, predicate) pairs at import time.
EVENT_RULES: list[tuple[str, str]] = [(r.reason, r.predicate) for r in event_rules()]
ITEM_RULES: list[tuple[str, str]] = [(r.reason, r.predicate) for r in item_rules()]


def any_bad(rules: list[Rule]) -> str:
    """SQL boolean: the row breaks at least one rule (NULL-safe)."""
    return "(" + " OR ".join(f"coalesce(({r.predicate}), false)" for r in rules) + ")"


def clean_events_predicate(*, ts_floor: str = TS_FLOOR, unique_proven: bool = False,
                           items_unique_proven: bool = True, cutoff: datetime | None = None) -> str:
    """SQL boolean for a clean row of ``shop.events`` (constant text, no user values)."""
    return "NOT " + any_bad(event_rules(ts_floor=ts_floor, unique_proven=unique_proven,
                                        items_unique_proven=items_unique_proven, cutoff=cutoff))


#: Event rules that depend on ``shop.items``: a row they refuse may turn clean once its item is loaded or fixed.
ITEM_DEPENDENT = ("item_id not in shop.items", "item_id refers to a quarantined item")


def deferrable_events_predicate(*, ts_floor: str = TS_FLOOR, items_unique_proven: bool = True,
                                cutoff: datetime | None = None) -> str:
    """SQL boolean: the ``shop.events`` row breaks an item-dependent rule (:data:`ITEM_DEPENDENT`). With the
    same ``cutoff`` as :func:`clean_events_predicate`, such a row is never clean."""
    return any_bad([r for r in event_rules(ts_floor=ts_floor, items_unique_proven=items_unique_proven,
                                           cutoff=cutoff) if r.reason in ITEM_DEPENDENT])


def clean_items_predicate(*, ts_floor: str = TS_FLOOR, unique_proven: bool = False) -> str:
    """SQL boolean for a clean row of ``shop.items``."""
    return "NOT " + any_bad(item_rules(ts_floor=ts_floor, unique_proven=unique_proven))


def clean_users_predicate(*, ts_floor: str = TS_FLOOR, unique_proven: bool = False) -> str:
    """SQL boolean for a clean row of ``shop.users``."""
    rules = [r for r in user_rules(ts_floor=ts_floor) if unique_proven is False or r.kind != "unique"]
    return "NOT " + any_bad(rules)


def proven_unique(cur, table: str, column: str) -> bool:
    """True when ``table`` is a table with a unique index on exactly ``column`` (so no duplicate scan)."""
    cur.execute(
        """
        SELECT EXISTS (
          SELECT 1 FROM pg_index x
            JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
           WHERE x.indrelid = to_regclass(%s) AND x.indisunique AND x.indnatts = 1 AND x.indpred IS NULL
             AND a.attname = %s)
        """,
        (table, column),
    )
    return bool(cur.fetchone()[0])


def source_rules(cur, *, ts_floor: str = TS_FLOOR, cutoff: datetime | None = None) -> dict[str, list[Rule]]:
    """Rules per source table, with duplicate scans dropped where the catalog proves uniqueness."""
    cutoff = cutoff or future_cutoff()
    for t in ("shop.users", "shop.items", "shop.events"):
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (t,))
        if not cur.fetchone()[0]:
            raise InputDataError(f"source relation {t} does not exist",
                                 "the shop schema (rerank db migrate) or your mapping views")
    items_unique = proven_unique(cur, "shop.items", "item_id")
    users = user_rules(ts_floor=ts_floor, cutoff=cutoff)
    if proven_unique(cur, "shop.users", "user_id"):
        users = [r for r in users if r.kind != "unique"]
    return {
        "shop.users": users,
        "shop.items": item_rules(ts_floor=ts_floor, cutoff=cutoff, unique_proven=items_unique),
        "shop.events": event_rules(ts_floor=ts_floor, cutoff=cutoff,
                                   unique_proven=proven_unique(cur, "shop.events", "event_id"),
                                   items_unique_proven=items_unique),
    }


def quarantine_table(cur, table: str, rules: list[Rule], run_id: str, scope: str | None = None) -> dict:
    """Count every rule in one scan of ``table`` (only its rows matching ``scope``, when given) and quarantine
    the bad rows, with all their reasons, once: a row already in ``recsys.quarantine`` (same source, same
    ``row_key``, the md5 of the whole row) is not copied again.

    ``read``/``clean``/``quarantined`` are over the rows scanned (``quarantined``: bad rows found, whether new
    or already stored); ``newly_quarantined`` counts the rows this call added.
    """
    schema, name = table.split(".")
    tbl = sql.Identifier(schema, name)
    where = sql.SQL(scope or "true")
    bad = sql.SQL(any_bad(rules))
    counts = sql.SQL(", ").join(
        sql.SQL("count(*) FILTER (WHERE coalesce(({}), false))").format(sql.SQL(r.predicate)) for r in rules)
    cur.execute(sql.SQL("SELECT count(*), count(*) FILTER (WHERE {}), {} FROM {} WHERE {}").format(
        bad, counts, tbl, where))
    row = cur.fetchone()
    read, bad_rows, per_rule = int(row[0]), int(row[1]), [int(x) for x in row[2:]]
    reasons = sql.SQL(", ").join(
        sql.SQL("CASE WHEN coalesce(({}), false) THEN {} END").format(sql.SQL(r.predicate), sql.Literal(r.reason))
        for r in rules)
    cur.execute(
        sql.SQL("INSERT INTO recsys.quarantine (source, raw, reason, run_id, row_key) "
                "SELECT {src}, to_jsonb(t), concat_ws('; ', {reasons}), {run}, md5(to_jsonb(t)::text) "
                "FROM {tbl} t WHERE ({where}) AND {bad} "
                "ON CONFLICT (source, row_key) WHERE row_key IS NOT NULL DO NOTHING").format(
            src=sql.Literal(table), reasons=reasons, run=sql.Literal(run_id), tbl=tbl, where=where, bad=bad)
    )
    added = cur.rowcount
    by_reason = {r.reason: n for r, n in zip(rules, per_rule, strict=True) if n}
    top = dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))[:3])
    return {"read": read, "clean": read - bad_rows, "quarantined": bad_rows, "newly_quarantined": added,
            "top_reasons": top, "reasons": by_reason}


def count_after(cur, as_of: datetime, clean_pred: str) -> int:
    """Clean events at or after ``as_of``: outside the run's window, not bad."""
    cur.execute(sql.SQL("SELECT count(*) FROM shop.events WHERE ts >= %s AND {}").format(sql.SQL(clean_pred)),
                (as_of,))
    return int(cur.fetchone()[0])


#: The table whose validation runs above a high-water mark (users and items are small: always scanned whole).
MARKED = "shop.events"


def _row_print(cur, event_id: int | None) -> str | None:
    """md5 of the event(s) with ``event_id`` (a primary-key lookup): tells the mark's row from a re-imported one."""
    if event_id is None:
        return None
    cur.execute("SELECT md5(string_agg(to_jsonb(e)::text, ',' ORDER BY to_jsonb(e)::text)) FROM shop.events e "
                "WHERE event_id = %s", (event_id,))
    return cur.fetchone()[0]


def events_scope(cur, *, full_every_days: int = 7) -> dict:
    """Decide this pass over ``shop.events``: ``full`` or ``incremental`` (event ids above the last successful
    validation's mark, plus any null id).

    Full when: no mark yet (first run), ``full_every_days`` is 0 or the last full pass is that old, or the
    event at the mark is gone or changed (the shop was re-imported or regenerated, its ids start afresh).
    Returns ``mode``, ``reason`` (why full), ``after_event_id`` (the mark read), ``through_event_id`` and
    ``through_row`` (the mark and its row's fingerprint, stored on success) and ``where`` (the SQL scope, or
    None for the whole table)."""
    cur.execute("SELECT high_water, high_water_row, (last_full_at IS NULL OR now() - last_full_at >= "
                "make_interval(days => %s)) FROM recsys.validation_state WHERE source = %s",
                (full_every_days, MARKED))
    state = cur.fetchone()
    cur.execute("SELECT max(event_id) FROM shop.events")
    top = cur.fetchone()[0]
    reason = None
    if state is None or state[0] is None:
        reason = "first validation"
    elif full_every_days == 0 or state[2]:
        reason = f"full pass due (every {full_every_days} days)"
    elif _row_print(cur, int(state[0])) != state[1]:
        reason = f"the event at the mark ({state[0]}) is gone or changed: the shop was replaced"
    if reason:
        return {"mode": "full", "reason": reason, "after_event_id": None if state is None else state[0],
                "through_event_id": top, "through_row": _row_print(cur, top), "where": None}
    mark = int(state[0])
    through = max(mark, int(top)) if top is not None else mark
    return {"mode": "incremental", "reason": None, "after_event_id": mark, "through_event_id": through,
            "through_row": _row_print(cur, through), "where": f"(event_id > {mark} OR event_id IS NULL)"}


def advance_mark(url: str, run_id: str, scope: dict) -> None:
    """Store the mark of a validation that passed (a full pass also restarts the full-pass clock)."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO recsys.validation_state (source, high_water, high_water_row, last_full_at, run_id,
                                                 updated_at)
            VALUES (%(src)s, %(hw)s, %(row)s, CASE WHEN %(full)s THEN now() END, %(run)s, now())
            ON CONFLICT (source) DO UPDATE SET
              high_water = EXCLUDED.high_water, high_water_row = EXCLUDED.high_water_row,
              last_full_at = coalesce(EXCLUDED.last_full_at, recsys.validation_state.last_full_at),
              run_id = EXCLUDED.run_id, updated_at = now()
            """,
            {"src": MARKED, "hw": scope["through_event_id"], "row": scope["through_row"],
             "full": scope["mode"] == "full", "run": run_id})


def prune_quarantine(cur, retention_days: int) -> int:
    """Delete quarantine rows older than ``retention_days`` (0 keeps everything); return how many."""
    if retention_days <= 0:
        return 0
    cur.execute("DELETE FROM recsys.quarantine WHERE created_at < now() - make_interval(days => %s)",
                (retention_days,))
    return cur.rowcount


def quarantine_source(url: str, run_id: str, as_of: datetime, *, ts_floor: str = TS_FLOOR,
                      cutoff: datetime | None = None, full_every_days: int = 7,
                      retention_days: int = 30) -> tuple[dict, dict[str, list[Rule]]]:
    """Quarantine the bad rows of the shop tables (events: only the range :func:`events_scope` picks) and prune
    quarantine rows past ``retention_days``; return per-table counts (``shop.events`` also has ``scope``:
    mode and event-id range) plus ``quarantine_pruned``, and the rules used."""
    with connect(url) as conn, conn.cursor() as cur:
        # One snapshot for every count and insert: with the shop writing meanwhile, clean + quarantined = read.
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        rules = source_rules(cur, ts_floor=ts_floor, cutoff=cutoff)
        scope = events_scope(cur, full_every_days=full_every_days)
        pruned = prune_quarantine(cur, retention_days)
        report: dict = {t: quarantine_table(cur, t, r, run_id, scope["where"] if t == MARKED else None)
                        for t, r in rules.items()}
        report[MARKED]["scope"] = scope
        report[MARKED]["after_as_of"] = count_after(cur, as_of, "NOT " + any_bad(rules[MARKED]))
        report["quarantine_pruned"] = pruned
    return report, rules
