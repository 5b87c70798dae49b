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


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    for ddl in ALL_DDL:
        con.execute(ddl)


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


def require_dataset(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Refuse a DuckDB file that is not an edrules dataset, with what to do about it."""
    from edrules.errors import EdrulesError, Location

    columns: dict[str, set[str]] = {}
    for table, column in con.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main' "
            "AND table_catalog = current_database()").fetchall():
        columns.setdefault(table, set()).add(column)
    missing = [t for t in ("messages", "recipients") if t not in columns]
    if missing:
        raise EdrulesError(f"not an edrules dataset (no {' or '.join(missing)} table): "
                           "run `edrules ingest --db FILE PATH...` first", Location(path))
    for table, wanted in REQUIRED_COLUMNS.items():
        lacking = [c for c in wanted if c not in columns[table]]
        if lacking:
            shown = ", ".join(lacking[:4]) + (f" and {len(lacking) - 4} more" if len(lacking) > 4 else "")
            raise EdrulesError(
                f"not an edrules dataset: table {table} lacks column(s) {shown} "
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


def attach_parquet_dataset(con: duckdb.DuckDBPyConnection, path) -> None:
    """Views named like the dataset tables over a Parquet dataset folder, columns in schema order.
    A table the folder lacks (no errors were written, say) is an empty view of the schema."""
    from pathlib import Path

    root = Path(path)
    for table in PARQUET_TABLES:
        files = sorted((root / table).glob("**/*.parquet")) if (root / table).is_dir() else []
        if files:
            glob = str(root / table / "**" / "*.parquet").replace("'", "''")
            con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT {', '.join(table_columns(table))} "
                        f"FROM read_parquet('{glob}', hive_partitioning = true, "
                        "hive_types = {'dataset': VARCHAR}, union_by_name = true)")
        else:
            con.execute(_ddl_of(table).replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE"))


def export_parquet_dataset(con: duckdb.DuckDBPyConnection, out) -> None:
    """Write every table of a DuckDB dataset as a Parquet dataset folder (for Spark)."""
    from pathlib import Path

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for table in PARQUET_TABLES:
        target = str(root / table).replace("'", "''")
        if con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]:
            con.execute(f"COPY (SELECT * FROM {table}) TO '{target}' "
                        "(FORMAT parquet, PARTITION_BY (dataset), OVERWRITE_OR_IGNORE)")
