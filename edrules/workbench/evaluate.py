"""Per-recipient verdicts of a policy over a dataset, through either rule backend, kept in DuckDB."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import duckdb

from edrules.backends.sql import VERDICT_COLUMNS
from edrules.rules.model import Policy


class Backend(StrEnum):
    """Which rule backend produces verdicts. Both implement docs/rules.md identically;
    SQL is the fast path over history, runtime is the gateway's own code path."""

    SQL = "sql"
    RUNTIME = "runtime"


def materialize(con: duckdb.DuckDBPyConnection, policy: Policy, table: str, *, now: datetime,
                dataset: str | None = None, backend: Backend = Backend.SQL) -> int:
    """Write the verdicts (columns VERDICT_COLUMNS) into temp table `table`; returns its rows.

    Verdicts stay inside DuckDB so a what-if over a million rows joins there and only the
    changed rows ever reach Python.
    """
    cols = ", ".join(f"CAST({c} AS VARCHAR) AS {c}" for c in VERDICT_COLUMNS)
    if backend is Backend.SQL:
        from edrules.backends.sql import registered

        with registered(con, policy, now=now, dataset=dataset) as sql:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT {cols} FROM ({sql})")
    else:
        from edrules.backends.replay import runtime_table

        arrow = runtime_table(con, policy, now=now, dataset=dataset)
        con.register("_wb_runtime", arrow)
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT {cols} FROM _wb_runtime")
        finally:
            con.unregister("_wb_runtime")
    return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
