"""``validate_source``: the nightly run's first stage (quarantine + GX suites + threshold)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pipeline.errors import ValidationFailed
from pipeline.validate.sqlchecks import TS_FLOOR, quarantine_source


def validate_source(url: str, run_id: str, as_of: datetime, *, max_bad_share: float = 0.01,
                    home: str | Path | None = None, ts_floor: str = TS_FLOOR, data_docs: bool = True) -> dict:
    """Quarantine bad rows of shop.users/items/events for ``run_id``; fail when a table's bad share passes
    ``max_bad_share``.

    Returns per table ``read``, ``clean``, ``quarantined`` (clean + quarantined == read), ``bad_share``,
    ``top_reasons`` and ``reasons`` (every rule's count; a row breaking two rules counts in both), plus
    ``gx`` (the suite's success and GX's own counts) and, at the top level, ``data_docs`` (the index.html
    under ``<home>/reports/<run_id>/validation/``) when ``data_docs`` is on.
    """
    report, rules = quarantine_source(url, run_id, as_of, ts_floor=ts_floor)
    if data_docs:
        from pipeline.validate.gx_suites import run_suites

        if home is None:
            from pipeline.settings import get_settings

            home = get_settings().home_path
        docs = Path(home).expanduser().resolve() / "reports" / run_id / "validation"
        gx = run_suites(url, run_id, rules, docs)
        for table, g in gx.items():
            report[table]["gx"] = g
        report["data_docs"] = str(docs / "index.html")
    failures = []
    for table, r in report.items():
        if not isinstance(r, dict):
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
    return report
