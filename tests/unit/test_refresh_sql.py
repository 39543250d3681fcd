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


def test_a_view_mapped_events_table_is_trusted_after_a_delay() -> None:
    assert "interval '5 seconds'" not in core._batch_sql(True)  # a table: gaps are judged by settled_count
    assert "interval '5 seconds'" in core._batch_sql(False)


@pytest.mark.parametrize(
    ("ids", "after", "passable_below", "want"),
    [
        ([11, 12, 13], 10, None, 3),  # one unbroken run above the watermark
        ([12, 13], 10, None, 0),  # 11 may still be committed by a writer
        ([11, 13, 14], 10, None, 1),
        ([11, 13, 14], 10, 13, 3),  # every gap below 13 is for good
        ([11, 13, 16], 10, 13, 2),  # 14 and 15 are above what was recorded: wait
        ([], 10, None, 0),
    ],
)
def test_settled_count_stops_at_the_first_gap_that_may_still_fill(ids: list[int], after: int,
                                                                   passable_below: int | None, want: int) -> None:
    assert core.settled_count(ids, after, passable_below) == want
