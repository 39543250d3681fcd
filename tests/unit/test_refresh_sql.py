"""The refresh's SQL is built per batch, so its "in the future" cutoff follows the wall clock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline.refresh import core
from pipeline.validate import sqlchecks


def test_cutoff_is_taken_when_the_batch_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    for day in (1, 2):
        cutoff = datetime(2026, 12, day, tzinfo=UTC)
        monkeypatch.setattr(sqlchecks, "future_cutoff", lambda now=None, c=cutoff: c)
        assert cutoff.isoformat() in core._batch_sql(True)
        assert cutoff.isoformat() in core._history_sql()


def test_a_view_mapped_events_table_needs_no_xmin() -> None:
    assert "xmin" in core._batch_sql(True)
    assert "xmin" not in core._batch_sql(False)
