"""Columnar batches of extracted messages and their bulk, idempotent load into DuckDB."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from edrules.derive import DERIVED_COLUMNS, DERIVED_TYPES, derive
from edrules.errors import EdrulesError, Location
from edrules.facts import MessageFacts
from edrules.ingest.extract import ExtractedMessage
from edrules.schema import connect_dataset, ensure_schema, require_dataset, require_ingestable

_DKIM = pa.list_(
    pa.struct([("d", pa.string()), ("s", pa.string()), ("result", pa.string()), ("org", pa.string())])
)
_TYPES = {
    "received_at": pa.timestamp("us"),
    "from_invalid": pa.bool_(),
    "from_mailboxes": pa.list_(pa.string()),
    "dkim": _DKIM,
    "score": pa.float64(),
    "size": pa.int64(),
}
_DERIVED_ARROW = {"VARCHAR": pa.string(), "BOOLEAN": pa.bool_(), "VARCHAR[]": pa.list_(pa.string())}
MESSAGES_SCHEMA = pa.schema([(c, _TYPES.get(c, pa.string())) for c in MessageFacts.column_names()]
                            + [(c, _DERIVED_ARROW[DERIVED_TYPES[c]]) for c in DERIVED_COLUMNS])
RECIPIENTS_SCHEMA = pa.schema(
    [("dataset", pa.string()), ("msg_key", pa.string()), ("recipient", pa.string()),
     ("recipient_domain", pa.string()), ("recipient_source", pa.string())]
)
HOPS_SCHEMA = pa.schema(
    [("dataset", pa.string()), ("msg_key", pa.string()), ("idx", pa.int32()), ("from_host", pa.string()),
     ("from_rdns", pa.string()), ("from_ip", pa.string()), ("by_host", pa.string()),
     ("protocol", pa.string()), ("received_at", pa.timestamp("us")), ("trusted", pa.bool_()),
     ("raw", pa.string())]
)
# Header fields travel packed, one string per message ('name RS value' joined by US), and
# DuckDB explodes them into `headers` rows: Python-side lists and Arrow conversion of ~40
# strings per message cost more than the whole DuckDB insert. split_header_block guarantees
# no field contains the separators.
FIELD_SEP, NAME_SEP = "\x1f", "\x1e"
HEADERS_SCHEMA = pa.schema([("dataset", pa.string()), ("msg_key", pa.string()), ("packed", pa.string())])
_HEADERS_INSERT = """
INSERT INTO headers BY NAME
SELECT dataset, msg_key, idx::INTEGER AS idx,
       split_part(fv, chr(30), 1) AS name,
       substr(fv, strpos(fv, chr(30)) + 1) AS value
FROM (SELECT dataset, msg_key, unnest(range(len(f))) AS idx, unnest(f) AS fv
      FROM (SELECT dataset, msg_key, string_split(packed, chr(31)) AS f
            FROM _edr_in WHERE packed IS NOT NULL))
"""
ERRORS_SCHEMA = pa.schema(
    [("dataset", pa.string()), ("source", pa.string()), ("position", pa.string()), ("error", pa.string()),
     ("detail", pa.string())]
)


def _clean(s: str | None) -> str | None:
    """Arrow/DuckDB need valid UTF-8: lone surrogates and NULs from hostile input are replaced."""
    if s is None:
        return None
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = s.encode("utf-8", "replace").decode("utf-8")
    return s


# Child rows keep the message's position ('_msg') instead of repeating dataset and msg_key
# strings per row; to_arrow expands them with a C-level take().
_KEYED = ("dataset", "msg_key")


_MESSAGE_ROW = attrgetter(*(n for n in MessageFacts.column_names() if n != "dkim"))
_SOURCE_AT = [n for n in MESSAGES_SCHEMA.names if n != "dkim"].index("source")


def message_row(f: MessageFacts) -> tuple:
    """A `messages` row without its dkim column, in MESSAGES_SCHEMA order."""
    # The facts, then their derived facts (computed here, once per message, never again).
    row = _MESSAGE_ROW(f) + derive(f).values()
    if f.source.isascii():
        return row
    # A file name that is not UTF-8 (an old Latin-1 maildir) arrives with surrogate escapes;
    # Arrow refuses those, and one such name stopped the whole run. Cleaned as error rows are.
    return (*row[:_SOURCE_AT], _clean(f.source), *row[_SOURCE_AT + 1:])


_HOP_ROW = attrgetter("idx", "from_host", "from_rdns", "from_ip", "by_host", "protocol", "received_at",
                      "trusted", "raw")
_HOP_COLUMNS = ("idx", "from_host", "from_rdns", "from_ip", "by_host", "protocol", "received_at", "trusted", "raw")


@dataclass(slots=True)
class Batch:
    """Rows of each table; built in workers, shipped as Arrow tables. Rows are tuples taken
    with attrgetter and transposed once in to_arrow: cheaper than a list per column."""

    message_rows: list[tuple] = field(default_factory=list)
    dkim: list[list] = field(default_factory=list)
    recipient_rows: list[tuple] = field(default_factory=list)  # (_msg, recipient, domain, source)
    hop_rows: list[tuple] = field(default_factory=list)  # (_msg, *_HOP_COLUMNS)
    header_rows: list[tuple] = field(default_factory=list)  # (_msg, packed)
    errors: dict[str, list] = field(default_factory=lambda: {c: [] for c in ERRORS_SCHEMA.names})
    bytes: int = 0
    files: int = 0
    keys: set[str] = field(default_factory=set)

    def add(self, m: ExtractedMessage) -> None:
        f = m.facts
        mi = len(self.message_rows)
        if f.msg_key in self.keys:
            # The same bytes again in this batch: the row is kept (load counts it as a
            # duplicate), its recipients, hops and headers are not, or they would load twice.
            self.message_rows.append(message_row(f))
            self.dkim.append([])
            return
        self.keys.add(f.msg_key)
        # Every string is valid UTF-8 already: split_header_block decodes strictly (NULs
        # replaced) and decode_words cleans what RFC 2047 decoding produces.
        self.message_rows.append(message_row(f))
        self.dkim.append([{"d": x.d, "s": x.s, "result": x.result, "org": x.org} for x in f.dkim])
        self.recipient_rows.extend((mi, rc.address, rc.domain, rc.source) for rc in m.recipient_rows)
        self.hop_rows.extend((mi, *_HOP_ROW(h)) for h in m.hops)
        if m.headers:
            self.header_rows.append(
                (mi, FIELD_SEP.join([name + NAME_SEP + value for name, value in m.headers]))
            )

    def error(self, dataset: str, source: str, position: str, error: str, detail: str) -> None:
        e = self.errors
        e["dataset"].append(dataset)
        e["source"].append(_clean(source))
        e["position"].append(position)
        e["error"].append(error)
        e["detail"].append(_clean(detail[:2000]))

    def to_arrow(self) -> "ArrowBatch":
        names = [n for n in MESSAGES_SCHEMA.names if n != "dkim"]
        cols = dict(zip(names, zip(*self.message_rows))) if self.message_rows else {n: [] for n in names}
        arrays = [
            pa.array(self.dkim if fld.name == "dkim" else cols[fld.name], fld.type) for fld in MESSAGES_SCHEMA
        ]
        messages = pa.Table.from_arrays(arrays, schema=MESSAGES_SCHEMA)

        def child(rows: list[tuple], columns: tuple[str, ...], schema: pa.Schema) -> pa.Table:
            data = list(zip(*rows)) if rows else [[] for _ in range(len(columns) + 1)]
            at = pa.array(data[0], pa.int32())
            by_name = dict(zip(columns, data[1:]))
            out = []
            for fld in schema:
                if fld.name in _KEYED:
                    out.append(messages.column(fld.name).take(at))
                else:
                    out.append(pa.array(by_name[fld.name], fld.type))
            return pa.Table.from_arrays(out, schema=schema)

        return ArrowBatch(
            messages,
            child(self.recipient_rows, ("recipient", "recipient_domain", "recipient_source"), RECIPIENTS_SCHEMA),
            child(self.hop_rows, _HOP_COLUMNS, HOPS_SCHEMA),
            child(self.header_rows, ("packed",), HEADERS_SCHEMA),
            pa.Table.from_pydict(self.errors, ERRORS_SCHEMA),
            self.bytes,
            self.files,
        )


@dataclass(slots=True)
class ArrowBatch:
    messages: pa.Table
    recipients: pa.Table
    hops: pa.Table
    headers: pa.Table
    errors: pa.Table
    bytes: int
    files: int = 0


def connect(db: str | Path | duckdb.DuckDBPyConnection) -> tuple[duckdb.DuckDBPyConnection, bool]:
    """(connection, owned): a path is opened (parent folder created), a connection reused."""
    if isinstance(db, duckdb.DuckDBPyConnection):
        ensure_schema(db)
        # An older schema is refused here too (a file's path, or ':memory:', names it).
        require_dataset(db, db.execute("SELECT coalesce(path, ':memory:') FROM duckdb_databases() "
                                       "WHERE database_name = current_database()").fetchall()[0][0])
        return db, False
    path = Path(db)
    try:
        if str(db) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdrulesError(f"cannot create the database folder: {exc.strerror}", Location(str(db))) from None
    # e.g. another process holds DuckDB's write lock, or the file is not a database
    con = connect_dataset(str(db), read_only=False)
    try:
        # A foreign DuckDB file is refused before ensure_schema could add our tables to it.
        require_ingestable(con, str(db))
        ensure_schema(con)
    except EdrulesError:
        con.close()
        raise
    except (OSError, duckdb.Error) as exc:
        con.close()
        # e.g. another process holds DuckDB's write lock, or the file is not a database
        raise EdrulesError(f"cannot open database: {str(exc).splitlines()[0]}", Location(str(db))) from None
    return con, True


@dataclass(slots=True)
class LoadCounts:
    messages: int = 0
    recipients: int = 0
    duplicates: int = 0
    errors: int = 0


def _first_new_copies(con: duckdb.DuckDBPyConnection, keys: list[str], dataset: str, seen: set[str],
                      *, was_empty: bool) -> list[bool]:
    """Per key: True for its first copy when it is neither in the dataset nor in `seen` (earlier
    in this run). was_empty skips the lookup in `messages` (see load)."""
    existing: set[str] = set()
    if keys and not was_empty:
        con.register("_edr_keys", pa.table({"msg_key": keys}))
        existing = {r[0] for r in con.execute(
            "SELECT DISTINCT m.msg_key FROM messages m JOIN _edr_keys k USING (msg_key) WHERE m.dataset = ?",
            [dataset]).fetchall()}
        con.unregister("_edr_keys")
    fresh: set[str] = set()
    keep = []
    for k in keys:
        ok = k not in existing and k not in seen and k not in fresh
        keep.append(ok)
        if ok:
            fresh.add(k)
    return keep


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


@contextmanager
def _database_errors() -> Iterator[None]:
    """An older database whose tables lack a column, a full disk, ...: say so, no traceback."""
    try:
        yield
    except duckdb.Error as exc:
        raise EdrulesError(
            f"cannot load into the database (created by an older edrules? start a new file): "
            f"{str(exc).splitlines()[0]}", Location(field="ingest")
        ) from None


def load(con: duckdb.DuckDBPyConnection, batches: list[ArrowBatch], dataset: str, seen: set[str],
         *, was_empty: bool = False) -> LoadCounts:
    """Insert batches in one transaction. A msg_key already in the dataset (or earlier in this
    run, tracked in `seen`) is a duplicate and adds nothing; identical error rows are not repeated.
    was_empty: the dataset had no message when the run began, so only `seen` can hold a
    duplicate (the lookup in `messages` would scan the growing table at every load)."""
    counts = LoadCounts()
    if not batches:
        return counts
    msgs = pa.concat_tables([b.messages for b in batches])
    errs = pa.concat_tables([b.errors for b in batches])
    keys = msgs.column("msg_key").to_pylist()
    with _database_errors():
        keep_mask = _first_new_copies(con, keys, dataset, seen, was_empty=was_empty)
        new_keys = [k for k, ok in zip(keys, keep_mask) if ok]
        with _transaction(con):
            if new_keys:
                counts.messages, counts.recipients = _insert_messages(con, msgs, batches, keys, new_keys, keep_mask)
            if errs.num_rows:
                _insert_errors(con, errs)
    seen.update(new_keys)
    counts.duplicates = len(keys) - len(new_keys)
    counts.errors = errs.num_rows
    return counts


def _insert_messages(con, msgs: pa.Table, batches: list[ArrowBatch], keys: list[str], new_keys: list[str],
                     keep_mask: list[bool]) -> tuple[int, int]:
    every = len(new_keys) == len(keys)  # the usual case: nothing to filter out
    tables = {
        "messages": msgs if every else msgs.filter(pa.array(keep_mask)),
        "recipients": pa.concat_tables([b.recipients for b in batches]),
        "received_hops": pa.concat_tables([b.hops for b in batches]),
        "headers": pa.concat_tables([b.headers for b in batches]),
    }
    if not every:
        # The same message twice in one run or already loaded: keep only the child rows of
        # the copy whose message row is kept (the first), batch by batch, since two batches of
        # one flush may both hold it. Arrow's filter keeps row order (a SQL semi-join would not).
        children: dict[str, list[pa.Table]] = {"recipients": [], "received_hops": [], "headers": []}
        start = 0
        for b in batches:
            n = b.messages.num_rows
            kept = pa.array([k for k, ok in zip(keys[start:start + n], keep_mask[start:start + n]) if ok],
                            pa.string())
            start += n
            for name, t in (("recipients", b.recipients), ("received_hops", b.hops), ("headers", b.headers)):
                if t.num_rows:
                    children[name].append(t.filter(pc.is_in(t.column("msg_key"), value_set=kept)))
        for name, parts in children.items():
            if parts:
                tables[name] = pa.concat_tables(parts)
    for table, data in tables.items():
        if data.num_rows:
            con.register("_edr_in", data)
            if table == "headers":
                # row order follows the input: DuckDB keeps insertion order (the default
                # preserve_insertion_order), on one thread or several
                con.execute(_HEADERS_INSERT)
            else:
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _edr_in")
            con.unregister("_edr_in")
    return tables["messages"].num_rows, tables["recipients"].num_rows


def _insert_errors(con, errs: pa.Table) -> None:
    """New error rows, each once, in input order (an explicit order: DuckDB may run the
    dedupe on several threads)."""
    con.register("_edr_err", errs.append_column("_pos", pa.array(range(errs.num_rows), pa.int64())))
    con.execute(
        """INSERT INTO ingest_errors BY NAME
           SELECT * EXCLUDE (_pos) FROM _edr_err e
           WHERE NOT EXISTS (SELECT 1 FROM ingest_errors x
               WHERE x.dataset IS NOT DISTINCT FROM e.dataset AND x.source = e.source
                 AND x.position IS NOT DISTINCT FROM e.position AND x.error = e.error)
           QUALIFY row_number() OVER (PARTITION BY dataset, source, position, error, detail ORDER BY _pos) = 1
           ORDER BY _pos"""
    )
    con.unregister("_edr_err")


def read_facts(con: duckdb.DuckDBPyConnection, dataset: str | None = None) -> list[MessageFacts]:
    """Every message of a dataset (or all) as MessageFacts with recipients, ordered by msg_key."""
    where = "WHERE m.dataset = ?" if dataset is not None else ""
    params = [dataset] if dataset is not None else []
    cur = con.execute(
        f"""SELECT m.*, (SELECT list(r.recipient ORDER BY r.recipient) FROM recipients r
                          WHERE r.dataset = m.dataset AND r.msg_key = m.msg_key) AS _rcpts
            FROM messages m {where} ORDER BY m.msg_key, m.dataset""",
        params,
    )
    names = [d[0] for d in cur.description]
    out = []
    for row in cur.fetchall():
        rec = dict(zip(names, row))
        rcpts = tuple(rec.pop("_rcpts") or ())
        out.append(MessageFacts.from_row(rec, rcpts))
    return out


# --- Staged loading: workers write Arrow files, the parent maps them into DuckDB ---------------

_STAGED_TABLES = ("messages", "recipients", "received_hops", "headers", "ingest_errors")


@dataclass(frozen=True, slots=True)
class StagedBatch:
    """What a worker hands back after writing its batch to Arrow IPC files (one per non-empty
    table, keyed by table name): only the msg_keys travel through the pipe, for the dedupe."""

    files: dict[str, str]
    keys: tuple[str, ...]
    errors: int
    bytes: int
    inputs: int  # input files read (for the progress bar)


def write_staged(batch: ArrowBatch, stem: Path) -> StagedBatch:
    """Write each non-empty table of a batch as `<stem>.<table>.arrow`: Arrow's IPC file format,
    uncompressed, so writing is a copy of the buffers and reading is a memory map (Parquet's
    encoding cost a tenth of the workers' CPU time when measured, and its decoding the parent's)."""
    files = {}
    for name, table in zip(_STAGED_TABLES, (batch.messages, batch.recipients, batch.hops, batch.headers,
                                            batch.errors)):
        if table.num_rows:
            path = f"{stem}.{name}.arrow"
            with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            files[name] = path
    return StagedBatch(files, tuple(batch.messages.column("msg_key").to_pylist()), batch.errors.num_rows,
                       batch.bytes, batch.files)


def _read_staged(path: str) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(path, "r")).read_all()


def load_staged(con: duckdb.DuckDBPyConnection, staged: list[StagedBatch], dataset: str,
                seen: set[str], *, was_empty: bool = False) -> LoadCounts:
    """The staged batches in one transaction, with `load`'s semantics (a msg_key already in the
    dataset or earlier in the run is a duplicate and adds no rows, child rows only for the kept
    copy; identical error rows not repeated) and the batches' order. Batches without a
    duplicate, the usual case, are mapped and inserted as they are, one INSERT per table."""
    counts = LoadCounts()
    if not staged:
        return counts
    keys = [k for s in staged for k in s.keys]
    with _database_errors():
        keep = _first_new_copies(con, keys, dataset, seen, was_empty=was_empty)
        fresh = {k for k, ok in zip(keys, keep) if ok}
        masks: list[list[bool] | None] = []  # None: every row of the batch is kept
        start = 0
        for s in staged:
            mask = keep[start:start + len(s.keys)]
            start += len(s.keys)
            masks.append(None if all(mask) else mask)
        with _transaction(con):
            for table in _STAGED_TABLES[:-1]:
                n = _insert_staged(con, table, staged, masks)
                if table == "messages":
                    counts.messages = n
                elif table == "recipients":
                    counts.recipients = n
            errs = [_read_staged(s.files["ingest_errors"]) for s in staged if "ingest_errors" in s.files]
            if errs:
                _insert_errors(con, pa.concat_tables(errs))
    seen.update(fresh)
    counts.duplicates = len(keys) - len(fresh)
    counts.errors = sum(s.errors for s in staged)
    return counts


def _insert_staged(con, table: str, staged: list[StagedBatch], masks: list[list[bool] | None]) -> int:
    """One table's staged rows in batch order, in one INSERT; a batch with duplicates is
    filtered in Arrow first (its filter keeps the order)."""
    parts = []
    for s, mask in zip(staged, masks):
        path = s.files.get(table)
        if path is None:
            continue
        data = _read_staged(path)
        if mask is not None:
            if table == "messages":
                data = data.filter(pa.array(mask))
            else:
                kept = pa.array([k for k, ok in zip(s.keys, mask) if ok], pa.string())
                data = data.filter(pc.is_in(data.column("msg_key"), value_set=kept))
        parts.append(data)
    data = pa.concat_tables(parts) if parts else None
    if data is None or not data.num_rows:
        return 0
    con.register("_edr_in", data)
    try:
        if table == "headers":
            con.execute(_HEADERS_INSERT)
        else:
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _edr_in")
        return data.num_rows
    finally:
        con.unregister("_edr_in")
