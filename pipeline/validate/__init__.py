"""Validation of the shop's source tables; bad rows go to ``recsys.quarantine``, the run goes on with clean rows."""

from pipeline.validate.source import validate_source
from pipeline.validate.sqlchecks import (
    EVENT_RULES,
    ITEM_RULES,
    TS_FLOOR,
    Rule,
    clean_events_predicate,
    clean_items_predicate,
    clean_users_predicate,
    event_rules,
    item_rules,
    user_rules,
)

__all__ = ["EVENT_RULES", "ITEM_RULES", "TS_FLOOR", "Rule", "clean_events_predicate", "clean_items_predicate",
           "clean_users_predicate", "event_rules", "item_rules", "user_rules", "validate_source"]
