"""Importers without a database: each reader on a tiny file, and exact accounting on a corrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.errors import InputDataError
from pipeline.frames import EVENT_COLUMNS, EVENT_TYPES, ITEM_COLUMNS, USER_COLUMNS
from pipeline.ingest import FORMATS, ImportResult, read_dataset
from pipeline.ingest.base import MAX_FIELD_CHARS, safe_text
from pipeline.ingest.diginetica import ANON_USER_BASE

TS = 1511544070  # 2017-11-24 17:21:10 UTC


def _write(path: Path, lines: list[bytes | str], *, newline: bytes = b"\n") -> Path:
    data = newline.join(ln if isinstance(ln, bytes) else ln.encode() for ln in lines) + newline
    path.write_bytes(data)
    return path


def _contract(frames) -> None:
    """Every frame carries the contract's columns and no event has a null in a NOT NULL column."""
    assert set(EVENT_COLUMNS) <= set(frames.events.columns)
    assert set(ITEM_COLUMNS) <= set(frames.items.columns)
    assert set(USER_COLUMNS) <= set(frames.users.columns)
    for c in ("event_id", "user_id", "event_type", "quantity", "ts"):
        assert frames.events[c].notna().all(), c
    assert frames.events["event_type"].isin(EVENT_TYPES).all()
    assert frames.events["event_id"].is_unique
    for c in ("item_id", "title", "category", "created_at", "in_stock", "visible"):
        assert frames.items[c].notna().all(), c
    assert frames.users["created_at"].notna().all()
    assert set(frames.events["user_id"]) <= set(frames.users["user_id"])
    assert set(frames.events["item_id"].dropna()) <= set(frames.items["item_id"])


# ---- readers ---------------------------------------------------------------------------------------------
def test_formats_registered() -> None:
    assert set(FORMATS) == {"movielens", "taobao", "amazon-s3rec", "diginetica", "csv", "parquet"}


def test_movielens(tmp_path: Path) -> None:
    _write(tmp_path / "u.data", ["1\t10\t5\t881250949", "2\t10\t3\t881250950", "2\t11\t4\t881250951",
                                 "3\t99\t1\t881250952"])
    _write(tmp_path / "u.genre", ["unknown|0", "Action|1", "Comedy|2", ""])
    (tmp_path / "u.item").write_bytes(
        "10|Amélie (2001)|01-Jan-2001||http://x|0|0|1\n11|Heat (1995)|||http://y|0|1|1\n".encode("latin-1"))
    _write(tmp_path / "u.user", ["1|24|M|technician|85711", "2|53|F|other|T8H1N", "4|30|F|writer|10001"])
    f = read_dataset("movielens", tmp_path)
    _contract(f)
    assert f.rejects.empty
    ev = f.events
    assert ev["event_id"].tolist() == [1, 2, 3, 4]
    assert (ev["event_type"] == "view").all()
    assert ev["rating"].tolist() == [5, 3, 4, 1]
    assert ev["ts"].iloc[0] == pd.Timestamp(881250949, unit="s", tz="UTC")
    items = f.items.set_index("item_id")
    assert items.loc[10, "title"] == "Amélie (2001)"  # latin-1 decoded
    assert items.loc[10, "category"] == "Comedy"
    assert items.loc[11, "category"] == "Action"  # first flagged genre, in u.genre order
    assert items.loc[11, "attrs"]["genres"] == ["Action", "Comedy"]
    assert items.loc[10, "created_at"] == pd.Timestamp("2001-01-01", tz="UTC")
    assert items.loc[11, "created_at"] == ev["ts"].iloc[2]  # no release date: first rating
    assert items.loc[99, "title"] == "item 99"  # rated but not in u.item: stub, the rating is kept
    users = f.users.set_index("user_id")
    assert users.loc[2, "attrs"] == {"age": 53, "gender": "F", "occupation": "other", "zip": "T8H1N"}
    assert users.loc[2, "created_at"] == ev["ts"].iloc[1]
    assert sorted(users.index) == [1, 2, 3, 4]  # 3: stub from u.data; 4: in u.user without ratings


def test_movielens_catalogue_rejects(tmp_path: Path) -> None:
    _write(tmp_path / "u.data", ["1\t10\t5\t881250949", "1\t11\t9\t881250950", "1\t12\t4\t881250951"])
    _write(tmp_path / "u.item", ["10|A|01-Jan-2001||u|1", "x|B|||u|0", "12|C|32-Foo-1999||u|2", "10|D|||u|0"])
    _write(tmp_path / "u.user", ["1|old|M|writer|1"])
    (tmp_path / "u.genre").write_text("Drama|0\n")
    f = read_dataset("movielens", tmp_path)
    _contract(f)
    assert f.events["item_id"].tolist() == [10, 12]  # rating 9 refused
    reasons = {(s, r["file"], r["line"]): why for s, r, why in f.rejects.itertuples(index=False)}
    assert reasons[("shop.events", "u.data", 2)] == "bad rating '9': not an integer in [1, 5]"
    assert reasons[("shop.items", "u.item", 2)].startswith("bad item_id 'x'")
    assert reasons[("shop.items", "u.item", 3)] == ("bad genre flags: expected 0 or 1; "
                                                     "bad release_date: expected DD-Mon-YYYY")
    assert reasons[("shop.items", "u.item", 4)] == "duplicate item_id: same key as line 1"
    assert reasons[("shop.users", "u.user", 1)].startswith("bad age 'old'")
    items = f.items.set_index("item_id")
    assert items.loc[10, "title"] == "A" and items.loc[12, "title"] == "item 12"  # refused row -> stub


def test_taobao_behaviour_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path / "ub.csv", [f"1,100,7,pv,{TS}", f"1,100,7,fav,{TS + 1}", f"1,100,7,cart,{TS + 2}",
                                        f"2,100,7,buy,{TS + 3}", f"2,200,8,pv,{TS + 4}"])
    f = read_dataset("taobao", path)
    _contract(f)
    assert f.rejects.empty
    assert f.events["event_type"].tolist() == ["view", "click", "add_to_cart", "purchase", "view"]
    assert f.items.set_index("item_id")["category"].to_dict() == {100: "7", 200: "8"}
    assert f.items.set_index("item_id").loc[200, "title"] == "item 200"
    assert f.users["user_id"].tolist() == [1, 2]
    assert f.users.set_index("user_id").loc[2, "created_at"] == pd.Timestamp(TS + 3, unit="s", tz="UTC")


def test_amazon_s3rec(tmp_path: Path) -> None:
    txt = _write(tmp_path / "Toy.txt", ["1 1 2 3", "2 3 1", "3 2 x 1", "1 4 5", "4"])
    (tmp_path / "Toy_item2attributes.json").write_text(json.dumps(
        {"1": [50, 8, 9], "2": [8, 9, 10], "3": [51, 8, 12, 8], "4": [9], "5": [], "6": [8]}))
    f = read_dataset("amazon-s3rec", txt)
    _contract(f)
    ev = f.events
    assert len(ev) == 5 and (ev["event_type"] == "purchase").all()
    assert ev["event_id"].tolist() == [1, 2, 3, 4, 5]
    u1 = ev[ev["user_id"] == 1]
    assert u1["item_id"].tolist() == [1, 2, 3]
    assert u1["ts"].is_monotonic_increasing and u1["ts"].is_unique
    assert (u1["ts"].diff().dropna() == pd.Timedelta(days=1)).all()
    # aligned at the end: every user's last item on the same day, so recency means the same for all users
    assert ev.groupby("user_id")["ts"].max().nunique() == 1
    reasons = dict(zip([r["line"] for r in f.rejects["raw"]], f.rejects["reason"], strict=True))
    assert "bad item_id 'x'" in reasons[3]
    assert reasons[4].startswith("duplicate user: same key as line 1")
    assert reasons[5].startswith("missing field")
    items = f.items.set_index("item_id")
    # 50 and 51 never occur after position 0 -> brands; 8, 9, 10, 12 are category ids (a path).
    assert (items.loc[1, "brand"], items.loc[1, "category"]) == ("50", "8>9")
    assert pd.isna(items.loc[2, "brand"]) and items.loc[2, "category"] == "8>9>10"
    assert (items.loc[3, "brand"], items.loc[3, "category"]) == ("51", "8>12")
    assert items.loc[5, "category"] == "unknown"
    assert 6 in items.index  # catalogue item without events is loaded too
    assert items.loc[1, "attrs"] == {"attributes": [50, 8, 9]}


def test_diginetica(tmp_path: Path) -> None:
    path = _write(tmp_path / "views.csv", [
        "session_id;user_id;item_id;timeframe;eventdate",
        "1;NA;81766;526309;2016-05-09",
        "1;NA;31331;1031018;2016-05-09",
        "2;7;500;10;2016-01-03",
        "3;NA;500;0;2016-01-04",
        "3;9;501;5;2016-01-04",
    ])
    f = read_dataset("diginetica", path)
    _contract(f)
    assert f.rejects.empty
    ev = f.events
    assert ev["event_id"].tolist() == [2, 3, 4, 5, 6]  # line numbers (the header is line 1)
    assert ev["user_id"].tolist() == [ANON_USER_BASE + 1] * 2 + [7, 9, 9]
    assert ev["session_id"].tolist() == ["1", "1", "2", "3", "3"]
    assert ev["ts"].iloc[0] == pd.Timestamp("2016-05-09", tz="UTC") + pd.Timedelta(milliseconds=526309)
    users = f.users.set_index("user_id")
    assert users.loc[ANON_USER_BASE + 1, "attrs"] == {"anonymous": True, "session_id": "1"}
    assert users.loc[7, "attrs"] == {}


def test_diginetica_wrong_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "views.csv", ["a;b;c", "1;2;3"])
    with pytest.raises(InputDataError, match="unexpected header"):
        read_dataset("diginetica", path)


def test_csv_with_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path / "ev.csv", [
        "uid,sku,action,time,q,name,cat",
        "5,10,VIEW,2024-03-01T10:00:00Z,,\"Knife, chef's\",Home>Kitchen>Knives",
        "5,,search,2024-03-01 10:01:00,red shoes,,",
        f"6,10,purchase,{TS},,,",
        f"6,11,add_to_cart,{TS * 1000},,,",
    ])
    mapping = {"user_id": "uid", "item_id": "sku", "event_type": "action", "ts": "time", "query": "q",
               "title": "name", "category": "cat"}
    f = read_dataset("csv", path, mapping=mapping)
    _contract(f)
    assert f.rejects.empty, f.rejects["reason"].tolist()
    ev = f.events
    assert ev["event_type"].tolist() == ["view", "search", "purchase", "add_to_cart"]
    assert ev["item_id"].isna().tolist() == [False, True, False, False]
    assert ev["query"].iloc[1] == "red shoes"
    assert ev["ts"].iloc[1] == pd.Timestamp("2024-03-01 10:01", tz="UTC")  # naive = UTC
    assert ev["ts"].iloc[2] == ev["ts"].iloc[3]  # epoch seconds and milliseconds
    items = f.items.set_index("item_id")
    assert items.loc[10, "title"] == "Knife, chef's"  # quoted comma
    assert items.loc[10, "category"] == "Home>Kitchen>Knives"
    assert (items.loc[11, "title"], items.loc[11, "category"]) == ("item 11", "unknown")


def test_csv_image_paths_become_absolute_local_paths(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    elsewhere = tmp_path / "abs.png"
    path = _write(tmp_path / "ev.csv", [
        "user_id,item_id,event_type,ts,picture",
        f"5,10,view,{TS},pics/10.png",
        f"5,11,view,{TS},{elsewhere}",
        f"6,10,view,{TS},pics/other.png",  # an item keeps its first picture
        f"6,12,view,{TS},",
    ])
    f = read_dataset("csv", path, mapping={"image_path": "picture"})
    assert f.rejects.empty
    items = f.items.set_index("item_id")["image_path"]
    assert items.loc[10] == str((tmp_path / "pics" / "10.png").resolve())
    assert items.loc[11] == str(elsewhere) and pd.isna(items.loc[12])


def test_csv_bad_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path / "ev.csv", ["uid,sku,action,time", f"1,2,view,{TS}"])
    with pytest.raises(InputDataError, match="user_id"):
        read_dataset("csv", path)
    with pytest.raises(InputDataError, match="unknown contract column"):
        read_dataset("csv", path, mapping={"colour": "x"})


def test_parquet(tmp_path: Path) -> None:
    when = pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"], utc=True)
    df = pd.DataFrame({"user": [1, 2, -3, 4], "item": [10, 11, 12, 13],
                       "kind": ["view", "click", "view", "teleport"], "when": when})
    path = tmp_path / "ev.parquet"
    df.to_parquet(path)
    f = read_dataset("parquet", path, mapping={"user_id": "user", "item_id": "item", "event_type": "kind",
                                               "ts": "when"})
    _contract(f)
    assert f.events["user_id"].tolist() == [1, 2]
    assert f.events["ts"].iloc[1] == pd.Timestamp("2024-01-02", tz="UTC")
    assert sorted(f.rejects["reason"]) == [
        "bad user_id '-3': not a non-negative integer",
        "unknown event type 'teleport' (expected one of add_to_cart, click, purchase, search, view)",
    ]
    assert f.rejects["raw"].iloc[0]["row"] == 3


def test_parquet_nul_and_huge(tmp_path: Path) -> None:
    df = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [10, 11, 12], "event_type": ["view"] * 3,
                       "ts": ["2024-01-01", "2024-01-02", "2024-01-03"],
                       "query": [None, "a\x00b", "q" * (MAX_FIELD_CHARS + 1)]})
    path = tmp_path / "ev.parquet"
    df.to_parquet(path)
    f = read_dataset("parquet", path)
    assert f.events["user_id"].tolist() == [1]
    assert f.rejects["reason"].str.split(":").str[0].tolist() == ["NUL byte in query", "huge field"]


# ---- corrupted input: exact accounting -------------------------------------------------------------------
CORRUPT = [
    (None, f"1,100,10,pv,{TS}".encode()),
    ("bad user_id", f"x1,100,10,pv,{TS}".encode()),
    ("bad item_id", f"1,-5,10,pv,{TS}".encode()),
    ("missing field", b"1,100,10,pv"),
    ("extra field", f"1,100,10,pv,{TS},extra".encode()),
    ("unknown event type", f"1,101,10,teleport,{TS}".encode()),
    ("impossible timestamp", b"1,102,10,pv,100"),  # 1970
    ("impossible timestamp", b"1,103,10,pv,4102444800"),  # 2100
    ("impossible timestamp", b"1,104,10,pv,yesterday"),
    ("invalid UTF-8", f"1,105,10,pv\xff,{TS}".encode("latin-1")),
    ("NUL byte", f"1,106,10,pv,{TS}\x00".encode()),
    ("huge field", b"1,107,10," + b"p" * (MAX_FIELD_CHARS + 1) + f",{TS}".encode()),
    ("duplicate event", f"1,100,10,pv,{TS}".encode()),
    (None, b""),  # blank: not a row
    (None, f"2,100,10,buy,{TS + 1}".encode()),
    (None, b"3,108,11,fav,1511544072\r"),  # CRLF line ending
    (None, b"\xfe\xff"),  # garbage bytes right before a valid line
    (None, f"4,109,12,cart,{TS + 3}".encode()),
]


def test_corrupted_file_exact_counts(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.csv", [line for _, line in CORRUPT])
    f = read_dataset("taobao", path)
    assert f.events["event_id"].tolist() == [1, 15, 16, 18]  # line numbers of the valid rows
    assert f.events["user_id"].tolist() == [1, 2, 3, 4]
    assert len(f.rejects) == 13
    by_line = {r["line"]: reason for r, reason in zip(f.rejects["raw"], f.rejects["reason"], strict=True)}
    for n, (expected, _) in enumerate(CORRUPT, start=1):
        if expected:
            assert by_line[n].startswith(expected), (n, by_line[n])
    assert by_line[17].startswith("invalid UTF-8; missing field: 1 of 5")
    assert "before 1990" in by_line[7] and "in the future" in by_line[8] and "unparseable" not in by_line[8]
    assert by_line[13] == "duplicate event: same key as line 1"
    assert (f.rejects["source"] == "shop.events").all()
    # raw is JSON- and Postgres-safe: invalid bytes shown as \xNN, NUL escaped, huge lines cut
    assert by_line and all(json.dumps(r, ensure_ascii=False).encode("utf-8") for r in f.rejects["raw"])
    raws = {r["line"]: r["text"] for r in f.rejects["raw"]}
    assert raws[10] == f"1,105,10,pv\\xff,{TS}"
    assert raws[11] == f"1,106,10,pv,{TS}\\x00"
    assert len(raws[12]) < 2100 and raws[12].endswith("chars]")
    assert all("\x00" not in r for r in f.rejects["reason"])


def test_every_reason_is_collected(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.csv", [b"-1,x,10,nope,99\x00", f"1,2,3,pv,{TS}".encode()])
    f = read_dataset("taobao", path)
    assert len(f.events) == 1
    reason = f.rejects["reason"].iloc[0]
    for part in ("NUL byte", "bad user_id '-1'", "bad item_id 'x'", "unknown event type 'nope'",
                 "impossible timestamp"):
        assert part in reason
    assert reason.count("; ") == 4


def test_generic_csv_corrupted(tmp_path: Path) -> None:
    path = _write(tmp_path / "ev.csv", [
        "user_id,item_id,event_type,ts",
        "1,10,view,2024-01-01T00:00:00Z",
        "1,,view,2024-01-01T00:00:01Z",  # only search may omit the item
        "1,10,view,2024-13-45",
        "1,10,view,1989-12-31",
        b"1,10,v\xc3\x28iew,2024-01-01",
        "2,,search,2024-01-02",  # a search without a query (this file has no query column)
        "1,10,view,2024-01-01T00:00:00Z",
        '3,11,"view",2024-01-03',
        '3,11,"view,2024-01-03',  # an open quote stays on its own line
        "4,12,view,2024-01-04",
    ])
    f = read_dataset("csv", path)
    assert f.events["user_id"].tolist() == [1, 3, 4]
    reasons = dict(zip([r["line"] for r in f.rejects["raw"]], f.rejects["reason"], strict=True))
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8, 10]
    assert reasons[7] == "search without a query"
    assert reasons[3].startswith("empty item_id")
    assert reasons[4].startswith("impossible timestamp '2024-13-45': unparseable")
    assert "before 1990" in reasons[5]
    assert reasons[6].startswith("invalid UTF-8; unknown event type")
    assert reasons[8] == "duplicate event: same key as line 2"
    assert reasons[10].startswith("unbalanced quote")


def test_reread_is_identical(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.csv", [line for _, line in CORRUPT])
    a, b = read_dataset("taobao", path), read_dataset("taobao", path)
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.rejects, b.rejects)


# ---- errors and helpers ----------------------------------------------------------------------------------
def test_unknown_format_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="unknown import format 'xml'"):
        read_dataset("xml", tmp_path)
    missing = tmp_path / "nope.csv"
    with pytest.raises(InputDataError, match="nope.csv") as exc:
        read_dataset("taobao", missing)
    assert "UserBehavior" in str(exc.value)
    with pytest.raises(InputDataError, match="u.data"):
        read_dataset("movielens", tmp_path)


def test_safe_text() -> None:
    assert safe_text("a\udcffb\x00c") == "a\\xffb\\x00c"
    assert safe_text("x" * 5, limit=3) == "xxx... [5 chars]"


def test_summary_line() -> None:
    r = ImportResult(fmt="movielens", path="p", loaded={"users": 943, "items": 1682, "events": 100000},
                     quarantined=0)
    assert r.summary_line() == ("imported movielens: 943 users, 1682 items, 100000 events loaded; "
                                "0 rows quarantined")


def test_quarantine_json_escapes_nul_but_keeps_a_literal_backslash_u0000() -> None:
    """jsonb refuses the NUL escape: a real NUL becomes the text \\u0000; a literal "\\u0000" in the data was
    escaped twice before (and then broke the whole import's quarantine write)."""
    import json

    from pipeline.db.shop import _safe_json

    for raw, back in [("a\x00b", "a\\u0000b"), ("lit\\u0000", "lit\\u0000"), ("x\\\x00", "x\\\\u0000")]:
        text = _safe_json(raw)
        assert "\\u0000" not in text.replace("\\\\", "")  # no NUL escape left for jsonb to refuse
        assert json.loads(text) == back
