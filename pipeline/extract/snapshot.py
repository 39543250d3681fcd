"""Extraction: clean events read incrementally in event_id ranges on Dask workers into a date-partitioned
Parquet store at any fsspec URL; each run gets a local view of its events before ``as_of``.

Partitions are event_id ranges, never LIMIT/OFFSET, so each task reads an index range. Each task streams
``COPY (SELECT ... WHERE lo <= event_id < hi AND <clean>) TO STDOUT WITH (FORMAT csv)`` through a pipe into
pyarrow's streaming CSV reader (column types given up front, no pandas, no Python object per row) and
appends each block to the Parquet file of its event date (``events/date=YYYY-MM-DD/``). Only rows that pass
validation are read (the quarantine's own SQL rules). Users and items are small next to events: they are
read in the client process while the workers read events.

Incremental (see :mod:`pipeline.extract.store` for the layout): the store's manifest keeps the high-water
mark (the largest event_id read); a run reads only ``event_id > high-water`` and appends its files as one
*batch*. Rules, chosen for an append-only event log:

* Late events (old ``ts``, new id) are read by the next run and land in their own date's partition.
* Events at or after a run's ``as_of`` are stored too (the store is not cut at ``as_of``) and left out of
  that run's view only, so a back-dated run never loses them for later runs. Users and items are cut at
  ``as_of`` by ``created_at`` (an item the run's events refer to is kept, see :func:`items_as_of`).
* Rows changed or deleted in place under the high-water mark are not seen by an incremental read. A cheap
  probe (the first and the high-water row, compared column by column) catches a reloaded or truncated
  table and rebuilds in full; anything subtler needs ``full=True`` (``RERANK_SNAPSHOT_REBUILD=1``), which
  is also taken when the validation rules or ``ts_floor`` change (a fingerprint in the manifest).
* Re-running the same run (same batch key) replaces its own batch when it is the newest one (same file
  names, no duplicates) and reuses it untouched when later runs came after it.
* Events that arrive before their item (refused only by the item-dependent rules,
  :data:`~pipeline.validate.sqlchecks.ITEM_DEPENDENT`) are *deferred*: their ids stay in the manifest and
  every later run re-reads them (``event_id = ANY(deferred) AND <clean>``) into its own batch, so an event
  is stored once its item is there instead of being passed by the high-water mark for good. Each range
  task lists its deferred ids in the same REPEATABLE READ snapshot as its COPY: an id is stored or deferred,
  never both. At most :data:`MAX_DEFERRED` ids are kept (the newest); older ones need ``full=True``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipeline.db.engine import connect, sa_engine, with_local_password, without_password
from pipeline.errors import DatabaseError
from pipeline.extract import store as st
from pipeline.files import write_parquet
from pipeline.frames import EVENT_COLUMNS
from pipeline.validate.sqlchecks import (
    TS_FLOOR,
    clean_events_predicate,
    clean_items_predicate,
    clean_users_predicate,
    deferrable_events_predicate,
    future_cutoff,
    proven_unique,
)

#: Rows per event_id range at most (if ids are dense). Fewer, larger ranges cost fewer connections, files
#: and Dask tasks: at tier M on 2 workers 2 ranges took 7.9 s, 6 ranges 8.8 s, 10 ranges 10.4 s (shared box).
ROWS_PER_PARTITION = 2_500_000
#: Below this many new ids one range is read (a nightly increment is not worth splitting).
MIN_ROWS_TO_SPLIT = 100_000
#: Parquet compression of the event files (snappy: about the CPU of no compression, half the bytes).
COMPRESSION = "snappy"
_DAY_US = 86_400_000_000
#: Deferred event ids kept in the manifest at most (the newest win; a full rebuild reads the rest).
MAX_DEFERRED = 1_000_000
EVENTS_SCHEMA = pa.schema([
    ("event_id", pa.int64()), ("user_id", pa.int64()), ("item_id", pa.int64()), ("event_type", pa.string()),
    ("query", pa.string()), ("session_id", pa.string()), ("quantity", pa.int64()),
    ("ts", pa.timestamp("us", tz="UTC")),
])
# Kept for callers of the walking skeleton (dtypes of the events frame).
EVENTS_META = pd.DataFrame({
    "user_id": pd.Series(dtype="int64"), "item_id": pd.Series(dtype="Int64"),
    "event_type": pd.Series(dtype="object"), "query": pd.Series(dtype="object"),
    "session_id": pd.Series(dtype="object"), "quantity": pd.Series(dtype="int64"),
    "ts": pd.Series(dtype="datetime64[us, UTC]"),
}, index=pd.Index([], dtype="int64", name="event_id"))
# pandas metadata on the Arrow files so plain pd.read_parquet gives item_id as nullable Int64, not float.
_PANDAS_META = pa.Schema.from_pandas(EVENTS_META.reset_index()[EVENT_COLUMNS], preserve_index=False).metadata
FILE_SCHEMA = EVENTS_SCHEMA.with_metadata(_PANDAS_META)
_PROBE_COLUMNS = ["event_id", "user_id", "item_id", "event_type", "ts"]


def _csv_options():  # noqa: ANN202 - three pyarrow option objects
    import pyarrow.csv as pacsv

    # One parse thread: a worker process per core already keeps the cores busy; a pool only contends.
    return (pacsv.ReadOptions(column_names=EVENTS_SCHEMA.names, block_size=4 << 20, use_threads=False),
            # Queries may hold newlines (quoted by COPY); measured: the multi-line parse costs no more here.
            pacsv.ParseOptions(newlines_in_values=True),
            pacsv.ConvertOptions(column_types=dict(zip(EVENTS_SCHEMA.names, EVENTS_SCHEMA.types, strict=True)),
                                 # Only COPY's NULL (an unquoted empty field) is null: pyarrow's default
                                 # list would turn a query or session id "NA", "null" or "nan" into NULL.
                                 null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False,
                                 timestamp_parsers=[pacsv.ISO8601]))


def _day(days: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + pd.Timedelta(days=days)).strftime("%Y-%m-%d")


class _DayWriters:
    """One Parquet writer per event date of a task; files go to ``events/date=YYYY-MM-DD/part-<name>``."""

    def __init__(self, store_url: str, name: str, compression: str) -> None:
        self.fs, self.root = st.resolve(store_url)
        self.local = st.is_local(self.fs)
        self.name, self.compression = name, compression
        self.open: dict[int, tuple[object, str, list[int]]] = {}

    def write(self, day: int, batch: pa.RecordBatch) -> None:
        import pyarrow.parquet as pq

        if day not in self.open:
            rel = f"date={_day(day)}/part-{self.name}.parquet"
            path = st.join(self.root, st.EVENTS, rel)
            if self.local:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            else:
                self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # type: ignore[attr-defined]
            # Dictionary pages only where values repeat; statistics only on columns readers filter by.
            w = pq.ParquetWriter(path, FILE_SCHEMA, compression=self.compression,
                                 filesystem=None if self.local else self.fs,
                                 use_dictionary=["event_type", "query"],
                                 write_statistics=["event_id", "user_id", "item_id", "ts"])
            self.open[day] = (w, rel, [0])
        w, _, n = self.open[day]
        w.write_batch(batch)  # type: ignore[attr-defined]
        n[0] += batch.num_rows

    def close(self) -> list[dict]:
        out = []
        for day, (w, rel, n) in sorted(self.open.items()):
            w.close()  # type: ignore[attr-defined]
            out.append({"path": rel, "date": _day(day), "rows": n[0]})
        return out

    def discard(self) -> None:
        """Close and delete what was written (a failed task leaves no stray file)."""
        for w, rel, _ in self.open.values():
            try:
                w.close()  # type: ignore[attr-defined]
            finally:
                st.remove(self.fs, [st.join(self.root, st.EVENTS, rel)])


def split_by_day(batch: pa.RecordBatch) -> list[tuple[int, pa.RecordBatch]]:
    """``(days since 1970-01-01 UTC, rows of that day)`` of a record batch; one slice when it is one day
    (ids follow time, so almost every block of a range is)."""
    import pyarrow.compute as pc

    if batch.num_rows == 0:
        return []
    days = pc.divide(pc.fill_null(batch.column("ts").cast(pa.int64()), 0), _DAY_US)
    lo, hi = (v.as_py() for v in pc.min_max(days).values())
    if lo == hi:
        return [(lo, batch)]
    return [(d, batch.filter(pc.equal(days, d))) for d in pc.unique(days).to_pylist()]


def copy_range(url: str, lo: int, hi: int, clean: str, store_url: str, name: str,
               compression: str = COMPRESSION, *, deferrable: str | None = None,
               ids: list[int] | None = None) -> dict:
    """One task: the clean events with ``lo <= event_id < hi`` (or, given ``ids``, with those ids) into one
    Parquet file per event date.

    The COPY runs in a thread writing into a pipe while pyarrow parses the other end block by block and
    appends each block to its date's file, so the server's export and the parse overlap. Returns
    ``files`` (``path`` relative to ``events/``, ``date``, ``rows``) and ``deferred``: the ids the COPY left
    out that break ``deferrable`` (item-dependent rules), listed in the COPY's own snapshot.
    """
    import os
    import threading

    import pyarrow.csv as pacsv
    from psycopg2 import sql

    url = with_local_password(url)  # a remote worker got the URL without its password (its own env has it)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in EVENT_COLUMNS)
    where = (sql.SQL("event_id = ANY({})").format(sql.Literal([int(i) for i in ids])) if ids is not None
             else sql.SQL("event_id >= {} AND event_id < {}").format(sql.Literal(int(lo)), sql.Literal(int(hi))))
    stmt = sql.SQL("COPY (SELECT {cols} FROM shop.events WHERE {where} AND {clean}) TO STDOUT WITH (FORMAT csv)"
                   ).format(cols=cols, where=where, clean=sql.SQL(clean))
    # ``deferrable`` rules are some of ``clean``'s: a row breaking one is never clean, so NOT (clean) would only
    # evaluate every rule a second time (a third of this query's time at tier M).
    later = None if deferrable is None else sql.SQL(
        "SELECT event_id FROM shop.events WHERE {where} AND {deferrable} ORDER BY event_id"
    ).format(where=where, deferrable=sql.SQL(deferrable))
    rfd, wfd = os.pipe()
    failure: list[BaseException] = []
    deferred: list[int] = []

    def produce() -> None:
        opened = False
        try:
            with connect(url) as conn:
                # one snapshot for the COPY and the deferred ids: an item loaded in between cannot make an
                # event both missed by the COPY and absent from the list (or stored and listed)
                conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
                opened = True
                with os.fdopen(wfd, "wb") as w, conn.cursor() as cur:
                    cur.execute("SET TimeZone = 'UTC'")
                    cur.copy_expert(stmt.as_string(conn), w, size=1 << 20)
                if later is not None:
                    with conn.cursor() as cur:
                        cur.execute(later)
                        deferred.extend(int(r[0]) for r in cur.fetchall())
        except BaseException as exc:  # re-raised in the task below
            failure.append(exc)
            if not opened:  # a failed connect: end the pipe, or the reader below waits for ever
                os.close(wfd)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    writers = _DayWriters(store_url, name, compression)
    try:
        with os.fdopen(rfd, "rb") as r:
            try:
                reader = pacsv.open_csv(r, *_csv_options())
            except pa.ArrowInvalid as exc:  # no rows at all: pyarrow refuses an empty stream
                if "empty" not in str(exc).lower():
                    raise  # a first block it cannot convert must fail the task, not pass for an empty range
                reader = None
            if reader is not None:
                for batch in reader:
                    for day, part in split_by_day(batch):
                        writers.write(day, part)
            r.read()  # drain, so a producer blocked on a full pipe can finish and report
        producer.join()
        if failure:
            raise failure[0]
        return {"files": writers.close(), "deferred": deferred}
    except BaseException:
        writers.discard()
        raise


def event_ranges(lo: int, hi: int, n: int, workers: int) -> list[tuple[int, int]]:
    """Half-open event_id ranges covering ``[lo, hi]``: at most ROWS_PER_PARTITION rows each (if ids are
    dense), a multiple of the worker count so no worker idles in the last round, never more than 256;
    one range below MIN_ROWS_TO_SPLIT."""
    w = max(1, workers)
    parts = 1 if n < MIN_ROWS_TO_SPLIT else -(-max(1, -(-n // ROWS_PER_PARTITION)) // w) * w
    parts = max(1, min(256, parts))
    step = max(1, -(-(hi - lo + 1) // parts))
    bounds = sorted({*range(lo, hi + 1, step), hi + 1})
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _n_workers(client: object) -> int:
    try:
        return len(client.scheduler_info()["workers"]) or 1  # type: ignore[attr-defined]
    except Exception:  # a non-distributed scheduler: one worker's worth of partitions
        return 1


@dataclass
class Plan:
    """What one extraction does: ``mode`` (full | incremental | rerun | reuse), why, which ids it reads
    (``event_id > after``; None: nothing) and which earlier batches the new manifest keeps."""

    mode: str
    reason: str
    after: int | None
    keep: list[dict] = field(default_factory=list)


def plan_extract(manifest: dict | None, *, batch: str, first_id: int | None, last_id: int | None,
                 fingerprint: str, probes_match: bool, full: bool = False) -> Plan:
    """Decide between a full rebuild, an incremental read, a re-run of the newest batch, or reuse.

    Pure (unit-tested): ``first_id``/``last_id`` are the source's min and max event_id now (None when
    empty); ``probes_match`` says the rows the manifest remembered are unchanged.
    """
    start = None if first_id is None else first_id - 1
    if full:
        return Plan("full", "full rebuild requested", start)
    if manifest is None:
        return Plan("full", "no previous snapshot", start)
    if manifest.get("version") != st.STORE_VERSION or manifest.get("fingerprint") != fingerprint:
        return Plan("full", "validation rules, ts_floor or layout changed", start)
    hwm = int(manifest.get("high_water", 0))
    if not probes_match:
        return Plan("full", "rows under the high-water mark changed (table reloaded?)", start)
    if last_id is None or last_id < hwm:
        return Plan("full", "source event ids went below the high-water mark", start)
    batches = list(manifest.get("batches", []))
    names = [b["batch"] for b in batches]
    if batch in names:
        i = names.index(batch)
        if i == len(batches) - 1:
            return Plan("rerun", "same run again: its batch is replaced", int(batches[i]["after"]), batches[:i])
        return Plan("reuse", "same run again after later runs: its batch is reused", None, batches[:i + 1])
    return Plan("incremental", f"events after id {hwm}", hwm, batches)


def batch_key(out_dir: str | Path) -> str:
    """A stable batch name for a run's snapshot directory (``<run dir name>-<hash of the path>``)."""
    p = Path(out_dir).expanduser().resolve()
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", (p.parent.name if p.name == "snapshot" else p.name))[:40]
    return f"{label}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"


def _probe(cur: object, ids: list[int]) -> list[list]:
    if not ids:
        return []
    cur.execute("SELECT event_id, user_id, item_id, event_type, ts FROM shop.events "  # type: ignore[attr-defined]
                "WHERE event_id = ANY(%s) ORDER BY event_id", (list(ids),))
    return [[r[0], r[1], r[2], r[3], r[4].isoformat() if r[4] is not None else None]
            for r in cur.fetchall()]  # type: ignore[attr-defined]


def _read_small(url: str, as_of: datetime, clean_items: str, clean_users: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    eng = sa_engine(url)
    # Constant SQL text (no user values); with params psycopg2 needs any % doubled.
    items = pd.read_sql("SELECT item_id, title, category, brand, price::float8 AS price, in_stock, visible, "
                        "created_at, description, image_path FROM shop.items WHERE "
                        + clean_items + " ORDER BY item_id", eng)
    users = pd.read_sql("SELECT user_id, created_at FROM shop.users WHERE created_at < %(as_of)s AND "
                        + clean_users.replace("%", "%%") + " ORDER BY user_id", eng, params={"as_of": as_of})
    return items, users


def items_as_of(items: pd.DataFrame, as_of: datetime, events_dir: str | Path) -> pd.DataFrame:
    """The catalogue as the run sees it: items created before ``as_of`` (or with no ``created_at``), and any
    item the run's events refer to (an import may date an item after its first events; the events must keep
    their item). A re-run of an old date thus never recommends an item added since, and gives the same lists."""
    import pyarrow.dataset as pads

    created = pd.to_datetime(items["created_at"], utc=True)
    keep = created.isna() | (created < pd.Timestamp(as_of))
    if not keep.all():
        # only the few late items are looked up: the scan keeps matching rows, not a column of every event
        late = items.loc[~keep, "item_id"].dropna().astype("int64").tolist()
        used = pads.dataset(str(events_dir), format="parquet", partitioning="hive").to_table(
            columns=["item_id"], filter=pads.field("item_id").isin(late))
        keep |= items["item_id"].isin(pd.unique(used.column("item_id").to_numpy()))
    return items.loc[keep].reset_index(drop=True)


#: Transactions holding a write lock on shop.events (other than ours), by virtual transaction id.
_WRITERS_SQL = """
SELECT DISTINCT virtualtransaction FROM pg_locks
 WHERE locktype = 'relation' AND relation = 'shop.events'::regclass AND mode = 'RowExclusiveLock'
   AND granted AND pid <> pg_backend_pid()
"""


def wait_for_writers(cur: object, timeout_s: float = 120.0, poll_s: float = 0.05) -> int:
    """Wait until every transaction that was writing ``shop.events`` when called has ended.

    Called right after reading ``max(event_id)``: ids come from a sequence before commit, so a writer still
    open then may commit ids *below* that maximum later, and an incremental read (``event_id > high water``)
    would skip them for good. Writers that start afterwards draw higher ids. Returns how many were waited for.
    """
    import time

    cur.execute(_WRITERS_SQL)  # type: ignore[attr-defined]
    pending = {r[0] for r in cur.fetchall()}  # type: ignore[attr-defined]
    waited = len(pending)
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise DatabaseError(
                f"{len(pending)} transaction(s) writing shop.events stayed open for more than {timeout_s:.0f} s "
                "during extraction; their rows could not be placed before the high-water mark",
                "pg_stat_activity for long open transactions on shop.events (an idle-in-transaction loader?), "
                "then rerun the stage")
        time.sleep(poll_s)
        cur.execute(_WRITERS_SQL)  # type: ignore[attr-defined]
        pending &= {r[0] for r in cur.fetchall()}  # type: ignore[attr-defined]
    return waited


def default_store_url() -> str:
    """``RERANK_SNAPSHOT_URL``, else ``<RERANK_HOME>/snapshots``."""
    from pipeline.settings import get_settings

    s = get_settings()
    return s.snapshot_url or str(s.home_path / "snapshots")


def extract_snapshot(url: str, out_dir: str | Path, as_of: datetime, client: object | None, *,
                     ts_floor: str = TS_FLOOR, store_url: str | None = None, full: bool | None = None,
                     batch: str | None = None, compression: str = COMPRESSION) -> dict:
    """Bring the event store up to date and write the run's snapshot under ``out_dir`` (local).

    ``out_dir`` gets ``events/`` (hive ``date=`` partitions: the run's events before ``as_of``),
    ``items.parquet`` and ``users.parquet``. The store lives under ``store_url`` (any fsspec URL; default
    :func:`default_store_url`), one per source database. ``full`` (default ``RERANK_SNAPSHOT_REBUILD``)
    rebuilds it; ``batch`` names this run's batch (default: from ``out_dir``). ``client`` None runs the
    range tasks in this process (what an in-process ``memory://`` store needs).

    Returns counts: ``events`` (the run's view), ``items``, ``users``, ``events_read`` (read from
    Postgres now), ``mode``, ``reason``, ``high_water``, ``store``, ``writers_waited`` (open writers
    it waited for, see :func:`wait_for_writers`).
    """
    from pipeline.settings import get_settings

    as_of = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
    full = get_settings().snapshot_rebuild if full is None else full
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    batch = batch or batch_key(out)
    with connect(url) as conn, conn.cursor() as cur:
        # min/max come from the primary key's index; no count(*) scan (ids are about dense).
        cur.execute("SELECT min(event_id), max(event_id) FROM shop.events")
        first_id, last_id = cur.fetchone()
        cur.execute("SELECT relkind FROM pg_class WHERE oid = 'shop.events'::regclass")
        # a view has no writers of its own to wait for
        writers = wait_for_writers(cur) if cur.fetchone()[0] in ("r", "p") else 0
        items_unique = proven_unique(cur, "shop.items", "item_id")
        cutoff = future_cutoff()  # one instant for both: a deferrable row is then never clean
        clean_events = clean_events_predicate(ts_floor=ts_floor,
                                              unique_proven=proven_unique(cur, "shop.events", "event_id"),
                                              items_unique_proven=items_unique, cutoff=cutoff)
        clean_items = clean_items_predicate(ts_floor=ts_floor, unique_proven=items_unique)
        clean_users = clean_users_predicate(ts_floor=ts_floor,
                                            unique_proven=proven_unique(cur, "shop.users", "user_id"))
        deferrable = deferrable_events_predicate(ts_floor=ts_floor, items_unique_proven=items_unique, cutoff=cutoff)
        store_root = st.store_url_for(store_url or default_store_url(), st.source_key(cur))
        fs, root = st.resolve(store_root)
        manifest = st.read_manifest(fs, root)
        # The rules text with its cutoff date stripped: it moves with the wall clock every day.
        rules = re.sub(r"'\d{4}-\d{2}-\d{2}[ T][0-9:.+]*'", "'<cutoff>'", clean_events)
        fingerprint = hashlib.sha1(f"{st.STORE_VERSION}|{ts_floor}|{FILE_SCHEMA}|{rules}".encode()).hexdigest()
        remembered = (manifest or {}).get("probes") or []
        probes_match = _probe(cur, [p[0] for p in remembered]) == remembered
    plan = plan_extract(manifest, batch=batch, first_id=first_id, last_id=last_id, fingerprint=fingerprint,
                        probes_match=probes_match, full=full)
    read = 0
    files: list[dict] = []
    small = None
    if plan.mode != "reuse":
        # the deferred ids before this batch: none for a rebuild; a re-run starts from its batch's start
        pending = [] if plan.mode == "full" else list((manifest or {}).get("deferred", []))
        if plan.mode == "rerun":
            pending = list((manifest or {})["batches"][-1].get("deferred_before", []))
        if plan.mode == "full":
            st.remove_tree(fs, st.join(root, st.EVENTS))
            st.remove(fs, [st.join(root, st.MANIFEST)])
        elif plan.mode == "rerun":
            # Forget the batch first, then delete its files: a crash in between leaves a consistent store.
            assert manifest is not None
            st.write_manifest(fs, root, {**manifest, "batches": plan.keep, "high_water": plan.after})
            st.remove(fs, [st.join(root, st.EVENTS, f["path"]) for f in manifest["batches"][-1]["files"]])
        parts: list[dict] = []
        if plan.after is not None and last_id is not None and last_id > plan.after:
            ranges = event_ranges(plan.after + 1, int(last_id), int(last_id) - plan.after,
                                  _n_workers(client) if client is not None else 1)
            names = [f"{batch}-{i:05d}" for i in range(len(ranges))]
            # A remote cluster (a client without a cluster object of its own) gets the URL without its
            # password: secrets reach workers through their environment, never as task arguments.
            remote = client is not None and getattr(client, "cluster", None) is None
            task_url = without_password(url) if remote else url
            args = ([task_url] * len(ranges), [a for a, _ in ranges], [b for _, b in ranges],
                    [clean_events] * len(ranges), [store_root] * len(ranges), names, [compression] * len(ranges))
            try:
                if client is None:
                    small = _read_small(url, as_of, clean_items, clean_users)
                    parts = [copy_range(*a, deferrable=deferrable) for a in zip(*args, strict=True)]
                else:
                    futures = client.map(copy_range, *args, deferrable=deferrable,  # type: ignore[attr-defined]
                                         pure=False)
                    # The small tables are read here while the workers stream events.
                    small = _read_small(url, as_of, clean_items, clean_users)
                    parts = client.gather(futures)  # type: ignore[attr-defined]
            except DatabaseError:
                raise
            except Exception as exc:
                raise DatabaseError(f"extracting shop.events into {store_root} failed: {exc}",
                                    "that the Dask workers reach the database URL and can write the snapshot "
                                    "URL (RERANK_SNAPSHOT_URL), and the worker logs") from exc
        if pending:  # earlier events whose item was missing: the ones clean now join this batch
            parts.append(copy_range(url, 0, 0, clean_events, store_root, f"{batch}-deferred", compression,
                                    deferrable=deferrable, ids=pending))
        files = sorted((f for p in parts for f in p["files"]), key=lambda f: (f["date"], f["path"]))
        read = sum(f["rows"] for f in files)
        deferred = sorted({i for p in parts for i in p["deferred"]})[-MAX_DEFERRED:]
        high_water = int(last_id) if last_id is not None else 0
        new_batch = {"batch": batch, "after": plan.after if plan.after is not None else 0, "upto": high_water,
                     "rows": read, "files": files, "as_of": as_of.isoformat(),
                     "created": datetime.now(UTC).isoformat(timespec="seconds"), "deferred_before": pending}
        with connect(url) as conn, conn.cursor() as cur:
            probes = _probe(cur, sorted({i for i in (first_id, last_id) if i is not None}))
        # only the newest batch can be re-run, so only it keeps the deferred ids it started from
        kept = [{k: v for k, v in b.items() if k != "deferred_before"} for b in plan.keep]
        manifest = {"version": st.STORE_VERSION, "fingerprint": fingerprint, "high_water": high_water,
                    "probes": probes, "batches": [*kept, new_batch], "deferred": deferred}
        st.write_manifest(fs, root, manifest)
    assert manifest is not None
    if small is None:
        small = _read_small(url, as_of, clean_items, clean_users)
    items, users = small
    events_n = st.materialize_view(fs, root, st.view_files(manifest, batch), as_of, out / "events", FILE_SCHEMA)
    items = items_as_of(items, as_of, out / "events")
    write_parquet(items, out / "items.parquet")
    write_parquet(users, out / "users.parquet")
    return {"events": int(events_n), "items": len(items), "users": len(users), "events_read": int(read),
            "mode": plan.mode, "reason": plan.reason, "high_water": int(manifest.get("high_water", 0)),
            "store": store_root, "writers_waited": writers}


def events_path(snapshot_dir: str | Path) -> Path:
    """The run's events: a local hive-partitioned (``date=YYYY-MM-DD``) Parquet directory."""
    return Path(snapshot_dir) / "events"


def read_events(snapshot_dir: str | Path, columns: list[str] | None = None,
                filters: list | None = None) -> pd.DataFrame:
    """The run's events as one frame (the ``date`` partition column left out unless asked for)."""
    cols = columns or EVENT_COLUMNS
    events = pd.read_parquet(events_path(snapshot_dir), columns=cols, filters=filters)
    if "item_id" in events.columns:  # nullable: search events carry no item
        events["item_id"] = events["item_id"].astype("Int64")
    return events


def read_snapshot(out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The run's (events, items, users) as pandas frames, events sorted by (ts, event_id)."""
    out = Path(out_dir)
    events = read_events(out)
    if len(events):
        events = events.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)
    return events, pd.read_parquet(out / "items.parquet"), pd.read_parquet(out / "users.parquet")
