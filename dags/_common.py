"""Wiring shared by the DAG files: defaults, Assets, the database URL, params -> plain values, callbacks.

Only light imports at module level (the dag-processor parses these files often); ``pipeline`` and
everything heavy is imported inside the functions that tasks call.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from airflow.sdk import Asset, Param

log = logging.getLogger(__name__)

#: The Airflow connection that names the shop's Postgres (falls back to RERANK_DATABASE_URL).
CONN_ID = "rerank_postgres"
#: Pool that serialises training on the GPU(s): create it with as many slots as there are GPUs.
GPU_POOL = "gpu"
GPU_POOL_SLOTS = 1
GPU_POOL_DESCRIPTION = "ecom-rerank ranker training: one slot per GPU"
#: Pod template for training under the KubernetesExecutor (baked into the image; other executors ignore it).
GPU_POD_TEMPLATE = "/opt/rerank/pod_templates/gpu.yaml"

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "ecom-rerank",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(hours=1),
}

#: execution_timeout per stage task; generous bounds for a large shop, so a hung task fails and retries.
TIMEOUTS: dict[str, timedelta] = {
    "begin": timedelta(minutes=10),
    "validate": timedelta(minutes=45),
    "extract": timedelta(hours=1),
    "item_features": timedelta(hours=1),
    "user_features": timedelta(minutes=45),
    "cf_build": timedelta(hours=1, minutes=30),
    "train_ranker": timedelta(hours=3),
    "evaluate_gate": timedelta(minutes=45),
    "score_users": timedelta(hours=3),
    "quality_gate": timedelta(minutes=20),
    "publish": timedelta(hours=1),
    "report": timedelta(minutes=15),
}

#: A nightly run still going after this is failed (its tasks stopped), so a hung run cannot hold
#: ``max_active_runs=1`` and block the next day's run; the stage timeouts' critical path is about 12 h.
NIGHTLY_DAGRUN_TIMEOUT = timedelta(hours=20)

#: pipeline.errors classes (by name: no pipeline import at parse time) whose failure a retry cannot change:
#: bad settings or params, too many bad input rows, a refused output quality gate, a missing schema. A task
#: failing with one of them fails at once (AirflowFailException), without its retries.
NON_RETRYABLE = ("ConfigError", "ValidationFailed", "QualityGateFailed", "MigrationError", "InputDataError")

#: libpq parameters an Airflow connection's extras may carry into the URL (others are Airflow's own).
LIBPQ_EXTRAS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout", "options", "application_name",
                "target_session_attrs", "keepalives", "keepalives_idle")

#: The published read view, updated by every successful (non dry-run) publish.
RECS_ASSET = Asset(name="rerank.recsys.user_recommendations", uri="x-rerank://recsys/user_recommendations",
                   group="ecom-rerank")

#: ISO date or datetime (what pipeline.runs.parse_as_of accepts); jsonschema's date-time format is not
#: enforced without an extra package, so the shape is a pattern.
AS_OF_PATTERN = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$"


def fail_fast(fn: Callable) -> Callable:
    """Wrap a task's callable: a :data:`NON_RETRYABLE` pipeline error becomes ``AirflowFailException`` (the
    task fails for good on its first try, its failure callback still runs); anything else is retried."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            from pipeline import errors

            if isinstance(exc, tuple(getattr(errors, name) for name in NON_RETRYABLE)):
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException(f"{type(exc).__name__}: {exc} (not retried: a retry cannot change "
                                           "it)") from exc
            raise

    return wrapper


def stage_asset(dag: str, stage: str) -> Asset:
    """The Asset a stage task of ``dag`` updates; downstream DAGs schedule on ``Asset.ref(name=...)``."""
    return Asset(name=f"rerank.{dag}.{stage}", uri=f"x-rerank://{dag}/{stage}", group="ecom-rerank")


def nightly_params() -> dict[str, Param]:
    """Params of rerank_nightly, each with its JSON schema (a bad trigger conf is rejected)."""
    return {
        "as_of": Param(None, type=["null", "string"], pattern=AS_OF_PATTERN,
                       description="Use events before this time (ISO date or datetime, UTC if no offset); "
                                   "default: the data interval's end"),
        "retrain": Param(True, type="boolean", description="Train a candidate ranker (else score with the champion)"),
        "user_ids": Param([], type="array", items={"type": "integer", "minimum": 0}, uniqueItems=True,
                          description="Re-score only these users (others keep their live lists); empty: all"),
        # Default from RERANK_TOP_N (read from the environment: no pipeline import at parse time), so nightly lists
        # and the refresh overlay have the same length.
        "top_n": Param(int(os.environ.get("RERANK_TOP_N", "50")), type="integer", minimum=1, maximum=1000,
                       description="Length of each published list"),
        "dry_run": Param(False, type="boolean", description="Run every stage but do not swap the read views"),
    }


def connection_url(conn: Any) -> str:
    """An Airflow Postgres connection as a libpq URI (``postgresql://``), keeping only libpq extras."""
    auth = ""
    if conn.login:
        auth = quote(conn.login, safe="")
        if conn.password:
            auth += ":" + quote(conn.password, safe="")
        auth += "@"
    host = conn.host or "localhost"
    port = f":{conn.port}" if conn.port else ""
    extras = {k: str(v) for k, v in (conn.extra_dejson or {}).items() if k in LIBPQ_EXTRAS}
    query = f"?{urlencode(extras)}" if extras else ""
    return f"postgresql://{auth}{host}{port}/{quote(conn.schema or 'postgres', safe='')}{query}"


def database_url() -> str:
    """The connection ``rerank_postgres`` as a libpq URI; without it RERANK_DATABASE_URL (or the embedded server)."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return connection_url(Connection.get(CONN_ID))
    except AirflowNotFoundException:
        from pipeline.db.engine import database_url as pipeline_url

        return pipeline_url()


def rerank_home() -> str:
    from pipeline.settings import get_settings

    return str(get_settings().home_path)


def dask_address() -> str | None:
    """RERANK_DASK_ADDRESS (an external scheduler) or None (each Dask stage starts a LocalCluster)."""
    from pipeline.settings import get_settings

    return get_settings().dask_address


def as_of_from(context: dict) -> str:
    """The run's as_of: the ``as_of`` param, else the data interval's end, else the run's logical time."""
    from pipeline.runs import parse_as_of

    given = (context.get("params") or {}).get("as_of")
    if given:
        return parse_as_of(given).isoformat()
    ts = context.get("data_interval_end") or context.get("logical_date") or context["dag_run"].run_after
    return parse_as_of(ts).isoformat()


def unpack(run: dict) -> tuple[str, datetime]:
    """``begin``'s result: the run id and the run's as_of, parsed once there and handed to every stage."""
    from pipeline.runs import parse_as_of

    return run["run_id"], parse_as_of(run["as_of"])


def emit(context: dict, asset: Asset, run_id: str, out: dict | None = None) -> None:
    """Attach the run id and the stage's scalar counts to the Asset event (what a downstream DAG sees)."""
    extra: dict[str, Any] = {"run_id": run_id}
    for k, v in (out or {}).items():
        if isinstance(v, bool | int | float | str) or v is None:
            extra[k] = v
    events = context.get("outlet_events")
    if events is not None:  # None when called outside a task runner
        events[asset].extra = extra


def _run_id(context: dict) -> str:
    """The run id from ``begin``'s XCom, else from the DAG id and as_of (when ``begin`` itself failed)."""
    from pipeline.runs import make_run_id, parse_as_of

    pulled = context["ti"].xcom_pull(task_ids="begin")
    run_id = pulled.get("run_id") if isinstance(pulled, dict) else pulled
    return run_id or make_run_id(context["dag"].dag_id, parse_as_of(as_of_from(context)))


def mark_run_failed(context: dict) -> None:
    """Task failure callback: mark the run ``failed`` in recsys.runs (the previous publication stays live),
    write its report and route the failure (``pipeline.reporting.alerts.run_failed``: log ``pipeline.alerts``,
    recsys.runs, RERANK_ALERT_WEBHOOK). A callback never raises: a problem here is logged, the task's own error
    is the one that matters.
    """
    try:
        from pipeline.runs import run_stats

        ti = context["ti"]
        url = database_url()
        run_id = _run_id(context)
        if not run_stats(url, run_id):
            return
        from pipeline.reporting.alerts import run_failed

        run_failed(url, rerank_home(), run_id, ti.task_id, context.get("exception"))
    except Exception:  # noqa: BLE001 - see docstring
        log.exception("could not mark the run failed in recsys.runs")


def warn_on_retry(context: dict) -> None:
    """Task retry callback: route a warning (the task failed once and will run again); never raises."""
    try:
        from pipeline.reporting.alerts import notify

        ti = context["ti"]
        notify(database_url(), _run_id(context), "warning",
               f"{ti.task_id} failed and will be retried: {context.get('exception')}", source=ti.task_id)
    except Exception:  # noqa: BLE001
        log.exception("could not route the retry warning")


def route_report_warnings(context: dict) -> None:
    """Success callback of ``report``: route each warning of the run's report (input drift, slow stages,
    coverage); never raises."""
    try:
        from pipeline.reporting.alerts import route_warnings

        ti = context["ti"]
        out = ti.xcom_pull(task_ids=ti.task_id) or {}
        route_warnings(database_url(), _run_id(context), list(out.get("warnings") or []))
    except Exception:  # noqa: BLE001
        log.exception("could not route the report's warnings")


#: The nightly DAG's callbacks (its ``default_args``). An operator routes them elsewhere by adding Airflow
#: notifiers here (e.g. ``[mark_run_failed, SlackNotifier(...)]``) or by routing the ``pipeline.alerts`` logger
#: or setting RERANK_ALERT_WEBHOOK.
NIGHTLY_CALLBACKS: dict[str, list[Callable]] = {"on_failure_callback": [mark_run_failed],
                                                "on_retry_callback": [warn_on_retry]}
#: Callbacks of the ``report`` task on success: its warnings are routed like failures.
REPORT_SUCCESS_CALLBACKS: list[Callable] = [route_report_warnings]
