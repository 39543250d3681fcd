"""
### rerank_nightly

The nightly run of ecom-rerank: validate the shop's data, extract a snapshot on Dask, build item/user
features and the CF neighbours, (re)train and gate the ranker, recall + score + re-rank every user in Dask
shards, check the output quality gate, publish atomically (the `recsys.user_recommendations` view swaps in
one transaction) and write the run's report.

**Wiring.** Every task calls one function of `pipeline.nightly` with explicit arguments; big data stays in
Postgres and `RERANK_HOME/runs/<run_id>/`, only keys and counts cross XCom. The database comes from the
Airflow connection `rerank_postgres` (else `RERANK_DATABASE_URL`); Dask stages use `RERANK_DASK_ADDRESS`
(else a LocalCluster per stage), so `RERANK_HOME` must be storage every worker sees.

**Params** (JSON schema, a bad trigger conf is rejected): `as_of` (ISO; default the data interval's end),
`retrain`, `user_ids` (re-score only these users), `top_n` (1..1000), `dry_run` (no swap).

**Assets.** Each stage task updates `rerank.nightly.<stage>` (`x-rerank://nightly/<stage>`, event extra:
`run_id` and the stage's counts). The task `announce` updates `rerank.recsys.user_recommendations` only when
`publish` really swapped the view (it is skipped on a dry run, and a skipped task emits no Asset event), so a
downstream DAG with `schedule=[Asset.ref(name="rerank.recsys.user_recommendations")]` runs only on new lists.

**Operations.** Retries with exponential backoff, except for errors a retry cannot change (bad settings or
params, failed validation, a refused quality gate, a missing schema: the task fails at once), an
`execution_timeout` per stage, a `dagrun_timeout` of 20 h for the whole run, training in the pool
`gpu` (create it: `airflow pools set gpu 1 "ecom-rerank ranker training: one slot per GPU"`). A task that
fails for good marks the run `failed` in `recsys.runs` and writes its report; the previous publication stays
live. Failures, retries and the report's warnings (input drift, slow stages, coverage) go through Airflow
callbacks (`NIGHTLY_CALLBACKS`, `REPORT_SUCCESS_CALLBACKS` in `_common.py`) to `pipeline.reporting.alerts`:
the logger `pipeline.alerts`, `recsys.runs.stats->'alerts'` and `RERANK_ALERT_WEBHOOK`; add Airflow notifiers
to those lists to route them elsewhere.

**Report.** `report` writes `RERANK_HOME/runs/<run_id>/report.html` (stage times, gates against the last run,
input drift, coverage and diversity, the model and why), linked from `recsys.runs.report_uri`.
"""

from __future__ import annotations

import pendulum
from _common import (
    DEFAULT_ARGS,
    GPU_POD_TEMPLATE,
    GPU_POOL,
    NIGHTLY_CALLBACKS,
    NIGHTLY_DAGRUN_TIMEOUT,
    RECS_ASSET,
    REPORT_SUCCESS_CALLBACKS,
    TIMEOUTS,
    as_of_from,
    dask_address,
    database_url,
    emit,
    fail_fast,
    nightly_params,
    rerank_home,
    stage_asset,
    unpack,
)
from airflow.sdk import dag, task

DAG_ID = "rerank_nightly"
ASSETS = {name: stage_asset("nightly", name) for name in TIMEOUTS if name != "begin"}


def _stage(name: str, *extra_outlets, **kwargs):  # noqa: ANN202 - the @task decorator
    """``@task`` for one stage: its Asset, its timeout, no retries for errors a retry cannot change."""
    deco = task(task_id=name, outlets=[ASSETS[name], *extra_outlets], execution_timeout=TIMEOUTS[name], **kwargs)
    return lambda fn: deco(fail_fast(fn))


@dag(
    dag_id=DAG_ID,
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=NIGHTLY_DAGRUN_TIMEOUT,
    default_args={**DEFAULT_ARGS, **NIGHTLY_CALLBACKS},
    doc_md=__doc__,
    tags=["ecom-rerank"],
    params=nightly_params(),
)
def rerank_nightly() -> None:
    @task(execution_timeout=TIMEOUTS["begin"])
    @fail_fast  # a bad trigger param or setting: retrying cannot help
    def begin(**context) -> dict:
        """Parse as_of once (the trigger's param, else the data interval's end): every stage gets it from here."""
        from pipeline import nightly
        from pipeline.runs import parse_as_of

        as_of = parse_as_of(as_of_from(context))
        params = {**context["params"], "as_of": as_of.isoformat()}
        rid = nightly.begin(database_url(), rerank_home(), as_of, dag=DAG_ID, params=params)
        return {"run_id": rid, "as_of": as_of.isoformat()}

    @_stage("validate")
    def validate(run: dict, **context) -> dict:
        from pipeline import nightly

        rid, as_of = unpack(run)

        url = database_url()
        out = nightly.validate(url, rid, as_of, home=rerank_home())
        emit(context, ASSETS["validate"], rid)
        return out

    @_stage("extract")
    def extract(run: dict, _v: dict, **context) -> dict:
        from pipeline import nightly

        rid, as_of = unpack(run)

        url = database_url()
        out = nightly.extract(url, rerank_home(), rid, as_of, dask_address())
        emit(context, ASSETS["extract"], rid, out)
        return out

    @_stage("item_features")
    def item_features(run: dict, _e: dict, **context) -> dict:
        from pipeline import nightly

        rid, as_of = unpack(run)

        url = database_url()
        out = nightly.item_features(rerank_home(), rid, as_of, dask_address(), url=url)
        emit(context, ASSETS["item_features"], rid, out)
        return out

    @_stage("user_features")
    def user_features(run: dict, _e: dict, **context) -> dict:
        from pipeline import nightly

        rid, as_of = unpack(run)

        url = database_url()
        out = nightly.user_features(rerank_home(), rid, as_of, dask_address(), url=url)
        emit(context, ASSETS["user_features"], rid, out)
        return out

    @_stage("cf_build")
    def cf_build(run: dict, _e: dict, **context) -> dict:
        from pipeline import nightly

        rid, as_of = unpack(run)

        out = nightly.cf_build(rerank_home(), rid, as_of, dask_address=dask_address())
        emit(context, ASSETS["cf_build"], rid, out)
        return out

    @_stage("train_ranker", pool=GPU_POOL, executor_config={"pod_template_file": GPU_POD_TEMPLATE})
    def train_ranker(run: dict, *_deps: dict, **context) -> dict:
        from pipeline import nightly

        rid, as_of = unpack(run)

        url = database_url()
        out = nightly.train_ranker(url, rerank_home(), rid, as_of, context["params"]["retrain"])
        emit(context, ASSETS["train_ranker"], rid, out)
        return out

    @_stage("evaluate_gate")
    def evaluate_gate(run: dict, _t: dict, **context) -> dict:
        from pipeline import nightly

        rid, as_of = unpack(run)

        url = database_url()
        out = nightly.evaluate_gate(url, rerank_home(), rid, as_of)
        emit(context, ASSETS["evaluate_gate"], rid, out)
        return out

    @_stage("score_users")
    def score_users(run: dict, _g: dict, **context) -> dict:
        from pipeline import nightly

        rid, as_of = unpack(run)
        from pipeline.settings import get_settings

        p = context["params"]
        url = database_url()
        out = nightly.score_users(rerank_home(), rid, as_of, top_n=p["top_n"],
                                  n_candidates=get_settings().candidates, user_ids=p["user_ids"] or None,
                                  dask_address=dask_address(), url=url)
        emit(context, ASSETS["score_users"], rid, out)
        return out

    @_stage("quality_gate")
    def quality_gate(run: dict, _s: dict, **context) -> dict:
        from pipeline import nightly

        rid = run["run_id"]

        out = nightly.quality_gate(rerank_home(), rid, url=database_url(), top_n=context["params"]["top_n"])
        emit(context, ASSETS["quality_gate"], rid, out)
        return out

    @_stage("publish")
    def publish(run: dict, _q: dict, **context) -> dict:
        from pipeline import nightly

        rid, as_of = unpack(run)
        from pipeline.settings import get_settings

        out = nightly.publish(database_url(), rerank_home(), rid, as_of, keep=get_settings().keep_runs,
                              dry_run=context["params"]["dry_run"])
        emit(context, ASSETS["publish"], rid, out)
        return out

    @task(outlets=[RECS_ASSET], execution_timeout=TIMEOUTS["report"])
    def announce(run: dict, published: dict, **context) -> None:
        """Tell Asset-scheduled readers about new lists; skipped (no event) when nothing was swapped in."""
        from airflow.sdk.exceptions import AirflowSkipException

        rid = run["run_id"]
        if published.get("publication_id") is None:
            raise AirflowSkipException(f"{rid}: nothing published (dry run, or older than the live run), "
                                       "no Asset event")
        emit(context, RECS_ASSET, rid, published)

    @_stage("report", on_success_callback=REPORT_SUCCESS_CALLBACKS)
    def report(run: dict, _p: dict, **context) -> dict:
        from pipeline import nightly

        rid = run["run_id"]

        url = database_url()
        out = nightly.report(url, rerank_home(), rid)
        nightly.finish(url, rid, "success")
        emit(context, ASSETS["report"], rid, out)
        return out

    run = begin()  # {"run_id", "as_of"}: as_of parsed once, handed to every stage
    e = extract(run, validate(run))
    t = train_ranker(run, item_features(run, e), user_features(run, e), cf_build(run, e))
    s = score_users(run, evaluate_gate(run, t))
    p = publish(run, quality_gate(run, s))
    announce(run, p)
    report(run, p)


rerank_nightly()
