"""Run bookkeeping in ``recsys.runs`` and the run's artefact folder under RERANK_HOME."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime, time
from pathlib import Path

from pipeline.db.engine import connect
from pipeline.errors import ConfigError

#: The file in a run's folder that names the model it scores with and recall's priors (the evaluate_gate stage).
RUN_MODEL_FILE = "model.json"


def parse_as_of(value: str | date | datetime | None) -> datetime:
    """A run's as_of as an aware UTC datetime; a bare date means its midnight (events before that day end)."""
    if value is None:
        now = datetime.now(UTC)
        return datetime.combine(now.date(), time(0), tzinfo=UTC)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"as_of {value!r} is not an ISO date or datetime", "use e.g. 2026-11-24") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def config_digest(config: dict) -> str:
    """A short digest of the settings that shape a run's output (stored with the run)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]


def make_run_id(dag: str, as_of: datetime) -> str:
    """Deterministic per DAG and as_of, so re-running a date replaces that date's run (no duplicates).

    Whole minutes keep the short form (``nightly_20261124T0000``); seconds and microseconds are appended
    only when set, so two different as_of values (e.g. manual triggers a few seconds apart) never share one.
    """
    short = {"rerank_nightly": "nightly", "rerank_refresh": "refresh"}.get(dag, dag)
    t = as_of.astimezone(UTC)
    suffix = f"{t:%S%f}" if t.microsecond else f"{t:%S}" if t.second else ""
    return f"{short}_{t:%Y%m%dT%H%M}{suffix}"


def run_dir(home: str | Path, run_id: str) -> Path:
    path = Path(home).expanduser().resolve() / "runs" / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_run(url: str, *, dag: str, as_of: datetime, params: dict | None = None) -> str:
    """Record (or restart) a run; returns its run_id."""
    run_id = make_run_id(dag, as_of)
    stats = {"params": params or {}, "stages": {}}
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO recsys.runs (run_id, dag, as_of, status, started_at, stats)
            VALUES (%s, %s, %s, 'running', now(), %s)
            ON CONFLICT (run_id) DO UPDATE
              SET status = 'running', started_at = now(), finished_at = NULL, stats = EXCLUDED.stats
            """,
            (run_id, dag, as_of, json.dumps(stats)),
        )
    return run_id


def record_stage(url: str, run_id: str, stage: str, info: dict) -> None:
    """Merge one stage's timings and counts into the run's stats."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            """
            UPDATE recsys.runs
               SET stats = jsonb_set(stats, '{stages}', coalesce(stats->'stages', '{}'::jsonb) || %s::jsonb)
             WHERE run_id = %s
            """,
            (json.dumps({stage: info}, default=str), run_id),
        )


def finish_run(url: str, run_id: str, status: str, error: str | None = None) -> None:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            """
            UPDATE recsys.runs SET status = %s, finished_at = now(),
                   stats = CASE WHEN %s::text IS NOT NULL THEN stats || jsonb_build_object('error', %s::text)
                                -- a run completed after a failure (cleared task, --stage) keeps no stale error
                                WHEN %s = 'success' THEN stats - 'error'
                                ELSE stats END
             WHERE run_id = %s
            """,
            (status, error, error, status, run_id),
        )


def run_stats(url: str, run_id: str) -> dict:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, stats FROM recsys.runs WHERE run_id = %s", (run_id,))
        row = cur.fetchone()
    return {"status": row[0], **row[1]} if row else {}
