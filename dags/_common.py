"""Wiring helpers shared by the DAG files: connection -> URL, params -> plain values. No heavy imports."""

from __future__ import annotations

from datetime import timedelta

DEFAULT_ARGS = {
    "owner": "ecom-rerank",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(hours=2),
}


def database_url() -> str:
    """The Airflow connection ``rerank_postgres`` as a libpq URI, else RERANK_DATABASE_URL / embedded."""
    try:
        from airflow.sdk import Connection

        conn = Connection.get("rerank_postgres")
        uri = conn.get_uri()
        return uri.replace("postgres://", "postgresql://", 1)
    except Exception:  # no such connection: the pipeline's own resolution
        from pipeline.db.engine import database_url as pipeline_url

        return pipeline_url()


def rerank_home() -> str:
    from pipeline.settings import get_settings

    return str(get_settings().home_path)


def as_of_from(context: dict) -> str:
    """The run's as_of: the ``as_of`` param, else the data interval's end, else the run's logical time."""
    from pipeline.runs import parse_as_of

    given = (context.get("params") or {}).get("as_of")
    if given:
        return parse_as_of(given).isoformat()
    ts = context.get("data_interval_end") or context.get("logical_date") or context["dag_run"].run_after
    return parse_as_of(ts).isoformat()
