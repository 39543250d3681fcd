"""
### rerank_nightly

The nightly run of ecom-rerank: validate the shop's data, extract a snapshot on Dask, build item/user
features and the CF neighbours, (re)train and gate the ranker, recall + score + re-rank every user in Dask
shards, check the output quality gate, publish atomically (the `recsys.user_recommendations` view swaps in
one transaction) and write the run's report.

Every task calls one function of `pipeline.nightly` with explicit arguments; big data stays in Postgres
and `RERANK_HOME/runs/<run_id>/`, only keys and counts cross XCom. A failed task leaves the previously
published lists live. Params: `as_of` (default: the data interval's end), `retrain`, `user_ids`,
`top_n`, `dry_run`.
"""

from __future__ import annotations

import pendulum
from _common import DEFAULT_ARGS, as_of_from, database_url, rerank_home
from airflow.sdk import Param, dag, task
from airflow.sdk.definitions.asset import Asset

RECS_ASSET = Asset("postgres://rerank/recsys/user_recommendations")


def _on_failure(context: dict) -> None:
    """Mark the run failed in recsys.runs (the live lists stay)."""
    ti = context["ti"]
    rid = ti.xcom_pull(task_ids="begin")
    if rid:
        from pipeline.nightly import finish

        finish(database_url(), rid, "failed", f"{ti.task_id}: {context.get('exception')}")


@dag(
    dag_id="rerank_nightly",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "on_failure_callback": _on_failure},
    doc_md=__doc__,
    tags=["ecom-rerank"],
    params={
        "as_of": Param(None, type=["null", "string"], format="date-time",
                       description="Use events before this time (ISO); default the data interval's end"),
        "retrain": Param(True, type="boolean"),
        "user_ids": Param([], type="array", items={"type": "integer"}, description="Re-score only these users"),
        "top_n": Param(50, type="integer", minimum=1, maximum=1000),
        "dry_run": Param(False, type="boolean"),
    },
)
def rerank_nightly() -> None:
    @task
    def begin(**context) -> str:
        from pipeline import nightly
        from pipeline.runs import parse_as_of

        p = context["params"]
        as_of = as_of_from(context)
        return nightly.begin(database_url(), rerank_home(), parse_as_of(as_of), params={**p, "as_of": as_of})

    @task
    def validate(rid: str) -> dict:
        from pipeline import nightly

        url = database_url()
        return nightly.validate(url, rid, _as_of(url, rid))

    @task
    def extract(rid: str, _v: dict) -> dict:
        from pipeline import nightly

        url = database_url()
        return nightly.extract(url, rerank_home(), rid, _as_of(url, rid), _dask())

    @task
    def item_features(rid: str, _e: dict) -> dict:
        from pipeline import nightly

        return nightly.item_features(rerank_home(), rid, _as_of(database_url(), rid), _dask())

    @task
    def user_features(rid: str, _e: dict) -> dict:
        from pipeline import nightly

        return nightly.user_features(rerank_home(), rid, _as_of(database_url(), rid))

    @task
    def cf_build(rid: str, _e: dict) -> dict:
        from pipeline import nightly

        return nightly.cf_build(rerank_home(), rid, _as_of(database_url(), rid))

    @task(pool="default_pool")
    def train_ranker(rid: str, *_deps: dict, **context) -> dict:
        from pipeline import nightly

        url = database_url()
        return nightly.train_ranker(url, rerank_home(), rid, _as_of(url, rid), context["params"]["retrain"])

    @task
    def evaluate_gate(rid: str, _t: dict) -> dict:
        from pipeline import nightly

        url = database_url()
        return nightly.evaluate_gate(url, rerank_home(), rid, _as_of(url, rid))

    @task
    def score_users(rid: str, _g: dict, **context) -> dict:
        from pipeline import nightly
        from pipeline.settings import get_settings

        p = context["params"]
        return nightly.score_users(rerank_home(), rid, _as_of(database_url(), rid), top_n=p["top_n"],
                                   n_candidates=get_settings().candidates, user_ids=p["user_ids"] or None,
                                   dask_address=_dask())

    @task
    def quality_gate(rid: str, _s: dict) -> dict:
        from pipeline import nightly

        return nightly.quality_gate(rerank_home(), rid)

    @task(outlets=[RECS_ASSET])
    def publish(rid: str, _q: dict, **context) -> dict:
        from pipeline import nightly
        from pipeline.settings import get_settings

        return nightly.publish(database_url(), rerank_home(), rid, keep=get_settings().keep_runs,
                               dry_run=context["params"]["dry_run"])

    @task
    def report(rid: str, _p: dict) -> dict:
        from pipeline import nightly

        url = database_url()
        out = nightly.report(url, rerank_home(), rid)
        nightly.finish(url, rid, "success")
        return out

    rid = begin()
    v = validate(rid)
    e = extract(rid, v)
    f_items, f_users, cf = item_features(rid, e), user_features(rid, e), cf_build(rid, e)
    t = train_ranker(rid, f_items, f_users, cf)
    s = score_users(rid, evaluate_gate(rid, t))
    report(rid, publish(rid, quality_gate(rid, s)))


def _as_of(url: str, rid: str):  # noqa: ANN202 - datetime
    from pipeline.runs import parse_as_of, run_stats

    return parse_as_of(run_stats(url, rid)["params"]["as_of"])


def _dask() -> str | None:
    from pipeline.settings import get_settings

    return get_settings().dask_address


rerank_nightly()
