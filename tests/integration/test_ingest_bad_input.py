"""Ingest, validate and extract on bad input: each test pins one defect a review found (each failed on the
code as reviewed). Accounting is checked as "loaded + quarantined == rows read".
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from pipeline.db.engine import connect
from pipeline.errors import InputDataError
from pipeline.ingest import import_dataset, read_dataset

pytestmark = pytest.mark.integration
AS_OF = datetime(2026, 11, 24, tzinfo=UTC)
TS = 1511544070  # 2017-11-24 17:21:10 UTC


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _reasons(frames) -> dict[int, str]:
    """Rejected rows by line (CSV) or row (Parquet) number."""
    return {r.get("line", r.get("row")): why for r, why in zip(frames.rejects["raw"], frames.rejects["reason"],
                                                                strict=True)}


# ---- generic CSV ---------------------------------------------------------------------------------------
def test_csv_with_utf8_bom_reads_its_header(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a byte order mark; it is not part of the first column's name."""
    path = _write(tmp_path / "ev.csv", b"\xef\xbb\xbfuser_id,item_id,event_type,ts\n1,10,view,2024-01-01\n")
    f = read_dataset("csv", path)
    assert f.events["user_id"].tolist() == [1] and f.rejects.empty


def test_taobao_with_utf8_bom_keeps_its_first_row(tmp_path: Path) -> None:
    path = _write(tmp_path / "ub.csv", f"\ufeff1,100,7,pv,{TS}\n2,100,7,pv,{TS + 1}\n")
    f = read_dataset("taobao", path)
    assert f.events["user_id"].tolist() == [1, 2] and f.rejects.empty


def test_csv_blank_quantity_means_the_default(tmp_path: Path) -> None:
    """Shops often fill quantity only on cart/purchase rows; a blank optional field is absent, not bad."""
    path = _write(tmp_path / "ev.csv", "user_id,item_id,event_type,ts,quantity\n"
                                       "1,10,view,2024-01-01,\n1,10,purchase,2024-01-02,2\n1,10,view,2024-01-03,0\n")
    f = read_dataset("csv", path)
    assert f.events["quantity"].tolist() == [1, 2]
    assert list(_reasons(f)) == [4] and _reasons(f)[4].startswith("bad quantity '0'")


def test_csv_two_different_events_in_the_same_second_are_both_kept(tmp_path: Path) -> None:
    """Without event_id the duplicate key is "the whole event": two searches with different queries (or two
    purchases of different quantities) in one second are two events, not a double log."""
    path = _write(tmp_path / "ev.csv", "user_id,item_id,event_type,ts,query,quantity\n"
                                       "1,,search,2024-01-01T10:00:00,red,1\n"
                                       "1,,search,2024-01-01T10:00:00,red shoes,1\n"
                                       "1,10,purchase,2024-01-01T10:00:00,,1\n"
                                       "1,10,purchase,2024-01-01T10:00:00,,3\n"
                                       "1,10,purchase,2024-01-01T10:00:00,,3\n")
    f = read_dataset("csv", path)
    assert f.events["query"].tolist()[:2] == ["red", "red shoes"]
    assert len(f.events) == 4
    assert _reasons(f) == {6: "duplicate event: same key as line 5"}


def test_csv_header_naming_a_used_column_twice_is_a_clear_error(tmp_path: Path) -> None:
    """The last of two ``ts`` columns used to win silently, refusing every row as "impossible timestamp"."""
    path = _write(tmp_path / "ev.csv", "user_id,item_id,event_type,ts,ts\n1,10,view,2024-01-01,local\n")
    with pytest.raises(InputDataError, match=r"\['ts'\] appear more than once"):
        read_dataset("csv", path)


def _validate(url: str, run_id: str = "review") -> dict:
    from pipeline.validate import validate_source

    return validate_source(url, run_id, AS_OF, max_bad_share=1.0, data_docs=False)


def test_item_descriptor_that_validation_refuses_does_not_take_the_items_events_with_it(
        db_url: str, tmp_path: Path) -> None:
    """A title with a control character (or an over-long category) on one row used to become the item's title;
    validation then quarantined the item and, through "item_id refers to a quarantined item", every event of
    it, clean rows included. The import must refuse that row itself, so the item takes a clean title."""
    path = _write(tmp_path / "ev.csv", (
        "user_id,item_id,event_type,ts,title,category\n"
        "1,10,view,2024-01-01,Kett\x07le,Home\n"
        "2,10,purchase,2024-01-02,Kettle,Home\n"
        f"3,11,view,2024-01-03,Pan,{'C' * 600}\n"
        "3,11,view,2024-01-04,Pan,Home\n"
        "4,12,view,2024-01-05,Pot,Home\n").encode())
    res = import_dataset(db_url, "csv", path)
    assert res.loaded["events"] + res.quarantined == 5
    rep = _validate(db_url)
    assert rep["shop.items"]["quarantined"] == 0, rep["shop.items"]["reasons"]
    assert rep["shop.events"]["quarantined"] == 0, rep["shop.events"]["reasons"]
    assert rep["shop.events"]["clean"] == res.loaded["events"] == 3
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT item_id, title, category FROM shop.items ORDER BY 1")
        assert cur.fetchall() == [(10, "Kettle", "Home"), (11, "Pan", "Home"), (12, "Pot", "Home")]
        cur.execute("SELECT reason FROM recsys.quarantine WHERE run_id = %s ORDER BY (raw->>'line')::int",
                    (res.run_id,))
        reasons = [r[0] for r in cur.fetchall()]
    assert reasons[0].startswith("title has control or replacement characters")
    assert reasons[1].startswith("category longer than 500 characters")


def test_price_that_rounds_past_numeric_12_2_does_not_sink_the_import(db_url: str, tmp_path: Path) -> None:
    """shop.items.price is numeric(12,2): 9999999999.999 rounds to 10^10 and overflowed the whole COPY."""
    path = _write(tmp_path / "ev.csv", "user_id,item_id,event_type,ts,price\n"
                                       "1,10,view,2024-01-01,9999999999.999\n1,11,view,2024-01-01,9999999999.99\n")
    res = import_dataset(db_url, "csv", path)
    assert res.loaded["events"] == 2
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT item_id, price FROM shop.items ORDER BY 1")
        rows = cur.fetchall()
    assert rows[0] == (10, None) and float(rows[1][1]) == pytest.approx(9999999999.99)


# ---- Parquet -------------------------------------------------------------------------------------------
def test_parquet_nulls_in_required_columns_are_quarantined_not_a_crash(db_url: str, tmp_path: Path) -> None:
    """pandas writes an int column holding a null as float64 with a NULL; each NULL is that row's defect."""
    df = pd.DataFrame({"user_id": [1, None, 3, 4, 5, 6], "item_id": [10, 11, 12, 13, None, 15],
                       "event_type": ["view", "view", None, "view", "click", "view"],
                       "ts": ["2024-01-01", "2024-01-02", "2024-01-03", None, "2024-01-05", "2024-01-06"],
                       "event_id": [101, 102, 103, 104, 105, None]})
    path = tmp_path / "ev.parquet"
    df.to_parquet(path)
    f = read_dataset("parquet", path)
    assert f.events["event_id"].tolist() == [101]
    reasons = _reasons(f)
    assert sorted(reasons) == [2, 3, 4, 5, 6]
    assert reasons[2].startswith("empty user_id") and reasons[4].startswith("empty ts")
    assert "event_type" in reasons[3] and reasons[5].startswith("empty item_id")
    assert reasons[6].startswith("empty event_id")
    res = import_dataset(db_url, "parquet", path)
    assert (res.loaded["events"], res.quarantined) == (1, 5)


def test_parquet_binary_column_with_invalid_utf8_quarantines_the_row(tmp_path: Path) -> None:
    """Parquet BYTE_ARRAY columns without the UTF8 annotation (Hive, old Spark) may hold any bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"user_id": [1, 2], "item_id": [10, 11], "event_type": ["view", "view"],
                      "ts": ["2024-01-01", "2024-01-02"],
                      "session_id": pa.array([b"s-ok", b"s-\xff"], type=pa.binary())})
    path = tmp_path / "ev.parquet"
    pq.write_table(table, path)
    f = read_dataset("parquet", path)
    assert f.events["session_id"].tolist() == ["s-ok"]
    assert _reasons(f)[2].startswith("invalid UTF-8 in session_id")
    assert json.loads(f.rejects["raw"].iloc[0]["text"])["session_id"] == "s-\\xff"  # the bytes stay visible


def test_parquet_column_of_an_unusable_type_is_a_clear_error(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"user_id": [1], "item_id": [10], "event_type": [["view"]], "ts": ["2024-01-01"]})
    path = tmp_path / "ev.parquet"
    pq.write_table(table, path)
    with pytest.raises(InputDataError, match="event_type"):
        read_dataset("parquet", path)


# ---- MovieLens / Amazon --------------------------------------------------------------------------------
def test_movielens_malformed_genre_file_is_a_clear_error(tmp_path: Path) -> None:
    _write(tmp_path / "u.data", "1\t10\t5\t881250949\n")
    _write(tmp_path / "u.item", "10|T|01-Jan-2001||u|0|1\n")
    _write(tmp_path / "u.genre", "unknown|0\nAction|one\n")
    with pytest.raises(InputDataError, match="u.genre"):
        read_dataset("movielens", tmp_path)


def test_amazon_attribute_keys_naming_the_same_item_are_refused_not_overwritten(tmp_path: Path) -> None:
    """"10" and "010" are the same item id: the second silently replaced the first's attributes."""
    txt = _write(tmp_path / "X.txt", "1 10 11\n")
    _write(tmp_path / "X_item2attributes.json", '{"10": [1, 2], "010": [3], "11": [2]}')
    f = read_dataset("amazon-s3rec", txt)
    assert f.items.set_index("item_id").loc[10, "attrs"] == {"attributes": [1, 2]}
    assert f.rejects["reason"].tolist() == ["duplicate item_id: same key as '10'"]


# ---- extraction ----------------------------------------------------------------------------------------
def _tiny_shop(url: str, queries: list[str]) -> None:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO shop.users (user_id, created_at) VALUES (1, '2026-01-01')")
        cur.execute("INSERT INTO shop.items (item_id, title, category, created_at) VALUES (10, 'x', 'A', '2026-01-01')")
        for i, q in enumerate(queries, start=1):
            cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, query, session_id, ts) "
                        "VALUES (%s, 1, NULL, 'search', %s, %s, '2026-11-20')", (i, q, q))


def test_extraction_keeps_text_that_looks_like_a_null_marker(db_url: str, tmp_path: Path) -> None:
    """pyarrow's CSV reader treats NA, null, NaN, N/A ... as NULL by default; COPY writes them unquoted."""
    from pipeline.extract import extract_snapshot, read_events

    words = ["NA", "null", "NULL", "NaN", "nan", "N/A", "n/a", "#N/A", "-nan", "ok"]
    _tiny_shop(db_url, words)
    out = extract_snapshot(db_url, tmp_path / "snap", AS_OF, None, store_url=str(tmp_path / "store"))
    assert out["events"] == len(words)
    ev = read_events(tmp_path / "snap").sort_values("event_id")
    assert ev["query"].tolist() == words and ev["session_id"].tolist() == words


def test_event_that_arrives_before_its_item_is_extracted_once_the_item_arrives(db_url: str, tmp_path: Path) -> None:
    """Events often land before the catalogue sync brings their item. Such an event is quarantined ("item_id
    not in shop.items") and left out, which is right for that run; but the store's high-water mark passed it,
    so once the item arrived no later incremental run read it: lost until a full rebuild. It is now deferred
    (its id kept in the manifest) and read by the first run after its item arrives."""
    from pipeline.extract import extract_snapshot, read_events

    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO shop.users (user_id, created_at) VALUES (1, '2026-01-01')")
        cur.execute("INSERT INTO shop.items (item_id, title, category, created_at) VALUES (10, 'x', 'A', '2026-01-01')")
        cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, ts) VALUES "
                    "(1, 1, 10, 'view', '2026-11-20'), (2, 1, 99, 'view', '2026-11-20')")
    store = str(tmp_path / "store")
    first = extract_snapshot(db_url, tmp_path / "r1", AS_OF, None, store_url=store)
    assert first["events"] == 1
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO shop.items (item_id, title, category, created_at) VALUES (99, 'y', 'A', '2026-01-01')")
    second = extract_snapshot(db_url, tmp_path / "r2", AS_OF, None, store_url=store)
    full = extract_snapshot(db_url, tmp_path / "r3", AS_OF, None, store_url=str(tmp_path / "fresh"))
    assert set(read_events(tmp_path / "r3")["event_id"]) == {1, 2} and full["events"] == 2
    assert set(read_events(tmp_path / "r2")["event_id"]) == {1, 2}
    assert second["events"] == 2


def test_a_deferred_event_is_stored_once_across_reruns_and_later_runs(db_url: str, tmp_path: Path) -> None:
    """The deferred event is stored by the run that finds its item, exactly once: re-running that run replaces
    its batch (starting again from the deferred ids it began with), and later runs no longer re-read it."""
    import json

    from pipeline.extract import extract_snapshot, read_events

    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO shop.users (user_id, created_at) VALUES (1, '2026-01-01')")
        cur.execute("INSERT INTO shop.items (item_id, title, category, created_at) VALUES (10, 'x', 'A', '2026-01-01')")
        cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, ts) VALUES "
                    "(1, 1, 10, 'view', '2026-11-20'), (2, 1, 99, 'view', '2026-11-20'), "
                    "(3, 1, 77, 'click', '2026-11-20')")
    store = str(tmp_path / "store")
    extract_snapshot(db_url, tmp_path / "r1", AS_OF, None, store_url=store)
    manifest = next(Path(store).rglob("manifest.json"))
    assert json.loads(manifest.read_text())["deferred"] == [2, 3]
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO shop.items (item_id, title, category, created_at) VALUES (99, 'y', 'A', '2026-01-01')")
    for _ in range(2):  # the run that finds item 99, and its re-run
        second = extract_snapshot(db_url, tmp_path / "r2", AS_OF, None, store_url=store)
        assert sorted(read_events(tmp_path / "r2")["event_id"]) == [1, 2]
        assert json.loads(manifest.read_text())["deferred"] == [3]  # item 77 is still missing
    assert second["mode"] == "rerun"
    with connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO shop.events (event_id, user_id, item_id, event_type, ts) VALUES "
                    "(4, 1, 10, 'click', '2026-11-20')")
    third = extract_snapshot(db_url, tmp_path / "r3", AS_OF, None, store_url=store)
    assert third["mode"] == "incremental"
    assert sorted(read_events(tmp_path / "r3")["event_id"]) == [1, 2, 4]
