"""Great Expectations 1.x suites over the source tables, with Data Docs per run.

One ephemeral context per call (nothing written outside the run's report folder). The suites mirror the
SQL rules of :mod:`pipeline.validate.sqlchecks` rule for rule: a rule with a native GX form (not null,
unique, in set, between, value lengths) becomes that expectation, every other rule an
``UnexpectedRowsExpectation`` over the same predicate. Each expectation carries its rule's reason in
``meta`` so results map back to quarantine reasons. GX reports counts and renders the Data Docs; the exact
bad rows (with all their reasons) are found by the SQL quarantine, because GX 1.x returns at most a
sample of unexpected rows and no row keys for query-based expectations.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.validate.sqlchecks import Rule

SITE = "run"


def _expectation(rule: Rule):  # noqa: ANN202 - a gx Expectation
    import great_expectations.expectations as gxe

    meta = {"reason": rule.reason}
    c = rule.column
    if rule.kind == "not_null":
        return gxe.ExpectColumnValuesToNotBeNull(column=c, meta=meta)
    if rule.kind == "unique":
        return gxe.ExpectColumnValuesToBeUnique(column=c, meta=meta)
    if rule.kind == "in_set":
        return gxe.ExpectColumnValuesToBeInSet(column=c, value_set=list(rule.args), meta=meta)
    if rule.kind == "min":
        return gxe.ExpectColumnValuesToBeBetween(column=c, min_value=_value(rule.args[0]), meta=meta)
    if rule.kind == "max":
        return gxe.ExpectColumnValuesToBeBetween(column=c, max_value=_value(rule.args[0]), meta=meta)
    if rule.kind == "max_length":
        return gxe.ExpectColumnValueLengthsToBeBetween(column=c, max_value=int(rule.args[0]), meta=meta)
    return gxe.UnexpectedRowsExpectation(
        unexpected_rows_query=f"SELECT * FROM {{batch}} WHERE coalesce(({rule.predicate}), false)",
        description=rule.reason, meta=meta)


def _value(v: object) -> object:
    """Timestamps as aware datetimes (GX compares them in SQL), numbers as they are."""
    if isinstance(v, str):
        from datetime import UTC

        d = datetime.fromisoformat(v)
        return d if d.tzinfo else d.replace(tzinfo=UTC)
    return v


def run_suites(url: str, run_id: str, rules: dict[str, list[Rule]], docs_dir: str | Path,
               scopes: dict[str, str | None] | None = None) -> dict:
    """Validate each table with its suite; build Data Docs under ``docs_dir``; return per-table GX results.

    ``scopes``: table -> SQL condition; such a table is validated as a query asset over the matching rows only
    (the same rows the SQL quarantine scanned), the others whole.

    Result per table: ``success`` and ``unexpected`` (reason -> unexpected row count as GX counted it).
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    try:
        import great_expectations as gx
        from great_expectations.checkpoint import UpdateDataDocsAction
    except ImportError as exc:  # a hard dependency; say which
        raise PipelineError("great_expectations is not importable",
                            "pip install 'ecom-rerank[validate]' (or great-expectations)") from exc

    docs = Path(docs_dir)
    docs.mkdir(parents=True, exist_ok=True)
    ctx = gx.get_context(mode="ephemeral")
    # GX draws a progress bar per metric on stderr: a nightly log (and a one-line CLI error) has no room for it
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    ctx.add_data_docs_site(site_name=SITE, site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    ds = ctx.data_sources.add_postgres("shop", connection_string=url.replace("postgresql://",
                                                                             "postgresql+psycopg2://", 1))
    definitions = []
    for table, table_rules in rules.items():
        schema, name = table.split(".")
        where = (scopes or {}).get(table)
        if where:
            asset = ds.add_query_asset(name=table, query=f"SELECT * FROM {schema}.{name} WHERE {where}")
        else:
            asset = ds.add_table_asset(name=table, table_name=name, schema_name=schema)
        batch = asset.add_batch_definition_whole_table("whole table")
        suite = ctx.suites.add(gx.ExpectationSuite(name=table))
        for rule in table_rules:
            suite.add_expectation(_expectation(rule))
        definitions.append(ctx.validation_definitions.add(gx.ValidationDefinition(name=table, data=batch,
                                                                                  suite=suite)))
    checkpoint = ctx.checkpoints.add(gx.Checkpoint(
        name="source tables", validation_definitions=definitions,
        actions=[UpdateDataDocsAction(name="data docs", site_names=[SITE])],
        result_format={"result_format": "SUMMARY"}))
    result = checkpoint.run(run_id=gx.RunIdentifier(run_name=run_id))
    out: dict[str, dict] = {}
    for vr in result.run_results.values():
        table = vr.suite_name
        unexpected: dict[str, int | None] = {}
        errors: list[str] = []
        for r in vr.results:
            reason = (r.expectation_config.meta or {}).get("reason", r.expectation_config.type)
            if r.exception_info and any(v.get("raised_exception") for v in _exc_infos(r.exception_info)):
                errors.append(reason)
                unexpected[reason] = None
                continue
            res = r.result or {}
            n = res.get("unexpected_count")
            if n is None and "observed_value" in res:  # UnexpectedRowsExpectation: the row count
                n = res["observed_value"]
            unexpected[reason] = int(n or 0)
        out[table] = {"success": bool(vr.success), "unexpected": unexpected, "errors": errors}
    return out


def _exc_infos(info: dict) -> list[dict]:
    """GX nests exception info per metric, or gives it flat; return a flat list of dicts."""
    if "raised_exception" in info:
        return [info]
    return [v for v in info.values() if isinstance(v, dict)]
