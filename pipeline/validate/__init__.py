"""Validation of the shop's source tables; bad rows go to ``recsys.quarantine``, the run goes on with clean rows."""

from pipeline.validate.sqlchecks import EVENT_RULES, clean_events_predicate, validate_source

__all__ = ["EVENT_RULES", "clean_events_predicate", "validate_source"]
