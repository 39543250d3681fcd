"""``validate_source``: the nightly run's first stage (quarantine + GX suites + threshold)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pipeline.errors import ValidationFailed
from pipeline.validate.sqlchecks import MARKED, TS_FLOOR, advance_mark, quarantine_source


def validate_source(url: str, run_id: str, as_of: datetime, *, max_bad_share: float = 0.01,
                    home: str | Path | None = None, ts_floor: str = TS_FLOOR, data_docs: bool = True,
                    full_every_days: int = 7, retention_days: int = 30) -> dict:
    """Quarantine bad rows of shop.users/items/events for ``run_id``; fail when a table's bad share passes
    ``max_bad_share``.

    Users and items are scanned whole; events only above the last successful validation's mark, with a full
    pass when none ran for ``full_every_days`` (0: every run). The mark advances only when the run passes.
    Quarantine rows older than ``retention_days`` are pruned (0: kept).

    Returns per table ``read`` (rows validated in this pass), ``clean``, ``quarantined`` (bad rows among
    them; clean + quarantined == read), ``newly_quarantined`` (rows not quarantined before), ``bad_share``
    (quarantined / read: the gate is over this pass's rows), ``top_reasons`` and ``reasons`` (every rule's
    count; a row breaking two rules counts in both), ``gx`` (the suite's success and GX's own counts, over
    the same rows); ``shop.events`` has ``scope`` (``mode`` full | incremental, the event-id range). At the top
    level: ``quarantine_pruned`` and, when ``data_docs`` is on, ``data_docs`` (the index.html under
    ``<home>/reports/<run_id>/validation/``).
    """
    report, rules = quarantine_source(url, run_id, as_of, ts_floor=ts_floor, full_every_days=full_every_days,
                                      retention_days=retention_days)
    scope = report[MARKED]["scope"]
    if data_docs:
        from pipeline.validate.gx_suites import run_suites

        if home is None:
            from pipeline.settings import get_settings

            home = get_settings().home_path
        docs = Path(home).expanduser().resolve() / "reports" / run_id / "validation"
        gx = run_suites(url, run_id, rules, docs, scopes={MARKED: scope["where"]})
        for table, g in gx.items():
            report[table]["gx"] = g
        report["data_docs"] = str(docs / "index.html")
    failures = []
    for table, r in report.items():
        if not table.startswith("shop."):
            continue
        share = r["quarantined"] / r["read"] if r["read"] else 0.0
        r["bad_share"] = round(share, 6)
        if share > max_bad_share:
            top = ", ".join(f"{reason} ({n})" for reason, n in r["top_reasons"].items())
            failures.append(f"{table}: {r['quarantined']} of {r['read']} rows bad ({share:.2%}): {top}")
    if failures:
        raise ValidationFailed("validation refused the input: " + "; ".join(failures),
                               f"recsys.quarantine WHERE run_id = '{run_id}'; the bad-row threshold is "
                               f"{max_bad_share:.2%} per table")
    advance_mark(url, run_id, scope)
    return report
