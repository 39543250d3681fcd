"""The streamed publish: a run's Parquet parts go into COPY chunk by chunk, and a user-subset publication
carries the other users' live rows inside Postgres."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from publish_common import load_items, synthetic_recs

from pipeline.db.engine import connect
from pipeline.publish import live_publication, publish_run
from pipeline.publish.parts import rec_parts
from pipeline.publish.swap import RECS_COLUMNS

pytestmark = pytest.mark.integration
N_USERS, N_ITEMS, TOP = 120, 80, 10
GEN = datetime(2026, 11, 24, tzinfo=UTC)


@pytest.fixture
def shop(db_url: str) -> str:
    return load_items(db_url, N_ITEMS)


def _awkward(run_id: str, generated_at: datetime = GEN, shift: int = 0) -> pd.DataFrame:
    """Lists whose values a CSV round trip could bend: scores with long decimals, null anchors, reasons with
    quotes, commas, new lines and non-ASCII text."""
    recs = synthetic_recs(run_id, generated_at, users=N_USERS, items=N_ITEMS, top=TOP, shift=shift)
    rng = np.random.default_rng(shift)
    recs["score"] = rng.random(len(recs)) / 3.0
    anchor = pd.Series(recs["item_id"] % 7 + 1, dtype="Int64")
    recs["anchor_item_id"] = anchor.where(rng.random(len(recs)) < 0.5)
    recs["reason"] = [f'because you viewed \u201c{i}\u201d, "quoted"\nline' if i % 3 else "\u70ed\u95e8\u5546\u54c1"
                      for i in recs["item_id"]]
    return recs


def _write_parts(recs: pd.DataFrame, run_dir: Path, n: int) -> list[Path]:
    """Parts of disjoint users (by user id modulo n), each sorted by (user_id, rank), as the shards write them."""
    (run_dir / "recs").mkdir(parents=True)
    for i in range(n):
        part = recs[recs["user_id"] % n == i].sort_values(["user_id", "rank"])
        part.to_parquet(run_dir / "recs" / f"part-{i:05d}.parquet", index=False)
    return rec_parts(run_dir)


def _table(url: str, name: str) -> pd.DataFrame:
    cols = ", ".join(RECS_COLUMNS)
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {cols} FROM recsys.{name} ORDER BY user_id, rank")  # a table name from the test
        return pd.DataFrame(cur.fetchall(), columns=RECS_COLUMNS)


def test_chunked_publish_of_parts_equals_one_shot_publish_row_for_row(shop: str, tmp_path: Path) -> None:
    recs = _awkward("nightly_20261124T0000")
    one = publish_run(shop, "one_shot", recs, None, generated_at=GEN)  # two runs: both tables are kept
    parts = _write_parts(recs, tmp_path / "run", 4)
    chunked = publish_run(shop, "chunked", parts, None, generated_at=GEN, chunk_rows=37)
    assert one["rows"] == chunked["rows"] == N_USERS * TOP
    a, b = _table(shop, one["recs_table"]), _table(shop, chunked["recs_table"])
    assert len(a) == N_USERS * TOP and a["anchor_item_id"].isna().any() and a["reason"].str.contains("\n").any()
    pd.testing.assert_frame_equal(a, b)  # every column, scores included: both go through the same CSV text
    assert live_publication(shop)["recs_table"] == chunked["recs_table"]


def test_the_copy_hook_runs_between_chunks(shop: str, tmp_path: Path) -> None:
    parts = _write_parts(_awkward("r"), tmp_path / "run", 3)
    seen: list[str] = []
    publish_run(shop, "r", parts, None, generated_at=GEN, chunk_rows=100, hook=seen.append)
    # 1200 rows in 3 parts of 400: 4 chunks each, a pause point between consecutive chunks
    assert seen.count("copy") == 11 and seen[0] == "create" and seen[-1] == "swap"


def test_parts_missing_a_column_are_refused_before_anything_is_written(shop: str, tmp_path: Path) -> None:
    from pipeline.errors import PublishError

    parts = _write_parts(_awkward("r").drop(columns="variant"), tmp_path / "run", 2)
    with pytest.raises(PublishError, match="variant"):
        publish_run(shop, "r", parts, None, generated_at=GEN)
    assert live_publication(shop) is None


def test_a_user_subset_keeps_the_other_users_live_rows_without_reading_them_into_pandas(
        shop: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    day1 = datetime(2026, 11, 23, tzinfo=UTC)
    before = _awkward("nightly_20261123T0000", day1, shift=1)
    publish_run(shop, "nightly_20261123T0000", before, None, generated_at=day1)
    subset = [3, 4, 50]
    new = _awkward("nightly_20261124T0000", GEN, shift=2)
    new = new[new["user_id"].isin(subset)]
    parts = _write_parts(new, tmp_path / "run", 2)
    monkeypatch.setattr(pd, "read_sql", lambda *a, **k: pytest.fail("the live table was read into pandas"))
    res = publish_run(shop, "nightly_20261124T0000", parts, None, generated_at=GEN, chunk_rows=7,
                      keep_other_users=True)
    assert res["rows"] == N_USERS * TOP
    got = _table(shop, res["recs_table"])
    expected = pd.concat([before[~before["user_id"].isin(subset)], new]).sort_values(["user_id", "rank"])
    pd.testing.assert_frame_equal(got, expected[RECS_COLUMNS].reset_index(drop=True), check_dtype=False)
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SELECT oldest_at FROM recsys.publications WHERE live")
        assert cur.fetchone()[0] == day1  # the carried rows keep their own, older generated_at


def test_nightly_publish_streams_the_run_parts(shop: str, tmp_path: Path) -> None:
    """nightly.publish reads the run's recs/ parts (the scoring shards' layout) and its chunk setting."""
    from pipeline import nightly
    from pipeline.settings import load_settings, use_settings

    run_id = "nightly_20261124T0000"
    d = tmp_path / "runs" / run_id
    (d / "snapshot").mkdir(parents=True)
    recs = _awkward(run_id)
    _write_parts(recs, d, 3)
    (d / "params.json").write_text(json.dumps({}))
    pd.DataFrame({"item_id": [1], "rank": [1], "similar_item_id": [2], "score": [0.5],
                  "method": ["item-cf"]}).to_parquet(d / "snapshot" / "neighbours.parquet", index=False)
    with use_settings(load_settings(database_url=shop, home=str(tmp_path), publish_chunk_rows=50)):
        assert nightly.publish(shop, str(tmp_path), run_id, GEN, dry_run=True)["rows"] == N_USERS * TOP
        res = nightly.publish(shop, str(tmp_path), run_id, GEN)
    assert res["rows"] == N_USERS * TOP
    with connect(shop) as conn, conn.cursor() as cur:
        cur.execute("SELECT generated_at FROM recsys.publications WHERE live")
        assert cur.fetchone()[0] == GEN
    pd.testing.assert_frame_equal(_table(shop, res["recs_table"]),
                                  recs.sort_values(["user_id", "rank"])[RECS_COLUMNS].reset_index(drop=True),
                                  check_dtype=False)
