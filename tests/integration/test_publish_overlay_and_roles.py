"""Publication, near-real-time overlay and roles: a refresh in flight, rollback, user-subset runs, rerank_writer.

The publications here are small synthetic frames (as in test_publish.py); the near-real-time overlay rows
are written the way ``pipeline.refresh.core.run_batch`` writes them (one whole list per user in
``recsys.recs_realtime``, stamped with the batch's ``now()``), so no model or snapshot is needed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import pytest
from publish_common import load_items, synthetic_recs

from pipeline.db.copy import copy_frame
from pipeline.db.engine import connect
from pipeline.publish import live_publication, publish_run, rollback
from pipeline.publish.swap import RECS_COLUMNS
from pipeline.refresh.core import clean_overlay

pytestmark = pytest.mark.integration
N_USERS, N_ITEMS, TOP = 20, 100, 5
DAY1 = datetime(2026, 11, 23, tzinfo=UTC)  # as_of (= generated_at) of the first nightly run
DAY2 = DAY1 + timedelta(days=1)  # ... and of the next one


def _recs(tag: str, generated_at: datetime, shift: int) -> pd.DataFrame:
    return synthetic_recs(tag, generated_at, users=N_USERS, items=N_ITEMS, top=TOP, shift=shift)


def _overlay(url: str, user: int, generated_at: datetime, tag: str) -> None:
    """One user's near-real-time list, as a refresh batch committed at ``generated_at`` writes it."""
    rows = pd.DataFrame({"user_id": user, "rank": np.arange(1, TOP + 1), "item_id": np.arange(50, 50 + TOP),
                         "score": 0.5, "reason": "because you just viewed \u201cx\u201d", "anchor_item_id": 1,
                         "source": "fresh-cf", "variant": "control", "model_version": "m1", "run_id": tag,
                         "generated_at": pd.Timestamp(generated_at)})[RECS_COLUMNS]
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM recsys.recs_realtime WHERE user_id = %s", (user,))
        copy_frame(cur, "recsys.recs_realtime", rows, RECS_COLUMNS)


def _seen(url: str, user: int) -> set[str]:
    """The run ids a downstream reader (role rerank_reader) sees in the user's list."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SET ROLE rerank_reader")
        cur.execute("SELECT run_id FROM recsys.user_recommendations WHERE user_id = %s", (user,))
        return {r[0] for r in cur.fetchall()}


@pytest.fixture
def shop(db_url: str) -> str:
    return load_items(db_url, N_ITEMS)


def test_a_refresh_batch_in_flight_does_not_fail_a_publication_after_its_swap(shop: str) -> None:
    """publish_run's tidy step deletes obsolete overlay rows *after* the swap committed. A refresh batch in
    flight holds row locks on the overlay rows of the users it rewrites; the tidy DELETE then hit its 5 s
    lock_timeout and publish_run raised a raw psycopg2 LockNotAvailable although the new run was already
    live: the nightly run was marked failed with its lists published, and the error was no PipelineError.
    The tidy must skip (the refresher's clean_overlay deletes those rows at its next pass)."""
    publish_run(shop, "nightly_20261123T0000", _recs("day1", DAY1, 1), None, generated_at=DAY1)
    _overlay(shop, 1, DAY1 - timedelta(hours=1), "refresh_1")  # older than every run: the tidy's to delete
    batch = psycopg2.connect(shop)  # a refresh batch between its DELETE of user 1's rows and its COMMIT
    try:
        with batch.cursor() as cur:
            cur.execute("SELECT 1 FROM recsys.recs_realtime WHERE user_id = 1 FOR UPDATE")
        res = publish_run(shop, "nightly_20261124T0000", _recs("day2", DAY2, 2), None, generated_at=DAY2)
    finally:
        batch.rollback()
        batch.close()
    assert live_publication(shop)["run_id"] == "nightly_20261124T0000"
    assert res["recs_table"] == live_publication(shop)["recs_table"]
    assert _seen(shop, 1) == {"day2"}  # the view hides the older overlay rows whether deleted or not
    with connect(shop) as conn:
        clean_overlay(conn)  # the refresher's next pass removes what the tidy skipped
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM recsys.recs_realtime")
        assert cur.fetchone()[0] == 0


def test_rollback_brings_back_the_near_real_time_lists_users_had(shop: str) -> None:
    """Day 1's run is live; during day 1 the refresh rebuilt user 1's list from fresh events and moved the
    watermark past them. Day 2's run publishes (its tidy, and the refresher's clean_overlay, deleted every
    overlay row older than day 2), then is rolled back. Rollback makes day 1's publication live again, but
    user 1's near-real-time list was gone: the reader saw day 1's nightly list, blind to a day of the user's
    behaviour that the refresh had already consumed (the watermark never goes back), until the user acts
    again. Overlay rows must live as long as a kept publication they are newer than."""
    publish_run(shop, "nightly_20261123T0000", _recs("day1", DAY1, 1), None, generated_at=DAY1)
    _overlay(shop, 1, DAY1 + timedelta(hours=10), "refresh_1")
    assert _seen(shop, 1) == {"refresh_1"}  # what user 1 saw on day 1
    publish_run(shop, "nightly_20261124T0000", _recs("day2", DAY2, 2), None, generated_at=DAY2)
    assert _seen(shop, 1) == {"day2"}
    with connect(shop) as conn:
        clean_overlay(conn)  # the refresher's pass while day 2 is live
    assert rollback(shop)["run_id"] == "nightly_20261123T0000"
    assert _seen(shop, 1) == {"refresh_1"}  # the state before day 2's run, not a day older
    assert _seen(shop, 2) == {"day1"}


def _refreshed_during_day2(url: str, user: int) -> None:
    """The refresh as it ran while day 2's run was live: a batch on day 1 (events 10..40), one after day 2
    went live (40..100) that rebuilt ``user``'s list on day 2's run, and the watermark at 100."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE recsys.refresh_state SET last_event_id = 100 WHERE name = 'default'")
        cur.execute("INSERT INTO recsys.refresh_batches (name, from_event_id, to_event_id, events, skipped, users, "
                    "rows, started_at) VALUES ('default', 10, 40, 5, 0, 1, %s, %s), "
                    "('default', 40, 100, 9, 0, 1, %s, now())", (TOP, DAY1 + timedelta(hours=10), TOP))
    _overlay(url, user, datetime.now(UTC), "refresh_day2")


def _watermark(url: str) -> int:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT last_event_id FROM recsys.refresh_state WHERE name = 'default'")
        return cur.fetchone()[0]


def test_rollback_drops_the_near_real_time_lists_built_on_the_rolled_back_run(shop: str) -> None:
    """Day 2's run is rolled back (a bad model, say). Near-real-time lists the refresh built while it was
    live came from its model and matrices; they stayed in front of the restored run, so the users who had
    been active saw the bad run's ranking after the rollback. They go with it, the watermark moves back to
    where it stood when day 2 went live (the refresh rebuilds those lists on day 1's run), and lists built
    on day 1 stay."""
    publish_run(shop, "nightly_20261123T0000", _recs("day1", DAY1, 1), None, generated_at=DAY1)
    _overlay(shop, 1, DAY1 + timedelta(hours=10), "refresh_day1")
    publish_run(shop, "nightly_20261124T0000", _recs("day2", DAY2, 2), None, generated_at=DAY2)
    _refreshed_during_day2(shop, 2)
    assert _seen(shop, 2) == {"refresh_day2"}
    res = rollback(shop)
    assert res["run_id"] == "nightly_20261123T0000" and res["overlay_rows_dropped"] == TOP
    assert _seen(shop, 2) == {"day1"}
    assert _seen(shop, 1) == {"refresh_day1"}
    assert _watermark(shop) == 40


def test_rollback_keeps_the_watermark_when_the_batch_log_may_have_lost_batches(shop: str) -> None:
    """A publication live for longer than the batch log keeps: its first batches may be pruned, so the
    point to rewind to is unknown. The lists built on it still go; the watermark stays."""
    publish_run(shop, "nightly_20261123T0000", _recs("day1", DAY1, 1), None, generated_at=DAY1)
    publish_run(shop, "nightly_20261124T0000", _recs("day2", DAY2, 2), None, generated_at=DAY2)
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("UPDATE recsys.publications SET published_at = now() - interval '8 days' WHERE live")
    _refreshed_during_day2(shop, 2)
    assert rollback(shop)["overlay_rows_dropped"] == TOP
    assert _seen(shop, 2) == {"day1"}
    assert _watermark(shop) == 100


def test_a_user_subset_publication_keeps_the_near_real_time_lists_of_the_users_it_does_not_touch(
        shop: str, tmp_path: Path) -> None:
    """A manual day-2 run for a user subset publishes the subset's new lists and, for everyone else, the live
    (day-1) rows. User 1 is outside the subset and had a near-real-time list from day-1 events the refresh
    already consumed. The publication's single generated_at (day 2) made the view hide that list and serve
    user 1's day-1 nightly list again: a day of behaviour lost for the users the subset run did not touch
    (and the refresh treats their later events before day 2 as already covered)."""
    from pipeline import nightly

    publish_run(shop, "nightly_20261123T0000", _recs("nightly_20261123T0000", DAY1, 1), None, generated_at=DAY1)
    _overlay(shop, 1, DAY1 + timedelta(hours=10), "refresh_1")
    run_id = "nightly_20261124T0000"
    d = tmp_path / "runs" / run_id
    (d / "snapshot").mkdir(parents=True)
    day2 = _recs(run_id, DAY2, 2)
    day2[day2["user_id"].isin([2, 3])].to_parquet(d / "recs.parquet", index=False)
    (d / "params.json").write_text(json.dumps({"user_ids": [2, 3]}))
    pd.DataFrame({"item_id": [1], "rank": [1], "similar_item_id": [2], "score": [0.5],
                  "method": ["item-cf"]}).to_parquet(d / "snapshot" / "neighbours.parquet", index=False)
    nightly.publish(shop, str(tmp_path), run_id, DAY2)
    assert _seen(shop, 2) == {run_id}  # the subset got its new lists
    assert _seen(shop, 4) == {"nightly_20261123T0000"}  # the others keep their live rows ...
    assert _seen(shop, 1) == {"refresh_1"}  # ... as readers saw them, near-real-time list included


def test_the_pipeline_role_can_publish_and_the_reader_role_reads_the_result(shop: str) -> None:
    """ARCHITECTURE.md: ``rerank_writer`` is the pipeline's role. A shop whose DBA runs ``rerank db migrate``
    and gives the pipeline a login in rerank_writer could not publish: CREATE OR REPLACE VIEW needs the
    view's owner ("must be owner of view user_recommendations"). Nothing is lost (the swap rolls back), but
    no run ever goes live."""
    as_writer = shop + ("&" if "?" in shop else "?") + "options=-c%20role%3Drerank_writer"
    # a run the superuser published before (the demo's embedded server): the writer must still prune it
    publish_run(shop, "nightly_20261122T0000", _recs("day0", DAY1 - timedelta(days=1), 0), None,
                generated_at=DAY1 - timedelta(days=1))
    publish_run(as_writer, "nightly_20261123T0000", _recs("day1", DAY1, 1), None, generated_at=DAY1)
    assert _seen(shop, 1) == {"day1"}
    res = publish_run(as_writer, "nightly_20261124T0000", _recs("day2", DAY2, 2), None, generated_at=DAY2, keep=2)
    assert len(res["pruned"]) == 1 and res["pruned"][0].startswith("recs_nightly_20261122")
    assert _seen(shop, 1) == {"day2"}
    assert rollback(as_writer)["run_id"] == "nightly_20261123T0000"
    assert _seen(shop, 1) == {"day1"}


def test_an_older_run_published_after_a_newer_one_does_not_replace_it(shop: str) -> None:
    """A backfill, or an old date's publish task cleared and re-run, must not swap readers back to older lists;
    ``allow_older`` (or ``rerank publish rollback``) is the deliberate way back."""
    publish_run(shop, "nightly_20261124T0000", _recs("day2", DAY2, 2), None, generated_at=DAY2)
    res = publish_run(shop, "nightly_20261123T0000", _recs("day1", DAY1, 1), None, generated_at=DAY1)
    assert res["published"] is False and res["publication_id"] is None
    assert res["live_run_id"] == "nightly_20261124T0000"
    assert live_publication(shop)["run_id"] == "nightly_20261124T0000"
    assert _seen(shop, 1) == {"day2"}
    with connect(shop) as conn, conn.cursor() as cur:  # nothing was loaded for the skipped run
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'recsys' "
                    "AND tablename LIKE 'recs_nightly_20261123%'")
        assert cur.fetchone()[0] == 0
    res = publish_run(shop, "nightly_20261123T0000", _recs("day1", DAY1, 1), None, generated_at=DAY1, allow_older=True)
    assert res["published"] is True and live_publication(shop)["run_id"] == "nightly_20261123T0000"
    assert _seen(shop, 1) == {"day1"}
