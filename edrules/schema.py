"""DuckDB schema of an edrules dataset: the contract between ingest and the SQL backend."""

from __future__ import annotations

import duckdb

from edrules.derive import DERIVED_COLUMNS, DERIVED_TYPES

DKIM_STRUCT = "STRUCT(d VARCHAR, s VARCHAR, result VARCHAR, org VARCHAR)"
# The derived facts (edrules/derive.py) close the messages table: computed once, at ingest.
_DERIVED_DDL = ",\n".join(f"    {name:<20} {DERIVED_TYPES[name]}" for name in DERIVED_COLUMNS)

# Column order of `messages`: MessageFacts.column_names(), then the derived columns.
MESSAGES_DDL = f"""
CREATE TABLE IF NOT EXISTS messages (
    msg_key              VARCHAR NOT NULL,   -- sha256 hex of the raw bytes (CSV: of the row)
    dataset              VARCHAR NOT NULL,
    source               VARCHAR,            -- file path, plus #N inside an mbox/CSV
    received_at          TIMESTAMP,          -- UTC
    message_id           VARCHAR,
    subject              VARCHAR,
    header_from          VARCHAR,            -- normalised address of the single From mailbox
    header_from_domain   VARCHAR,
    header_from_org      VARCHAR,
    from_display         VARCHAR,
    from_invalid         BOOLEAN NOT NULL,   -- zero/several From headers or mailboxes
    from_mailboxes       VARCHAR[],          -- every mailbox the From field(s) name
    reply_to             VARCHAR,
    envelope_from        VARCHAR,            -- '' = null sender <>, NULL = unknown
    envelope_from_domain VARCHAR,
    envelope_from_org    VARCHAR,
    client_ip            VARCHAR,
    helo                 VARCHAR,
    helo_org             VARCHAR,
    spf                  VARCHAR,
    spf_domain           VARCHAR,
    dkim                 {DKIM_STRUCT}[],
    dmarc                VARCHAR,
    dmarc_policy         VARCHAR,
    authserv_id          VARCHAR,
    bulk_provider        VARCHAR,
    list_unsubscribe     VARCHAR,
    category             VARCHAR,
    score                DOUBLE,
    size                 BIGINT,
    quarantine_state     VARCHAR,
{_DERIVED_DDL}
)"""

RECIPIENTS_DDL = """
CREATE TABLE IF NOT EXISTS recipients (
    dataset          VARCHAR NOT NULL,
    msg_key          VARCHAR NOT NULL,
    recipient        VARCHAR NOT NULL,
    recipient_domain VARCHAR,
    recipient_source VARCHAR            -- envelope | delivered-to | x-original-to | to-cc
)"""

RECEIVED_HOPS_DDL = """
CREATE TABLE IF NOT EXISTS received_hops (
    dataset     VARCHAR NOT NULL,
    msg_key     VARCHAR NOT NULL,
    idx         INTEGER NOT NULL,       -- 0 = top-most (written last, by our side)
    from_host   VARCHAR,                -- name the client gave (HELO) or the relay saw
    from_rdns   VARCHAR,
    from_ip     VARCHAR,
    by_host     VARCHAR,
    protocol    VARCHAR,
    received_at TIMESTAMP,
    trusted     BOOLEAN,                -- written by a trusted relay
    raw         VARCHAR
)"""

HEADERS_DDL = """
CREATE TABLE IF NOT EXISTS headers (
    dataset VARCHAR NOT NULL,
    msg_key VARCHAR NOT NULL,
    idx     INTEGER NOT NULL,
    name    VARCHAR NOT NULL,
    value   VARCHAR
)"""

INGEST_ERRORS_DDL = """
CREATE TABLE IF NOT EXISTS ingest_errors (
    dataset  VARCHAR,
    source   VARCHAR NOT NULL,
    position VARCHAR,                   -- e.g. 'message 12', 'line 40', 'byte 1024'
    error    VARCHAR NOT NULL,          -- short machine-readable reason
    detail   VARCHAR
)"""

ALL_DDL = (MESSAGES_DDL, RECIPIENTS_DDL, RECEIVED_HOPS_DDL, HEADERS_DDL, INGEST_ERRORS_DDL)

# Version 2 added from_mailboxes and the derived facts to `messages`; `edrules upgrade`
# (edrules/ingest/upgrade.py) brings a version 1 file there in place.
SCHEMA_VERSION = 2
V2_COLUMNS: tuple[str, ...] = ("from_mailboxes", *DERIVED_COLUMNS)
V2_TYPES: dict[str, str] = {"from_mailboxes": "VARCHAR[]", **DERIVED_TYPES}  # as in MESSAGES_DDL
META_DDL = """
CREATE TABLE IF NOT EXISTS edrules_meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR
)"""


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the tables a dataset lacks; a database whose `messages` is current (a new one)
    is stamped with the schema version. A version 1 `messages` is left alone (and unstamped):
    require_dataset refuses it."""
    for ddl in (*ALL_DDL, META_DDL):
        con.execute(ddl)
    if not schema_lacking(con)["messages"]:
        con.execute("INSERT INTO edrules_meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
                    [str(SCHEMA_VERSION)])


def _ddl_columns(ddl: str) -> tuple[str, ...]:
    return tuple(line.split()[0] for line in ddl.splitlines()[2:] if line.strip() and line.startswith("    "))


# Columns the readers (SQL backend, read_facts, workbench) rely on, per table.
REQUIRED_COLUMNS = {"messages": _ddl_columns(MESSAGES_DDL), "recipients": _ddl_columns(RECIPIENTS_DDL)}


def connect_dataset(path: str, *, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file; a file that is no DuckDB database (or is empty, or locked) is a
    located error, not DuckDB's exception."""
    from edrules.errors import EdrulesError, Location

    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        raise EdrulesError(f"cannot open database: {open_error_text(exc)}", Location(str(path))) from None


def open_error_text(exc: Exception) -> str:
    """DuckDB's reason a file did not open, in one short line."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "not a valid DuckDB database file" in text:
        return "not a DuckDB database file (empty, or another format)"
    return text.removeprefix("IO Error: ")


def schema_lacking(con: duckdb.DuckDBPyConnection) -> dict[str, list[str] | None]:
    """Per table of REQUIRED_COLUMNS: the columns it lacks, in schema order (None: no such table)."""
    columns: dict[str, set[str]] = {}
    for table, column in con.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main' "
            "AND table_catalog = current_database()").fetchall():
        columns.setdefault(table, set()).add(column)
    return {table: [c for c in wanted if c not in columns[table]] if table in columns else None
            for table, wanted in REQUIRED_COLUMNS.items()}


def is_version_1(lacking: list[str] | None) -> bool:
    """`messages` lacking exactly some of the version 2 columns: a file written before them."""
    return bool(lacking) and set(lacking) <= set(V2_COLUMNS)


def _shown(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def require_dataset(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Refuse a DuckDB file that is not a current edrules dataset, with what to do about it.
    Every reader of a dataset for rules (evaluate, whatif, explain --db, the workbench and the
    dashboards) and ingest into an existing file come through here."""
    from edrules.errors import EdrulesError, Location

    lacking = schema_lacking(con)
    missing = [t for t, cols in lacking.items() if cols is None]
    if missing:
        raise EdrulesError(f"not an edrules dataset (no {' or '.join(missing)} table): "
                           "run `edrules ingest --db FILE PATH...` first", Location(path))
    if is_version_1(lacking["messages"]):
        raise EdrulesError(
            f"dataset schema version 1 predates the derived facts ({_shown(lacking['messages'])}); "
            f"upgrade it in place with `edrules upgrade {path}`", Location(path))
    for table, cols in lacking.items():
        if cols:
            raise EdrulesError(
                f"not an edrules dataset: table {table} lacks column(s) {_shown(cols)} "
                "(made by another tool or an older edrules? ingest into a new file)", Location(path))


def require_ingestable(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Before ingest writes anything: an empty database or an edrules dataset, nothing else,
    so a foreign DuckDB file is refused untouched."""
    from edrules.errors import EdrulesError, Location

    tables = [r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
        "AND table_catalog = current_database() ORDER BY 1").fetchall()]
    if not tables:
        return
    if "messages" not in tables or "recipients" not in tables:
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise EdrulesError(f"not an edrules dataset (it holds other tables: {shown}); "
                           "ingest into a new file", Location(path))
    require_dataset(con, path)


# -- the same dataset as partitioned Parquet (shared with Spark: edrules.spark) ---------------

# A Parquet dataset is a folder with one sub-folder per table, hive-partitioned by dataset
# (`messages/dataset=demo/part-0.parquet`): the layout Spark and DuckDB both read and write.
PARQUET_TABLES = ("messages", "recipients", "received_hops", "headers", "ingest_errors")


def _ddl_of(table: str) -> str:
    return next(d for d in ALL_DDL if f"EXISTS {table} (" in d)


def table_columns(table: str) -> list[str]:
    """Column names of an edrules table in schema order."""
    return list(_ddl_columns(_ddl_of(table)))


def is_parquet_dataset(path) -> bool:
    from pathlib import Path

    p = Path(path)
    return p.is_dir() and (p / "messages").is_dir() and (p / "recipients").is_dir()


def _parquet_source(root, table: str) -> str | None:
    """read_parquet(...) over a table's files in a Parquet dataset folder; None without files."""
    folder = root / table
    if not folder.is_dir() or not any(folder.glob("**/*.parquet")):
        return None
    glob = str(folder / "**" / "*.parquet").replace("'", "''")
    return (f"read_parquet('{glob}', hive_partitioning = true, "
            "hive_types = {'dataset': VARCHAR}, union_by_name = true)")


def require_parquet_dataset(path) -> None:
    """Refuse a Parquet dataset folder written before schema version 2 (its `messages` files
    lack the derived columns): there is nothing to upgrade in place, it is exported again."""
    from pathlib import Path

    from edrules.errors import EdrulesError, Location

    source = _parquet_source(Path(path), "messages")
    if source is None:
        return
    have = {r[0] for r in duckdb.connect().execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    lacking = [c for c in table_columns("messages") if c not in have]
    if is_version_1(lacking):
        raise EdrulesError(
            f"Parquet dataset schema version 1 predates the derived facts ({_shown(lacking)}): upgrade the "
            "DuckDB file it was exported from (`edrules upgrade FILE`) and export it again "
            "(edrules.schema.export_parquet_dataset), or ingest its mail again into a new folder",
            Location(str(path)))
    if lacking:
        raise EdrulesError(f"not an edrules Parquet dataset: messages lacks column(s) {_shown(lacking)}",
                           Location(str(path)))


def attach_parquet_dataset(con: duckdb.DuckDBPyConnection, path) -> None:
    """Views named like the dataset tables over a Parquet dataset folder, columns in schema order.
    A table the folder lacks (no errors were written, say) is an empty view of the schema.
    A folder of schema version 1 is refused (require_parquet_dataset)."""
    from pathlib import Path

    root = Path(path)
    require_parquet_dataset(root)
    for table in PARQUET_TABLES:
        source = _parquet_source(root, table)
        if source is not None:
            con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT {', '.join(table_columns(table))} FROM {source}")
        else:
            con.execute(_ddl_of(table).replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE"))


def export_parquet_dataset(con: duckdb.DuckDBPyConnection, out) -> None:
    """Write every table of a DuckDB dataset as a Parquet dataset folder (for Spark), columns
    in schema order (an upgraded file has its version 2 columns last)."""
    from pathlib import Path

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for table in PARQUET_TABLES:
        target = str(root / table).replace("'", "''")
        if con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]:
            con.execute(f"COPY (SELECT {', '.join(table_columns(table))} FROM {table}) TO '{target}' "
                        "(FORMAT parquet, PARTITION_BY (dataset), OVERWRITE_OR_IGNORE)")
