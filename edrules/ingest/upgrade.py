"""`edrules upgrade`: bring a dataset of schema version 1 to version 2 in place.

Version 2 added `from_mailboxes` and the derived facts (edrules/derive.py) to `messages`.
They are filled exactly as ingest fills them: from_mailboxes by the same extraction
(extract.from_mailboxes over the From fields the `headers` table kept), the derived columns by
edrules.derive.derive on each message, so an upgraded file reads like a fresh ingest.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import duckdb
import pyarrow as pa

from edrules.derive import derive
from edrules.errors import EdrulesError, Location
from edrules.facts import MessageFacts
from edrules.ingest.extract import from_mailboxes
from edrules.ingest.load import MESSAGES_SCHEMA
from edrules.schema import (
    SCHEMA_VERSION,
    V2_COLUMNS,
    V2_TYPES,
    connect_dataset,
    ensure_schema,
    is_version_1,
    require_dataset,
    schema_lacking,
)

BATCH_ROWS = 50_000
_FACT_COLUMNS = [c for c in MessageFacts.column_names() if c != "from_mailboxes"]
# What one UPDATE writes back: the row's rowid, then the version 2 columns as ingest types them.
_V2_ARROW = pa.schema([("_rid", pa.int64()), *(MESSAGES_SCHEMA.field(c) for c in V2_COLUMNS)])


@dataclass(frozen=True, slots=True)
class UpgradeSummary:
    path: str
    messages: int  # rows upgraded; 0 when the file was current already
    seconds: float
    already: bool

    def __str__(self) -> str:
        if self.already:
            return f"{self.path}: already at schema version {SCHEMA_VERSION}"
        rate = self.messages / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.path}: upgraded {self.messages:,} messages to schema version {SCHEMA_VERSION} "
                f"in {self.seconds:.1f} s ({rate:,.0f} msg/s)")


def upgrade_dataset(path: str | Path, *, progress: bool = False) -> UpgradeSummary:
    """Upgrade the DuckDB dataset file at `path` in place, in one transaction (an interrupted
    run leaves it at version 1). A current file is left as it is (only stamped if unstamped)."""
    t0 = time.perf_counter()
    name = str(path)
    if not Path(path).is_file():
        raise EdrulesError("no such dataset file", Location(name))
    con = connect_dataset(name, read_only=False)
    try:
        lacking = schema_lacking(con)["messages"]
        if not is_version_1(lacking):
            require_dataset(con, name)  # not a dataset at all, or one lacking other columns
            ensure_schema(con)  # a current file written before the stamp existed gets it
            return UpgradeSummary(name, 0, time.perf_counter() - t0, already=True)
        n = con.execute("SELECT count(*) FROM messages").fetchall()[0][0]
        con.execute("BEGIN TRANSACTION")
        try:
            for column in V2_COLUMNS:  # schema order; ADD COLUMN appends them at the end
                if column in lacking:
                    con.execute(f"ALTER TABLE messages ADD COLUMN {column} {V2_TYPES[column]}")
            _fill(con, n, progress)
            ensure_schema(con)  # edrules_meta, stamped: messages is current now
            require_dataset(con, name)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
    except duckdb.Error as exc:
        raise EdrulesError(f"cannot upgrade the dataset: {str(exc).splitlines()[0]}", Location(name)) from None
    finally:
        con.close()
    return UpgradeSummary(name, n, time.perf_counter() - t0, already=False)


def _fill(con: duckdb.DuckDBPyConnection, n: int, progress: bool) -> None:
    """from_mailboxes and the derived columns of every row, batch by batch (rowid ranges)."""
    # The From field values of each message, once: a small table next to `headers`.
    con.execute("""CREATE TEMP TABLE _edr_from AS
                   SELECT dataset, msg_key, list(value ORDER BY idx) AS vals FROM headers
                   WHERE lower(name) = 'from' GROUP BY dataset, msg_key""")
    top = con.execute("SELECT coalesce(max(rowid) + 1, 0) FROM messages").fetchall()[0][0]
    select = ", ".join(f"m.{c}" for c in _FACT_COLUMNS)
    sets = ", ".join(f"{c} = u.{c}" for c in V2_COLUMNS)
    done = 0
    for start in range(0, top, BATCH_ROWS):
        cur = con.execute(f"""SELECT m.rowid AS _rid, f.vals AS _from, {select} FROM messages m
                              LEFT JOIN _edr_from f USING (dataset, msg_key)
                              WHERE m.rowid >= ? AND m.rowid < ?""", [start, start + BATCH_ROWS])
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
        if not rows:
            continue
        out: list[tuple] = []
        for rec in rows:
            # Without header rows (a quarantine-CSV row without its message) the stored
            # header_from is all there is: [header_from] when valid, else nothing.
            boxes = from_mailboxes(rec["header_from"], rec.pop("_from") or ())
            facts = MessageFacts.from_row({**rec, "from_mailboxes": boxes})
            out.append((rec["_rid"], list(boxes), *derive(facts).values()))
        con.register("_edr_up", pa.Table.from_arrays(
            [pa.array(col, fld.type) for col, fld in zip(zip(*out), _V2_ARROW)], schema=_V2_ARROW))
        con.execute(f"UPDATE messages SET {sets} FROM _edr_up u WHERE messages.rowid = u._rid")
        con.unregister("_edr_up")
        done += len(rows)
        if progress:
            click.echo(f"\rupgrading: {done:,} / {n:,} messages", nl=False, err=True)
    if progress and done:
        click.echo("", err=True)
    con.execute("DROP TABLE _edr_from")


@click.command("upgrade")
@click.argument("db", type=click.Path(dir_okay=False))
def upgrade(db: str) -> None:
    """Upgrade the dataset DB (a DuckDB file) to the current schema version, in place."""
    click.echo(str(upgrade_dataset(db, progress=sys.stderr.isatty())))
