"""The model registry in ``recsys.models`` (candidate | champion | retired) and its three verbs.

``promote`` and ``rollback`` change statuses in one transaction (the unique index on the champion status
makes two champions impossible). Promotion history lives in each row's ``metrics`` jsonb
(``promoted_at``, ``retired_at``, ``rolled_back``), so ``rollback`` can find the champion before the
current one without another table.
"""

from __future__ import annotations

import json
from datetime import datetime

from pipeline.db.engine import connect
from pipeline.errors import ModelError

_COLUMNS = ("model_version", "trained_at", "metrics", "artifact_uri", "status", "run_id")


def _rows(cur) -> list[dict]:  # noqa: ANN001 - psycopg2 cursor
    return [dict(zip(_COLUMNS, r, strict=True)) for r in cur.fetchall()]


def list_models(url: str) -> list[dict]:
    """Every registered model, newest first (model_version, trained_at, metrics, artifact_uri, status, run_id)."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(_COLUMNS)} FROM recsys.models ORDER BY trained_at DESC, model_version DESC")
        return _rows(cur)


def get_model_row(url: str, version: str) -> dict | None:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(_COLUMNS)} FROM recsys.models WHERE model_version = %s", (version,))
        rows = _rows(cur)
    return rows[0] if rows else None


def champion(url: str) -> dict | None:
    """The champion's row, or None before the first promotion."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(_COLUMNS)} FROM recsys.models WHERE status = 'champion'")
        rows = _rows(cur)
    return rows[0] if rows else None


def register_candidate(url: str, version: str, artifact_uri: str, metrics: dict, *, run_id: str | None = None,
                       trained_at: datetime | None = None) -> dict:
    """Insert (or refresh, when a run is repeated) a candidate row; a champion keeps its status."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO recsys.models (model_version, trained_at, metrics, artifact_uri, status, run_id)
            VALUES (%s, coalesce(%s, now()), %s, %s, 'candidate', %s)
            ON CONFLICT (model_version) DO UPDATE
              SET trained_at = EXCLUDED.trained_at, artifact_uri = EXCLUDED.artifact_uri, run_id = EXCLUDED.run_id,
                  metrics = recsys.models.metrics || EXCLUDED.metrics
            RETURNING status
            """,
            (version, trained_at, json.dumps(metrics, default=float), artifact_uri, run_id),
        )
        status = cur.fetchone()[0]
    return {"model_version": version, "status": status}


def update_metrics(url: str, version: str, extra: dict) -> None:
    """Merge ``extra`` into a model's metrics (e.g. the gate's verdict)."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE recsys.models SET metrics = metrics || %s WHERE model_version = %s",
                    (json.dumps(extra, default=float), version))


def promote(url: str, version: str) -> dict:
    """Make ``version`` the champion; the previous champion becomes retired. Idempotent."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM recsys.models WHERE model_version = %s FOR UPDATE", (version,))
        row = cur.fetchone()
        if row is None:
            raise ModelError(f"no model {version!r} in recsys.models", "`rerank models list` shows the versions")
        if row[0] == "champion":
            return {"champion": version, "previous": None, "changed": False}
        cur.execute("SELECT model_version FROM recsys.models WHERE status = 'champion' FOR UPDATE")
        prev = cur.fetchone()
        if prev:
            cur.execute("UPDATE recsys.models SET status = 'retired', metrics = metrics || "
                        "jsonb_build_object('retired_at', clock_timestamp()::text) WHERE model_version = %s",
                        (prev[0],))
        cur.execute("UPDATE recsys.models SET status = 'champion', metrics = (metrics - 'rolled_back') || "
                    "jsonb_build_object('promoted_at', clock_timestamp()::text) WHERE model_version = %s",
                    (version,))
    return {"champion": version, "previous": prev[0] if prev else None, "changed": True}


def rollback(url: str) -> dict:
    """Retire the champion (marked rolled back) and restore the most recently promoted earlier champion."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT model_version FROM recsys.models WHERE status = 'champion' FOR UPDATE")
        cur_row = cur.fetchone()
        if cur_row is None:
            raise ModelError("no champion to roll back", "`rerank models list` shows the registry")
        cur.execute("SELECT model_version FROM recsys.models WHERE status = 'retired' AND metrics ? 'promoted_at' "
                    "AND NOT coalesce((metrics->>'rolled_back')::boolean, false) "
                    "ORDER BY metrics->>'promoted_at' DESC LIMIT 1")
        prev = cur.fetchone()
        if prev is None:
            raise ModelError(f"{cur_row[0]} is the only model that was ever champion", "nothing to roll back to")
        cur.execute("UPDATE recsys.models SET status = 'retired', metrics = metrics || jsonb_build_object("
                    "'rolled_back', true, 'retired_at', clock_timestamp()::text) WHERE model_version = %s",
                    (cur_row[0],))
        cur.execute("UPDATE recsys.models SET status = 'champion', metrics = metrics || "
                    "jsonb_build_object('restored_at', clock_timestamp()::text) WHERE model_version = %s", (prev[0],))
    return {"champion": prev[0], "rolled_back": cur_row[0]}
