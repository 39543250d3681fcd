"""Row-level validation shared by every importer: parse line-wise, check vectorised, quarantine exactly.

Design:

- A file is read as bytes and split on ``\\n`` into physical lines *before* any parsing, so one bad line can
  never sink its neighbours: every later check is a vectorised pandas operation over the lines, and every
  line ends either in a frame or in ``rejects`` (blank lines are not rows and are skipped).
- A gzip file (found by its magic bytes, whatever its name) is decompressed first; a truncated or corrupt one
  is a whole-file error. A UTF-16/UTF-32 file is decoded by its byte order mark; a file whose only line
  breaks are ``\\r`` (classic Mac) is split on them.
- UTF-8 is decoded with ``errors="surrogateescape"``: invalid bytes become lone surrogates, which flags
  exactly the lines that hold them, and the original bytes can still be shown (as ``\\xNN``) in the
  quarantined row.
- A row collects *every* reason it fails ("; "-joined, in check order); a missing field is reported once as
  ``missing field`` (its absent columns are not re-reported as empty values).
- Reason names are constants below (tests and people grep for them): ``invalid UTF-8``, ``NUL byte``,
  ``huge field``, ``missing field``, ``extra field``, ``unbalanced quote``, ``empty <col>``, ``bad <col>``
  (ids: not a non-negative integer of at most 18 ASCII digits, so it fits Postgres ``bigint``), ``unknown event type``,
  ``impossible timestamp`` (unparseable, including words such as ``now``/``today`` whose meaning depends on
  when the import runs, before 1990-01-01, or more than a day in the future: the day of slack
  absorbs clock skew and naive local times), ``duplicate <key>`` (the first valid row with a key is kept).
- ``raw`` in a rejected row is ``{"file", "line", "text"}`` with the line made JSON- and Postgres-safe:
  invalid bytes as ``\\xNN``, NUL (and the text ``\\u0000``) as ``\\x00``, cut to 2,000 characters (a 100 MB
  line stays out of jsonb).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import re
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import InputDataError

#: A field longer than this is refused (``huge field``): no id, type or timestamp is this long, and
#: free-text columns this large are almost always a broken quote swallowing the rest of a file.
MAX_FIELD_CHARS = 10_000
#: How much of a refused line is kept in ``recsys.quarantine.raw``.
MAX_RAW_CHARS = 2_000
MIN_TS = pd.Timestamp("1990-01-01", tz="UTC")
FUTURE_SLACK = pd.Timedelta(days=1)

INVALID_UTF8 = "invalid UTF-8"
NUL_BYTE = "NUL byte"
HUGE_FIELD = "huge field"
MISSING_FIELD = "missing field"
EXTRA_FIELD = "extra field"
UNKNOWN_EVENT_TYPE = "unknown event type"
IMPOSSIBLE_TS = "impossible timestamp"
UNBALANCED_QUOTE = "unbalanced quote"

#: ASCII digits only: ``\d`` also matches other scripts' digits (``１２``, ``١٢``), which are not ids.
_ID_RE = r"^[0-9]{1,18}$"
#: ISO 8601 text starts with a four-digit year; anything else (``now``, ``today``, ``01/02/2024``) is refused.
_ISO_START = r"^[0-9]{4}-"
_BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]
_SURROGATES = "[\udc80-\udcff]"
_REJECT_COLUMNS = ["source", "raw", "reason"]


def safe_text(text: str | None, limit: int | None = MAX_RAW_CHARS) -> str:
    """``text`` as valid UTF-8 without NULs (invalid bytes as ``\\xNN``), cut to ``limit`` characters."""
    if text is None:
        return ""
    out = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    # The six characters \u0000 (a JSON-escaped NUL, e.g. in a Parquet row's JSON, or typed in a line) would
    # reach jsonb as a NUL escape once the quarantine's JSON text is made "NUL-safe"; and jsonb refuses it,
    # failing the whole import's COPY. Shown as \x00, like a NUL byte.
    out = out.replace("\\u0000", "\\x00")
    if limit is not None and len(out) > limit:
        out = f"{out[:limit]}... [{len(out)} chars]"
    return out


def quote_value(values: pd.Series, limit: int = 40) -> pd.Series:
    """Values shown inside a reason: safe, short, quoted."""
    return values.map(lambda v: "'" + safe_text(None if v is None else str(v), limit) + "'")


def one_line(exc: BaseException | str) -> str:
    """An error text on one line (library messages may span several), cut to 300 characters."""
    return safe_text(" ".join(str(exc).split()), 300)


def read_bytes(path: Path) -> bytes:
    """The bytes of ``path``, gunzipped when they are gzip (by magic bytes, whatever the file is called)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputDataError(f"cannot read {path}: {exc.strerror}", "the path and its permissions") from exc
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise InputDataError(f"{path} is a truncated or corrupt gzip file ({one_line(exc)})",
                                 "download or copy the file again; `gzip -t` tests it") from exc
    return data


def read_text(path: Path, *, encoding: str = "utf-8") -> list[str]:
    """Physical lines of ``path`` (``\\n`` or ``\\r\\n``), decoded without ever failing."""
    data = read_bytes(path)
    for bom, name in _BOMS:  # UTF-32 first: its LE mark starts with UTF-16's
        if data.startswith(bom):
            try:
                text = data.decode(name)
            except UnicodeDecodeError as exc:
                raise InputDataError(f"{path} starts with a {name.upper()} byte order mark but is not valid "
                                     f"{name.upper()} ({one_line(exc)})", "save the file as UTF-8") from exc
            break
    else:
        errors = "surrogateescape" if encoding.replace("-", "").lower() == "utf8" else "strict"
        text = data.decode(encoding, errors=errors)
    if text.startswith("\ufeff"):  # a UTF-8 byte order mark (Excel's "CSV UTF-8") is not part of the data
        text = text[1:]
    if "\n" not in text and "\r" in text:  # classic Mac line breaks: CR only
        text = text.replace("\r", "\n")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


class RowSet:
    """The rows of one input file under validation: raw text, split fields and each row's reasons.

    The index is the 1-based line (or record) number, so reasons, rejects and event ids all refer to the
    same row identity. Checks add reasons; nothing is dropped until :meth:`rejects` / :attr:`ok`.
    """

    def __init__(self, file: str, source: str, text: pd.Series, *, kind: str = "line") -> None:
        self.file = file
        self.source = source
        self.text = text.astype(object)
        self.kind = kind
        self.fields = pd.DataFrame(index=text.index)
        self._parts: list[pd.Series] = []

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def from_lines(cls, file: str, source: str, lines: list[str], *, first_line: int = 1) -> RowSet:
        """Rows from physical lines; blank lines are skipped (they hold no row)."""
        numbers = np.arange(first_line, first_line + len(lines))
        text = pd.Series(lines, index=numbers, dtype=object)
        text = text[text.str.strip() != ""]
        return cls(file, source, text)

    @classmethod
    def from_records(cls, file: str, source: str, df: pd.DataFrame) -> RowSet:
        """Rows from a columnar file (Parquet): fields are the values as text, raw is the row as JSON."""
        fields = df.astype(object).where(df.notna(), None)
        fields = fields.map(lambda v: v if v is None or isinstance(v, str) else str(v))
        fields.index = np.arange(1, len(df) + 1)
        text = pd.Series([json.dumps(r, ensure_ascii=False) for r in fields.to_dict("records")],
                         index=fields.index, dtype=object)
        rows = cls(file, source, text, kind="row")
        rows.fields = fields
        for col in fields.columns:  # Arrow strings are valid UTF-8; NULs and size are still checked
            rows.add(fields[col].str.contains("\x00", regex=False), f"{NUL_BYTE} in {col}")
            rows._huge(fields[col], col)
        return rows

    # ---- reasons -----------------------------------------------------------------------------------
    def add(self, mask: pd.Series, reason: str | pd.Series) -> None:
        """Give every row in ``mask`` the ``reason`` (a constant, or a per-row Series)."""
        mask = mask.reindex(self.text.index).fillna(False).astype(bool)
        if not mask.any():
            return
        if isinstance(reason, str):
            part = pd.Series(reason, index=mask.index[mask.to_numpy()], dtype=object)
        else:
            part = reason.reindex(mask.index[mask.to_numpy()]).astype(object)
        self._parts.append(part)

    @property
    def bad(self) -> pd.Series:
        """True for rows with at least one reason."""
        out = pd.Series(False, index=self.text.index)
        for part in self._parts:
            out.loc[part.index] = True
        return out

    @property
    def ok(self) -> pd.Series:
        return ~self.bad

    def reasons(self) -> pd.Series:
        """Each bad row's reasons, "; "-joined in the order the checks ran."""
        if not self._parts:
            return pd.Series(dtype=object)
        allr = pd.concat(self._parts)
        return allr.groupby(level=0, sort=True).agg("; ".join)

    def rejects(self) -> pd.DataFrame:
        """The refused rows as ``ShopFrames.rejects`` rows (source, raw, reason)."""
        reasons = self.reasons()
        if reasons.empty:
            return empty_rejects()
        key = "line" if self.kind == "line" else "row"
        raw = [{"file": self.file, key: int(n), "text": safe_text(self.text.at[n])} for n in reasons.index]
        return pd.DataFrame({"source": self.source, "raw": raw, "reason": reasons.to_numpy()},
                            columns=_REJECT_COLUMNS)

    # ---- structural checks -------------------------------------------------------------------------
    def line_checks(self) -> None:
        """Refuse lines with invalid UTF-8 or NUL bytes."""
        self.add(self.text.str.contains(_SURROGATES, regex=True), INVALID_UTF8)
        self.add(self.text.str.contains("\x00", regex=False), NUL_BYTE)

    def _huge(self, values: pd.Series, col: str) -> None:
        n = values.str.len()
        too = n > MAX_FIELD_CHARS
        if too.any():
            self.add(too, f"{HUGE_FIELD}: {col} has " + n[too].astype(int).astype(str)
                     + f" chars (max {MAX_FIELD_CHARS})")

    def clean_text(self) -> pd.Series:
        """The lines with invalid bytes as U+FFFD: fields stay valid text (pandas stores str as Arrow UTF-8),
        while ``invalid UTF-8`` has already been recorded and ``raw`` keeps the original bytes."""
        return self.text.str.replace(_SURROGATES, "\ufffd", regex=True)

    def split(self, sep: str | None, columns: list[str], *, quoted: bool = False) -> pd.DataFrame:
        """Split each line into ``columns`` (``sep=None``: runs of whitespace) and check the structure.

        ``quoted``: fields may be CSV-quoted (parsed per line with :mod:`csv`, so quotes never span lines).
        """
        self.line_checks()
        text = self.clean_text()
        parts = text.str.split(sep) if sep is not None else text.str.split()
        if quoted and sep is not None:
            has_q = text.str.contains('"', regex=False)
            if has_q.any():
                # Parsed strictly: a quoted field left open (a quoted newline cut by the line split, or a stray
                # opening quote) or text after a closing quote is refused, not silently shortened.
                parsed = text[has_q].map(lambda t: _csv_fields(t, sep))
                self.add(parsed.isna(), f"{UNBALANCED_QUOTE} (a quoted field must open and close on one line)")
                parsed = parsed[parsed.notna()]
                parts.loc[parsed.index] = parsed
        n = parts.str.len()
        k = len(columns)
        self.add(n < k, MISSING_FIELD + ": " + n.astype(str) + f" of {k}")
        self.add(n > k, EXTRA_FIELD + ": " + n.astype(str) + f" of {k}")
        idx = self.text.index
        wide = (pd.DataFrame(parts.tolist(), index=idx, dtype=object) if len(parts)
                else pd.DataFrame(index=idx))
        fields = pd.DataFrame(index=idx)
        for i, col in enumerate(columns):
            values = wide[i] if i in wide.columns else pd.Series(None, index=idx, dtype=object)
            fields[col] = values.astype(object).where(values.notna(), None)
        long_line = self.text.str.len() > MAX_FIELD_CHARS
        if long_line.any():
            for col in columns:
                self._huge(fields.loc[long_line, col].dropna(), col)
            if n.gt(k).any():
                extra = parts[long_line & (n > k)].map(lambda p: max(len(x) for x in p[k:]))
                too = extra > MAX_FIELD_CHARS
                self.add(too, f"{HUGE_FIELD}: extra field has " + extra[too].astype(str) + " chars")
        self.fields = fields
        return fields

    # ---- value checks (absent fields are None and skipped: ``missing field`` already names them) -----
    def _present(self, col: str) -> pd.Series:
        values = self.fields[col]
        return values.map(lambda v: v.strip() if isinstance(v, str) else v)

    def ids(self, col: str, *, required: bool = True, label: str | None = None) -> pd.Series:
        """A non-negative bigint id column (``Int64``; empty -> <NA> when not required)."""
        label = label or col
        v = self._present(col)
        empty = v.eq("") & v.notna()
        if required:
            self.add(empty, f"empty {label}")
        good = v.str.match(_ID_RE, na=False).astype(bool)
        bad = v.notna() & ~empty & ~good
        self.add(bad, f"bad {label} " + quote_value(v[bad]) + ": not a non-negative integer")
        out = pd.Series(pd.NA, index=v.index, dtype="Int64")
        out[good] = v[good].astype("int64")
        return out

    def integers(self, col: str, *, lo: int, hi: int, label: str | None = None) -> pd.Series:
        """An integer column within ``[lo, hi]`` (``Int64``)."""
        label = label or col
        v = self._present(col)
        num = pd.to_numeric(v.where(v.str.match(r"^-?[0-9]{1,18}$", na=False)), errors="coerce")
        bad = v.notna() & (num.isna() | (num < lo) | (num > hi))
        self.add(bad, f"bad {label} " + quote_value(v[bad]) + f": not an integer in [{lo}, {hi}]")
        return num.where(~bad).astype("Int64")

    def choice(self, col: str, mapping: Mapping[str, str], *, reason: str = UNKNOWN_EVENT_TYPE) -> pd.Series:
        """Map a categorical column through ``mapping``; values outside it are refused with ``reason``."""
        v = self._present(col)
        out = v.map(lambda x: mapping.get(x) if isinstance(x, str) else None)
        bad = v.notna() & out.isna()
        allowed = ", ".join(sorted(mapping))
        self.add(bad, f"{reason} " + quote_value(v[bad]) + f" (expected one of {allowed})")
        return out

    def timestamps(self, col: str, *, unit: str = "auto", label: str | None = None) -> pd.Series:
        """Parse a timestamp column to UTC: ``unit`` ``s``/``ms`` (epoch digits), ``iso`` or ``auto``.

        ``auto`` reads all-digit values as epoch seconds (below 1e11, i.e. up to year 5138) or milliseconds,
        and anything else as ISO 8601 (naive values are UTC).
        """
        label = label or col
        v = self._present(col)
        return self.check_ts(v, unit=unit, label=label)

    def check_ts(self, v: pd.Series, *, unit: str = "auto", label: str = "ts") -> pd.Series:
        """Parse timestamp text ``v`` (see :meth:`timestamps`) and refuse implausible values."""
        empty = v.eq("") & v.notna()
        self.add(empty, f"empty {label}")
        digits = v.str.match(r"^[0-9]{1,20}$", na=False).astype(bool)
        if unit == "iso":
            digits[:] = False
        ts = pd.Series(pd.NaT, index=v.index, dtype="datetime64[us, UTC]")
        if digits.any():
            num = pd.to_numeric(v[digits], errors="coerce").astype("float64")
            if unit == "ms":
                secs = num / 1000.0
            elif unit == "s":
                secs = num
            else:
                secs = num.where(num < 1e11, num / 1000.0)
            inrange = secs.between(-1e10, 1e11)  # keeps to_datetime inside its bounds
            ts[inrange[inrange].index] = pd.to_datetime(secs[inrange], unit="s", utc=True)
        text = v.notna() & ~empty & ~digits
        if unit in ("s", "ms"):
            what = "seconds" if unit == "s" else "milliseconds"
            self.add(text, f"{IMPOSSIBLE_TS} " + quote_value(v[text]) + f": not epoch {what}")
        elif text.any():
            iso = text & v.str.match(_ISO_START, na=False).astype(bool)
            if iso.any():
                ts[iso] = pd.to_datetime(v[iso], utc=True, errors="coerce", format="ISO8601")
            unparsed = text & ts.isna()
            self.add(unparsed, f"{IMPOSSIBLE_TS} " + quote_value(v[unparsed]) + ": unparseable")
        if unit in ("s", "ms", "auto") and digits.any():
            unparsed = digits & ts.isna()
            self.add(unparsed, f"{IMPOSSIBLE_TS} " + quote_value(v[unparsed]) + ": out of range")
        self.ts_range(ts, label=label)
        return ts

    def ts_range(self, ts: pd.Series, *, label: str = "ts") -> None:
        """Refuse timestamps before 1990-01-01 or more than a day in the future."""
        now = pd.Timestamp.now(tz="UTC")
        early = ts.notna() & (ts < MIN_TS)
        late = ts.notna() & (ts > now + FUTURE_SLACK)
        self.add(early, f"{IMPOSSIBLE_TS} ({label}) " + ts[early].astype(str) + ": before 1990-01-01")
        self.add(late, f"{IMPOSSIBLE_TS} ({label}) " + ts[late].astype(str) + ": in the future")

    def dedupe(self, key: pd.DataFrame | pd.Series, label: str) -> None:
        """Among rows still valid, keep the first of each ``key`` and refuse the others."""
        ok = self.ok
        k = key[ok.reindex(key.index).to_numpy()]
        if isinstance(k, pd.Series):
            k = k.to_frame()
        if k.empty:
            return
        first_line = pd.Series(k.index, index=k.index).groupby(
            [k[c] for c in k.columns], sort=False, dropna=False).transform("first")
        dup = first_line != k.index.to_series(index=k.index)
        self.add(dup, f"duplicate {label}: same key as {self.kind} " + first_line[dup].astype(str))


def _csv_fields(line: str, sep: str) -> list[str] | None:
    """One line's CSV fields; ``None`` when strict :mod:`csv` refuses it (an open quote, text after a closing
    quote, a bare CR outside quotes). A quote inside an unquoted field (``TV 55"``) is plain text."""
    try:
        return next(csv.reader([line], delimiter=sep, strict=True), [])
    except csv.Error:
        return None


def empty_rejects() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in _REJECT_COLUMNS})


def concat_rejects(parts: Iterable[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if p is not None and not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else empty_rejects()


def require_file(path: Path, what: str, hint: str) -> Path:
    """``path`` if it is a readable file, else an :class:`InputDataError` naming it."""
    if path.is_dir():
        raise InputDataError(f"{what} expected, but {path} is a directory", hint)
    if not path.is_file():
        raise InputDataError(f"{what} not found: {path}", hint)
    return path


def derive_users(events: pd.DataFrame, known: pd.DataFrame | None = None) -> pd.DataFrame:
    """Users of ``events`` (created at their first event), plus ``known`` users; known rows win.

    Events are the facts and catalogue files only describe them, so an event whose user has no valid
    catalogue row gets a stub user instead of being dropped.
    """
    first = events.groupby("user_id", sort=True)["ts"].min()
    stub = pd.DataFrame({"user_id": first.index.astype("int64"), "created_at": first.to_numpy(),
                         "attrs": [{} for _ in range(len(first))]})
    if known is None or known.empty:
        return stub
    known = known.copy()
    fill = known["user_id"].map(first)
    default = first.min() if len(first) else MIN_TS
    known["created_at"] = known["created_at"].where(known["created_at"].notna(), fill).fillna(default)
    missing = stub[~stub["user_id"].isin(known["user_id"])]
    out = pd.concat([known, missing], ignore_index=True)
    return out.sort_values("user_id", ignore_index=True)


def derive_items(events: pd.DataFrame, known: pd.DataFrame | None = None, *,
                 category: str = "unknown") -> pd.DataFrame:
    """Items of ``events`` (stub title ``item <id>``, created at their first event), plus ``known`` items."""
    ev = events[events["item_id"].notna()]
    first = ev.groupby("item_id", sort=True)["ts"].min()
    ids = first.index.astype("int64")
    stub = pd.DataFrame({
        "item_id": ids, "title": [f"item {i}" for i in ids], "description": None, "category": category,
        "brand": None, "price": None, "in_stock": True, "visible": True, "created_at": first.to_numpy(),
        "image_path": None, "attrs": [{} for _ in range(len(ids))],
    })
    if known is None or known.empty:
        return stub
    known = known.copy()
    fill = known["item_id"].map(first)
    default = first.min() if len(first) else MIN_TS
    known["created_at"] = known["created_at"].where(known["created_at"].notna(), fill).fillna(default)
    missing = stub[~stub["item_id"].isin(known["item_id"])]
    out = pd.concat([known, missing], ignore_index=True)
    return out.sort_values("item_id", ignore_index=True)


def _plain(v):
    """Series lose their index (readers index by line number), so columns line up by position."""
    return v.reset_index(drop=True) if isinstance(v, pd.Series) else v


def event_frame(event_id, user_id, item_id, event_type, ts, *, session_id=None, query=None,
                quantity=1, **extra) -> pd.DataFrame:
    """An events frame with the contract's columns (and any ``extra`` ones, e.g. ``rating``), by event_id."""
    cols = {"event_id": event_id, "user_id": user_id, "item_id": item_id, "event_type": event_type,
            "query": query, "session_id": session_id, "quantity": quantity, "ts": ts, **extra}
    n = len(_plain(event_id))
    df = pd.DataFrame({k: _plain(v) for k, v in cols.items()}, index=pd.RangeIndex(n))
    df = df.astype({"event_id": "int64", "user_id": "int64", "item_id": "Int64", "quantity": "int64",
                    "event_type": object, "query": object, "session_id": object})
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    return df.sort_values("event_id", ignore_index=True)


def normalise_name(name: str) -> str:
    """Header names compared loosely: ``sessionId`` == ``session_id`` == ``SessionID``."""
    return re.sub(r"[^a-z0-9]", "", name.lower())
