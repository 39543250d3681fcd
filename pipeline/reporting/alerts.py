"""Routing of run warnings and failures: one function the DAG's callbacks (and ``rerank run nightly``) call.

``notify`` logs the alert on the logger ``pipeline.alerts`` (route it with the logging configuration of
Airflow or of the process), appends it to ``recsys.runs.stats->'alerts'`` of the run, and POSTs it as JSON to
``RERANK_ALERT_WEBHOOK`` when set. It never raises: an alert that cannot be delivered is logged, and the
run's own outcome is what matters.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

log = logging.getLogger("pipeline.alerts")

LEVELS = ("warning", "failure")


def notify(url: str | None, run_id: str | None, level: str, message: str, *, source: str = "",
           details: dict | None = None, webhook: str | None = None, timeout: float = 5.0) -> dict:
    """Record and route one alert; returns it (with ``delivered``: where it went)."""
    alert = {"level": level if level in LEVELS else "warning", "run_id": run_id, "source": source,
             "message": str(message)[:2000], "details": details or {}, "at": datetime.now(UTC).isoformat()}
    delivered = ["log"]
    (log.error if alert["level"] == "failure" else log.warning)("%s %s [%s]: %s", alert["level"], run_id, source,
                                                                alert["message"])
    if url and run_id:
        try:
            from pipeline.db.engine import connect

            with connect(url) as conn, conn.cursor() as cur:
                cur.execute("UPDATE recsys.runs SET stats = jsonb_set(stats, '{alerts}', "
                            "coalesce(stats->'alerts', '[]'::jsonb) || %s::jsonb) WHERE run_id = %s",
                            (json.dumps([alert], default=str), run_id))
                if cur.rowcount:
                    delivered.append("recsys.runs")
        except Exception:  # noqa: BLE001 - see the module docstring
            log.exception("could not record the alert in recsys.runs")
    if webhook is None:
        try:
            from pipeline.settings import get_settings

            webhook = get_settings().alert_webhook
        except Exception:  # noqa: BLE001 - a settings problem must not hide the alert
            webhook = None
    if webhook:
        import urllib.request

        try:
            req = urllib.request.Request(webhook, data=json.dumps(alert, default=str).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(req, timeout=timeout):  # noqa: S310 - an operator-given URL
                delivered.append("webhook")
        except Exception:  # noqa: BLE001
            log.exception("could not POST the alert to RERANK_ALERT_WEBHOOK")
    return {**alert, "delivered": delivered}


def run_failed(url: str, home: str | None, run_id: str, source: str, error: object) -> dict:
    """A run failed in ``source`` (a task or stage): mark it ``failed`` in recsys.runs (the previous publication
    stays live), write its report with what it has (best effort) and route the failure; never raises."""
    from pipeline import runs

    message = f"{source}: {error}"
    try:
        runs.finish_run(url, run_id, "failed", message)
    except Exception:  # noqa: BLE001
        log.exception("could not mark the run %s failed", run_id)
    page = None
    if home:
        try:
            from pipeline.reporting.run_report import write_run_report

            page = write_run_report(url, home, run_id)["report_html"]
        except Exception:  # noqa: BLE001 - the failure is the news, not the report
            log.exception("could not write the report of the failed run %s", run_id)
    return notify(url, run_id, "failure", message, source=source, details={"report_html": page})


def route_warnings(url: str, run_id: str, warnings: list[str], *, source: str = "report") -> list[dict]:
    """Route each of a run's warnings (the report's drift, slow stages, coverage) through :func:`notify`."""
    return [notify(url, run_id, "warning", w, source=source) for w in warnings or []]
