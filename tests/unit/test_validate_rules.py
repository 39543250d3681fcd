"""The rule catalogue: constant SQL, alias-free predicates, GX mapping (no database)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline.validate import clean_events_predicate, event_rules, item_rules, user_rules
from pipeline.validate.sqlchecks import future_cutoff


def test_predicates_use_no_table_alias() -> None:
    # GX substitutes {batch} with an anonymous subquery: a predicate may not name an alias like e.
    for rule in [*event_rules(), *item_rules(), *user_rules()]:
        assert " e." not in rule.predicate and " i." not in rule.predicate, rule.reason


def test_reasons_are_unique_per_table() -> None:
    for rules in (event_rules(), item_rules(), user_rules()):
        reasons = [r.reason for r in rules]
        assert len(reasons) == len(set(reasons))


def test_duplicate_scan_dropped_when_unique_is_proven() -> None:
    assert "event_id duplicated" in {r.reason for r in event_rules()}
    assert "event_id duplicated" not in {r.reason for r in event_rules(unique_proven=True)}
    assert "GROUP BY event_id" not in clean_events_predicate(unique_proven=True)


def test_floor_and_cutoff_are_configurable() -> None:
    cutoff = datetime(2030, 1, 1, tzinfo=UTC)
    reasons = {r.reason: r for r in event_rules(ts_floor="2020-01-01", cutoff=cutoff)}
    assert "'2020-01-01'" in reasons["ts before 2020-01-01"].predicate
    assert "2030-01-01T00:00:00+00:00" in reasons["ts in the future"].predicate
    assert future_cutoff(datetime(2026, 1, 1, 12, 0, 0, 500, tzinfo=UTC)) == datetime(2026, 1, 2, 12, tzinfo=UTC)


@pytest.mark.parametrize("kind", ["not_null", "unique", "in_set", "min", "max", "max_length", "rows"])
def test_every_rule_kind_maps_to_a_gx_expectation(kind: str) -> None:
    pytest.importorskip("great_expectations")
    from pipeline.validate.gx_suites import _expectation

    rule = next(r for r in [*event_rules(), *item_rules()] if r.kind == kind)
    exp = _expectation(rule)
    assert exp.meta["reason"] == rule.reason
