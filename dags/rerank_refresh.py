"""
### rerank_refresh

The near-real-time refresh of ecom-rerank, every minute: read the shop's events after the watermark
(`recsys.refresh_state`), rebuild the touched users' candidates from their fresh behaviour (neighbours of
just-viewed items, session intent, search queries) with the live nightly run's neighbours and champion
ranker, re-rank with the nightly rules, and replace their overlay rows in `recsys.recs_realtime` together
with the watermark, one transaction per batch (each event exactly once).

One task calls `pipeline.refresh.refresh_once`. `max_active_runs=1` and no catchup: a missed minute is
covered by the next run, which reads everything after the watermark. A Postgres advisory lock makes a run
back off (status `busy`) while `rerank refresh --follow` or another refresher works. For seconds-level
freshness run `rerank refresh --follow` instead (LISTEN/NOTIFY); both may run, never on the same users
at once.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from _common import DEFAULT_ARGS, database_url, fail_fast, rerank_home
from airflow.sdk import dag, task


@dag(
    dag_id="rerank_refresh",
    schedule=timedelta(minutes=1),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=10),
    default_args={**DEFAULT_ARGS, "retries": 2, "retry_delay": timedelta(seconds=10), "max_retry_delay":
                  timedelta(minutes=1), "execution_timeout": timedelta(minutes=5)},
    doc_md=__doc__,
    tags=["ecom-rerank"],
)
def rerank_refresh() -> None:
    @task
    @fail_fast
    def refresh() -> dict:
        from pipeline.refresh import refresh_once

        return refresh_once(database_url(), rerank_home())

    refresh()


rerank_refresh()
