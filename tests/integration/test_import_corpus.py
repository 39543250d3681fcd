"""The bad-input corpus of ``rerank import`` (issue 23, acceptance point 3): broken lines and broken files.

Each entry of :data:`CORPUS` is one kind of damage: a format, a builder that writes the file(s) and says how
many data rows they hold, and the expected outcome:

- row level: exactly ``loaded`` rows load, and every other row is in ``recsys.quarantine`` with a non-empty
  reason holding the expected substring (``bad``: line or row number -> substring). Every row-level file also
  holds valid rows next to the bad ones, so "a valid row is never lost because of an invalid neighbour" is
  checked by ``loaded`` itself; ``loaded + quarantined == rows`` checks that nothing is lost or counted twice;
- whole file (``error``): the import fails with one line naming what failed and what to check (``check:``),
  and the previous shop and its quarantine are untouched.

The cases run in order against one database (each import replaces the shop, so every whole-file failure
meets a non-empty shop). Entries with ``cli=True`` go through the real ``rerank import`` in a subprocess
(exit code, one stderr line, the last stdout line); the rest call ``pipeline.ingest.import_dataset``.
Reason substrings are the importers' constants (see ``pipeline.ingest.base``).
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.db.engine import connect
from pipeline.errors import InputDataError
from pipeline.ingest import import_dataset

pytestmark = pytest.mark.integration
RERANK = str(Path(sys.executable).with_name("rerank"))
REPO = Path(__file__).resolve().parents[2]
TEMPLATE_DB = "rerank_test_template"  # tests/conftest.py's migrated template


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))

Builder = Callable[[Path], tuple[Path, int]]  # folder -> (PATH to import, data rows it holds)


@dataclass(frozen=True)
class Case:
    kind: str
    fmt: str
    build: Builder
    loaded: int = 0
    bad: dict[int, str] = field(default_factory=dict)
    error: str | None = None
    unit: str = "events"  # what a valid data row becomes: events, users (S3-Rec lines) or items (u.item lines)
    source: str = "shop.events"  # where its bad rows are quarantined
    cli: bool = False


# ---- builders ------------------------------------------------------------------------------------------
def _b(x: bytes | str) -> bytes:
    return x if isinstance(x, bytes) else x.encode()


def lines(name: str, rows: list[bytes | str], *, header: bytes | str | None = None, nl: bytes = b"\n",
          encode: Callable[[bytes], bytes] | None = None) -> Builder:
    """A text file of ``header`` + ``rows``; its data rows are the non-blank physical rows."""

    def build(folder: Path) -> tuple[Path, int]:
        body = ([_b(header)] if header is not None else []) + [_b(r) for r in rows]
        data = nl.join(body) + nl
        path = folder / name
        path.write_bytes(encode(data) if encode else data)
        return path, sum(1 for r in rows if _b(r).strip())

    return build


def raw(name: str, data: bytes, rows: int = 0) -> Builder:
    def build(folder: Path) -> tuple[Path, int]:
        path = folder / name
        path.write_bytes(data)
        return path, rows

    return build


def parquet(columns: dict[str, pa.Array | list], *, name: str = "ev.parquet",
            damage: Callable[[bytes], bytes] | None = None) -> Builder:
    def build(folder: Path) -> tuple[Path, int]:
        table = pa.table(columns)
        path = folder / name
        pq.write_table(table, path)
        if damage:
            path.write_bytes(damage(path.read_bytes()))
        return path, table.num_rows

    return build


def files(target: str, contents: dict[str, bytes | str], *, count: str = "u.data") -> Builder:
    """Several files in the folder; PATH is ``target`` ('.': the folder); data rows are ``count``'s."""

    def build(folder: Path) -> tuple[Path, int]:
        for name, text in contents.items():
            (folder / name).write_bytes(_b(text))
        data = _b(contents.get(count, b""))
        return folder / target, sum(1 for r in data.split(b"\n") if r.strip())

    return build


def flip_middle(data: bytes) -> bytes:
    b = bytearray(data)
    for i in range(8, min(len(b) // 2, 400)):
        b[i] ^= 0x5A
    return bytes(b)


# ---- the corpus ------------------------------------------------------------------------------------------
H = "user_id,item_id,event_type,ts"
HQ = H + ",query"
OK1, OK2 = "1,10,view,2024-01-01T00:00:00Z", "2,11,click,2024-01-02T00:00:00Z"
Q1, Q2 = OK1 + ",", OK2 + ","
TB1, TB2 = "1,100,7,pv,1511544070", "2,101,7,buy,1511544071"  # Taobao UserBehavior
ML1, ML2 = "1\t10\t5\t881250949", "2\t11\t3\t881250950"  # MovieLens u.data
FLAGS = "0|" * 18  # u.item: the first 18 of the 19 genre flags
DG = "session_id;user_id;item_id;timeframe;eventdate"
DG1, DG2 = "1;NA;81766;526309;2016-05-09", "2;7;31331;1031018;2016-05-09"
TEN_MB = 10_000_000


def row(kind: str, bad_line: bytes | str, reason: str, *, header: str = H, ok: tuple[str, str] = (OK1, OK2),
        fmt: str = "csv", **kw) -> Case:
    """A csv whose line 3 is the bad one, between two valid rows."""
    return Case(kind, fmt, lines("ev.csv", [ok[0], bad_line, ok[1]], header=header), loaded=2, bad={3: reason},
                **kw)


def fine(kind: str, extra: str, *, header: str = H, ok: tuple[str, str] = (OK1, OK2), **kw) -> Case:
    """A csv whose odd-looking line 3 is valid: all three rows load."""
    return Case(kind, "csv", lines("ev.csv", [ok[0], extra, ok[1]], header=header), loaded=3, **kw)


def whole(kind: str, fmt: str, build: Builder, error: str, **kw) -> Case:
    return Case(kind, fmt, build, error=error, **kw)


def _csv_text(*rows: str, header: str = H) -> bytes:
    return ("\n".join([header, *rows]) + "\n").encode()


CORPUS: list[Case] = [
    # -- csv: encodings and bytes
    row("latin-1 byte in a UTF-8 csv", b"3,12,caf\xe9,2024-01-03", "invalid UTF-8", cli=True),
    row("NUL byte", b"3,12,view\x00,2024-01-03", "NUL byte"),
    Case("UTF-8 BOM before the header", "csv", lines("ev.csv", [OK1, OK2], header=b"\xef\xbb\xbf" + _b(H)),
         loaded=2),
    Case("UTF-16 with BOM", "csv", lines("ev.csv", [OK1, OK2], header=H, encode=lambda b: b.decode().encode("utf-16")),
         loaded=2, cli=True),
    whole("UTF-16 without BOM", "csv", raw("ev.csv", _csv_text(OK1).decode().encode("utf-16-le")), "not found"),
    # -- csv: huge lines
    row("10 MB field", "3,,search,2024-01-03," + "q" * TEN_MB, "huge field", header=HQ, ok=(Q1, Q2)),
    row("10 MB line without a delimiter", "x" * TEN_MB, "huge field"),
    # -- csv: structure of a line
    row("missing field", "3,12,view", "missing field"),
    row("extra field", "3,12,view,2024-01-03,zzz", "extra field"),
    Case("empty and blank lines", "csv", lines("ev.csv", ["", OK1, "   ", "\t", OK2, ""], header=H), loaded=2),
    Case("CRLF line endings", "csv", lines("ev.csv", [OK1, OK2], header=H, nl=b"\r\n"), loaded=2),
    Case("mixed line endings", "csv", raw("ev.csv", _b(f"{H}\r\n{OK1}\n{OK2}\r\n3,12,view,2024-01-03\n"), 3),
         loaded=3),
    Case("CR-only line endings (classic Mac)", "csv", lines("ev.csv", [OK1, OK2], header=H, nl=b"\r"), loaded=2),
    Case("quoted field with an embedded newline", "csv",
         lines("ev.csv", [Q1, '3,,search,2024-01-03,"red', 'shoes"', Q2], header=HQ), loaded=2,
         bad={3: "unbalanced quote", 4: "missing field"}),
    row("unbalanced quote", '3,12,"view,2024-01-03', "unbalanced quote"),
    row("text after a closing quote", '3,12,"view"x,2024-01-03', "unbalanced quote"),
    row("bare CR inside a quoted line", b'3,,search,2024-01-03,"a"\rb', "unbalanced quote", header=HQ,
        ok=(Q1, Q2)),
    fine("quoted fields", '3,12,"view","2024-01-03"'),
    fine("a quote inside an unquoted field (inch mark)", '3,12,view,2024-01-03,TV 55"', header=H + ",title",
         ok=(OK1 + ",Pan", OK2 + ",Pot")),
    # -- csv: ids
    row("negative id", "-3,12,view,2024-01-03", "bad user_id"),
    fine("zero id (a valid bigint)", "0,12,view,2024-01-03"),
    row("id above int64", "9223372036854775808,12,view,2024-01-03", "bad user_id"),
    row("float id", "3.0,12,view,2024-01-03", "bad user_id"),
    row("hex id", "3,0x1F,view,2024-01-03", "bad item_id"),
    row("id in scientific notation", "3,1e5,view,2024-01-03", "bad item_id"),
    row("non-numeric id", "abc,12,view,2024-01-03", "bad user_id"),
    row("non-ASCII digits as id", "３,12,view,2024-01-03", "bad user_id"),
    row("empty user_id", ",12,view,2024-01-03", "empty user_id"),
    fine("id padded with spaces", " 3 ,12,view,2024-01-03"),
    # -- csv: timestamps
    row("timestamp in the far past", "3,12,view,1900-01-01", "before 1990"),
    row("timestamp at epoch 0", "3,12,view,0", "before 1990"),
    row("timestamp in the far future", "3,12,view,2999-01-01", "in the future"),
    row("timestamp beyond year 9999", "3,12,view,10000-01-01", "impossible timestamp"),
    row("epoch digits out of range", "3,12,view,99999999999999999999", "impossible timestamp"),
    row("unparseable timestamp", "3,12,view,yesterday", "unparseable"),
    row("relative timestamp 'now'", "3,12,view,now", "unparseable"),
    row("ambiguous day/month timestamp", "3,12,view,01/02/2024", "unparseable"),
    row("impossible date", "3,12,view,2024-02-30", "unparseable"),
    row("empty timestamp", "3,12,view,", "empty ts"),
    fine("timezone-naive timestamp (read as UTC)", "3,12,view,2024-01-03T10:00:00"),
    fine("timestamp with an offset", "3,12,view,2024-01-03T10:00:00+05:00"),
    fine("epoch milliseconds", "3,12,view,1704067200000"),
    # -- csv: event types and their fields
    row("unknown event type", "3,12,teleport,2024-01-03", "unknown event type"),
    Case("event type case variations", "csv", lines("ev.csv", [OK1, "3,12,VIEW,2024-01-03",
                                                               "4,12, Add_To_Cart ,2024-01-03", OK2], header=H),
         loaded=4),
    row("empty event type", "3,12,,2024-01-03", "empty event_type"),
    row("search event without a query", "3,,search,2024-01-03,", "search without a query", header=HQ,
        ok=(Q1, Q2)),
    row("item event without an item", "3,,view,2024-01-03", "empty item_id"),
    row("query longer than validation allows", "3,,search,2024-01-03," + "q" * 1001, "query longer than",
        header=HQ, ok=(Q1, Q2)),
    row("the text \\u0000 in a refused line", "3,12,teleport,2024-01-03,\\u0000", "unknown event type",
        header=HQ, ok=(Q1, Q2)),
    fine("the text \\u0000 in a valid query", "3,,search,2024-01-03,a\\u0000b", header=HQ, ok=(Q1, Q2)),
    row("session_id longer than validation allows", "3,12,view,2024-01-03," + "s" * 201, "session_id longer than",
        header=H + ",session_id", ok=(OK1 + ",a", OK2 + ",")),
    row("title with a control character", "3,12,view,2024-01-03,Kett\x07le", "title has control",
        header=H + ",title", ok=(OK1 + ",Pan", OK2 + ",Pot")),
    # -- csv: quantity
    row("quantity 0", "3,12,purchase,2024-01-03,0", "bad quantity", header=H + ",quantity",
        ok=(OK1 + ",1", OK2 + ",")),
    row("negative quantity", "3,12,purchase,2024-01-03,-2", "bad quantity", header=H + ",quantity",
        ok=(OK1 + ",1", OK2 + ",")),
    row("non-integer quantity", "3,12,purchase,2024-01-03,1.5", "bad quantity", header=H + ",quantity",
        ok=(OK1 + ",1", OK2 + ",")),
    row("huge quantity", "3,12,purchase,2024-01-03,99999999999", "bad quantity", header=H + ",quantity",
        ok=(OK1 + ",1", OK2 + ",")),
    # -- csv: duplicates
    Case("duplicate event ids", "csv", lines("ev.csv", ["7," + OK1, "7,3,12,view,2024-01-03", "8," + OK2],
                                             header="event_id," + H), loaded=2, bad={3: "duplicate event_id"}),
    Case("duplicate rows", "csv", lines("ev.csv", [OK1, OK2, OK1], header=H), loaded=2,
         bad={4: "duplicate event: same key as line 2"}),
    # -- csv: the header
    Case("semicolon-delimited csv", "csv", raw("ev.csv", _csv_text(OK1, OK2).replace(b",", b";"), 2), loaded=2),
    Case("tab-delimited csv", "csv", raw("ev.csv", _csv_text(OK1, OK2).replace(b",", b"\t"), 2), loaded=2),
    whole("duplicate header naming a used column", "csv", raw("ev.csv", _csv_text(OK1 + ",x", header=H + ",ts")),
          "more than once"),
    Case("duplicate header naming an unused column", "csv",
         lines("ev.csv", [OK1 + ",a,b", OK2 + ",c,d"], header=H + ",note,note"), loaded=2),
    Case("extra columns", "csv", lines("ev.csv", [OK1 + ",x,y", OK2 + ",z,w"], header=H + ",colour,size"),
         loaded=2),
    whole("missing required column", "csv", raw("ev.csv", _csv_text("1,10,view", header="user_id,item_id,event_type")),
          "ts not found"),
    whole("header in another case", "csv", raw("ev.csv", _csv_text(OK1, header=H.upper())), "not found"),
    whole("header line that is not valid csv", "csv", raw("ev.csv", _csv_text(OK1, header='user_id,"item_id,x"y')),
          "not valid CSV"),
    # -- csv: empty and non-files
    whole("empty file", "csv", raw("ev.csv", b""), "is empty"),
    whole("blank-only file", "csv", raw("ev.csv", b"\n  \n\t\n"), "only blank lines"),
    Case("blank lines before the header", "csv",
         raw("ev.csv", b"\n \n" + _csv_text(OK1, "x,10,view,2024-01-01", OK2), 3), loaded=2, bad={5: "bad user_id"}),
    whole("header-only file", "csv", raw("ev.csv", _csv_text()), "no valid events", cli=True),
    whole("every row invalid", "csv", lines("ev.csv", ["x,10,view,2024-01-01", "1,10,teleport,2024-01-01"], header=H),
          "no valid events"),
    whole("missing file", "csv", lambda folder: (folder / "absent.csv", 0), "not found", cli=True),
    whole("directory instead of a file", "csv", lambda folder: (folder, 0), "is a directory", cli=True),
    whole("parquet bytes given as csv", "csv",
          lambda folder: (parquet({"a": [1]}, name="ev.csv")(folder)[0], 0), "not found"),
    # -- csv: gzip (read by its magic bytes)
    Case("gzip-compressed csv", "csv", raw("ev.csv.gz", gzip.compress(_csv_text(OK1, OK2)), 2), loaded=2),
    whole("truncated gzip", "csv", raw("ev.csv.gz", gzip.compress(_csv_text(OK1, OK2) * 50)[:60]),
          "truncated or corrupt gzip", cli=True),
    whole("gzip with a corrupt checksum", "csv",
          raw("ev.csv.gz", (lambda z: z[:-8] + bytes(b ^ 0xFF for b in z[-8:-4]) + z[-4:])(
              gzip.compress(_csv_text(OK1, OK2)))), "truncated or corrupt gzip"),
    Case("plain csv named .gz", "csv", raw("ev.csv.gz", _csv_text(OK1, OK2), 2), loaded=2),
    # -- taobao
    Case("taobao: a header line", "taobao",
         lines("ub.csv", ["user_id,item_id,category_id,behavior_type,timestamp", TB1, TB2]), loaded=2,
         bad={1: "bad user_id"}, cli=True),
    Case("taobao: upper-case behaviour", "taobao", lines("ub.csv", [TB1, "3,102,7,PV,1511544072", TB2]), loaded=2,
         bad={2: "unknown event type"}),
    Case("taobao: millisecond timestamps", "taobao", lines("ub.csv", [TB1, "3,102,7,pv,1511544072000", TB2]),
         loaded=2, bad={2: "impossible timestamp"}),
    Case("taobao: duplicate row", "taobao", lines("ub.csv", [TB1, TB2, TB1]), loaded=2, bad={3: "duplicate event"}),
    Case("taobao: latin-1 byte", "taobao", lines("ub.csv", [TB1, b"3,102,7,p\xe9,1511544072", TB2]), loaded=2,
         bad={2: "invalid UTF-8"}),
    whole("taobao: semicolon-delimited", "taobao", raw("ub.csv", _b(f"{TB1}\n{TB2}\n").replace(b",", b";")),
          "no valid events"),
    whole("taobao: folder with two csv files", "taobao", files(".", {"a.csv": TB1, "b.csv": TB2}),
          "expected one .csv"),
    # -- movielens
    Case("movielens: rating out of range", "movielens", files(".", {"u.data": f"{ML1}\n3\t12\t6\t881250951\n{ML2}\n"}),
         loaded=2, bad={2: "bad rating"}),
    Case("movielens: comma instead of TAB", "movielens", files(".", {"u.data": f"{ML1}\n3,12,4,881250951\n{ML2}\n"}),
         loaded=2, bad={2: "missing field"}),
    Case("movielens: duplicate rating", "movielens", files(".", {"u.data": f"{ML1}\n{ML2}\n1\t10\t4\t881250999\n"}),
         loaded=2, bad={3: "duplicate rating"}),
    Case("movielens: millisecond timestamp", "movielens",
         files(".", {"u.data": f"{ML1}\n3\t12\t4\t881250951000\n{ML2}\n"}), loaded=2, bad={2: "impossible timestamp"}),
    Case("movielens: bad genre flag in u.item", "movielens",
         files(".", {"u.data": f"{ML1}\n", "u.item": f"10|A|01-Jan-1995||u|{FLAGS}1\n11|B|01-Jan-1995||u|{FLAGS}7\n"},
               count="u.item"),
         loaded=1, bad={2: "bad genre flags"}, unit="items", source="shop.items"),
    whole("movielens: folder without u.data", "movielens", files(".", {"u.item": "10|A|01-Jan-1995||u|0\n"}),
          "u.data"),
    # -- diginetica
    Case("diginetica: bad eventdate", "diginetica",
         lines("views.csv", [DG1, "3;8;5;10;2016/05/09", DG2], header=DG), loaded=2, bad={3: "expected YYYY-MM-DD"}),
    Case("diginetica: negative timeframe", "diginetica",
         lines("views.csv", [DG1, "3;8;5;-10;2016-05-09", DG2], header=DG), loaded=2, bad={3: "bad timeframe"}),
    Case("diginetica: eventdate in the future", "diginetica",
         lines("views.csv", [DG1, "3;8;5;10;2999-05-09", DG2], header=DG), loaded=2, bad={3: "in the future"}),
    whole("diginetica: comma-delimited header", "diginetica", raw("views.csv", _b(DG.replace(";", ",") + "\n")),
          "unexpected header"),
    # -- amazon-s3rec
    Case("amazon: non-numeric item token", "amazon-s3rec", lines("X.txt", ["1 10 11", "2 10 x 12", "3 11"]),
         loaded=2, bad={2: "bad item_id"}, unit="users"),
    Case("amazon: user without items", "amazon-s3rec", lines("X.txt", ["1 10 11", "2", "3 11"]), loaded=2,
         bad={2: "missing field"}, unit="users"),
    Case("amazon: duplicate user line", "amazon-s3rec", lines("X.txt", ["1 10 11", "3 11", "1 12"]), loaded=2,
         bad={3: "duplicate user"}, unit="users"),
    Case("amazon: float user id", "amazon-s3rec", lines("X.txt", ["1 10 11", "2.5 10", "3 11"]), loaded=2,
         bad={2: "bad user_id"}, unit="users"),
    whole("amazon: attributes file not JSON", "amazon-s3rec",
          files("X.txt", {"X.txt": "1 10 11\n", "X_item2attributes.json": "{10: [1,"}), "not valid JSON"),
    # -- parquet
    Case("parquet: NULLs in required columns", "parquet",
         parquet({"user_id": [1, None, 3, 4], "item_id": [10, 11, 12, None],
                  "event_type": ["view", "view", None, "view"],
                  "ts": ["2024-01-01", "2024-01-02", "2024-01-03", None]}),
         loaded=1, bad={2: "empty user_id", 3: "event_type", 4: "empty item_id"}, cli=True),
    Case("parquet: ids of the wrong type (text, float)", "parquet",
         parquet({"user_id": ["1", "abc", "3"], "item_id": [10.0, 11.5, 12.0],
                  "event_type": ["view"] * 3, "ts": ["2024-01-01"] * 3}),
         loaded=2, bad={2: "bad user_id"}),
    Case("parquet: timestamp and epoch columns", "parquet",
         parquet({"user_id": [1, 2], "item_id": [10, 11], "event_type": ["view", "click"],
                  "ts": pa.array([1704067200, 1704153600], type=pa.int64())}), loaded=2),
    Case("parquet: unknown event type and case variation", "parquet",
         parquet({"user_id": [1, 2, 3], "item_id": [10, 11, 12], "event_type": ["VIEW", "teleport", "Click"],
                  "ts": ["2024-01-01"] * 3}), loaded=2, bad={2: "unknown event type"}),
    Case("parquet: NUL byte in a string", "parquet",
         parquet({"user_id": [1, 2], "item_id": [10, 11], "event_type": ["view", "view\x00"],
                  "ts": ["2024-01-01"] * 2}), loaded=1, bad={2: "NUL byte"}),
    Case("parquet: binary column with invalid UTF-8", "parquet",
         parquet({"user_id": [1, 2], "item_id": [10, 11], "event_type": ["view", "view"], "ts": ["2024-01-01"] * 2,
                  "session_id": pa.array([b"ok", b"s-\xff"], type=pa.binary())}), loaded=1,
         bad={2: "invalid UTF-8"}),
    whole("parquet: list column for event_type", "parquet",
          parquet({"user_id": [1], "item_id": [10], "event_type": [["view"]], "ts": ["2024-01-01"]}), "cannot be read"),
    whole("parquet: missing required column", "parquet",
          parquet({"user_id": [1], "item_id": [10], "event_type": ["view"]}), "ts not found"),
    whole("parquet: corrupt data pages", "parquet",
          parquet({"user_id": list(range(1, 501)), "item_id": [10] * 500, "event_type": ["view"] * 500,
                   "ts": ["2024-01-01"] * 500}, damage=flip_middle), "corrupt Parquet", cli=True),
    whole("parquet: truncated file", "parquet",
          parquet({"user_id": [1], "item_id": [10], "event_type": ["view"], "ts": ["2024-01-01"]},
                  damage=lambda b: b[:-20]), "not a readable Parquet"),
    whole("parquet: a csv named .parquet", "parquet", raw("ev.parquet", _csv_text(OK1)), "not a readable Parquet"),
    whole("parquet: no rows", "parquet",
          parquet({"user_id": pa.array([], pa.int64()), "item_id": pa.array([], pa.int64()),
                   "event_type": pa.array([], pa.string()), "ts": pa.array([], pa.string())}), "no valid events"),
]


# ---- running a case ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus_db(new_database) -> Iterator[str]:  # noqa: ANN001 - conftest's factory
    """One database for the whole corpus (cases run in order; each import replaces the shop)."""
    with new_database(prefix="t_corpus") as url:
        yield url


def _state(url: str) -> dict[str, object]:
    """Counts and a checksum of the shop and the import quarantine."""
    with connect(url) as conn, conn.cursor() as cur:
        out: dict[str, object] = {}
        for t in ("users", "items", "events"):
            cur.execute(f"SELECT count(*) FROM shop.{t}")
            out[t] = cur.fetchone()[0]
        cur.execute("SELECT coalesce(sum(event_id), 0), coalesce(sum(user_id), 0) FROM shop.events")
        out["checksum"] = cur.fetchone()
        cur.execute("SELECT count(*), min(run_id) FROM recsys.quarantine")
        out["quarantine"] = cur.fetchone()
        return out


def _quarantined(url: str) -> list[tuple[str, int, str]]:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT source, coalesce(raw->>'line', raw->>'row', raw->>'key'), reason FROM recsys.quarantine "
                    "WHERE run_id LIKE %s", ("import\\_%",))
        return [(s, int(n) if n and n.isdigit() else -1, r) for s, n, r in cur.fetchall()]


def _cli(url: str, home: Path, fmt: str, path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANK_")}
    env.update(RERANK_DATABASE_URL=url, RERANK_HOME=str(home), PYTHONPATH=str(REPO), COLUMNS="300")
    return subprocess.run([RERANK, "import", fmt, str(path), "--replace"], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)


SUMMARY: Counter = Counter()


@pytest.mark.parametrize("case", CORPUS, ids=[c.kind for c in CORPUS])
def test_corpus(case: Case, corpus_db: str, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    path, n_rows = case.build(folder)
    if case.error is None:
        assert case.loaded >= 1, "a row-level case keeps a valid row next to the bad ones"
        if case.cli:
            proc = _cli(corpus_db, tmp_path / "home", case.fmt, path)
            assert proc.returncode == 0, proc.stderr
            last = proc.stdout.strip().splitlines()[-1]
            assert last.endswith(f"{len(case.bad)} rows quarantined"), last  # the last line gives both counts
            assert case.unit != "events" or f" {case.loaded} events loaded;" in last, last
        else:
            import_dataset(corpus_db, case.fmt, path)
        state = _state(corpus_db)
        rejects = [q for q in _quarantined(corpus_db) if q[0] == case.source]
        assert state[case.unit] == case.loaded, (state, rejects)
        assert {n: r for _, n, r in rejects}.keys() == case.bad.keys(), rejects
        for _, n, reason in rejects:
            assert reason.strip() and case.bad[n] in reason, (n, reason)
        assert state[case.unit] + len(rejects) == n_rows  # nothing lost, nothing counted twice
        SUMMARY["rows"] += 1
    else:
        if _state(corpus_db)["events"] == 0:  # the previous shop a failed import must leave alone
            import_dataset(corpus_db, "csv", lines("base.csv", [OK1, OK2], header=H)(tmp_path)[0])
        before = _state(corpus_db)
        if case.cli:
            proc = _cli(corpus_db, tmp_path / "home", case.fmt, path)
            err = proc.stderr.strip().splitlines()
            assert proc.returncode == 1, (proc.returncode, proc.stderr)
            assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
            message = err[0]
        else:
            with pytest.raises(InputDataError) as exc:
                import_dataset(corpus_db, case.fmt, path)
            message = str(exc.value)
        assert "\n" not in message and "(check:" in message and case.error in message, message
        assert len(message) < 1000, message
        assert _state(corpus_db) == before
        SUMMARY["file"] += 1
    SUMMARY[case.fmt] += 1
    SUMMARY["cli" if case.cli else "api"] += 1


def test_corpus_size_and_summary() -> None:
    """At least 50 kinds, every format covered; prints one summary line."""
    fmts = Counter(c.fmt for c in CORPUS)
    assert len(CORPUS) >= 50
    assert len({c.kind for c in CORPUS}) == len(CORPUS), "kinds are unique"
    assert set(fmts) == {"csv", "parquet", "taobao", "movielens", "diginetica", "amazon-s3rec"}
    assert sum(c.cli for c in CORPUS) >= 5
    per_fmt = ", ".join(f"{f} {n}" for f, n in sorted(fmts.items()))
    levels = Counter("file" if c.error else "row" for c in CORPUS)
    print(f"\nimport corpus: {len(CORPUS)} kinds ({levels['row']} row-level, {levels['file']} whole-file; "
          f"{sum(c.cli for c in CORPUS)} through the CLI); {per_fmt}; ran {sum(SUMMARY[k] for k in ('rows', 'file'))}")

