"""DuckDB schema of an edrules dataset: the contract between ingest and the SQL backend."""

from __future__ import annotations

import duckdb

DKIM_STRUCT = "STRUCT(d VARCHAR, s VARCHAR, result VARCHAR, org VARCHAR)"

# Column order of `messages` equals MessageFacts.column_names().
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
    quarantine_state     VARCHAR
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


def require_dataset(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Refuse a DuckDB file that is not an edrules dataset, with what to do about it."""
    from edrules.errors import EdrulesError, Location

    have = {row[0] for row in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
    missing = [t for t in ("messages", "recipients") if t not in have]
    if missing:
        raise EdrulesError(f"not an edrules dataset (no {' or '.join(missing)} table): "
                           "run `edrules ingest --db FILE PATH...` first", Location(path))
