"""Verdicts on Spark: the SQL backend's query (edrules.backends.sql.verdict_sql), transpiled,
over `messages` / `recipients` views, with the policy bound as Spark tables.

As in DuckDB, every policy value reaches Spark as a row of a table (never pasted into SQL);
only the query's shape depends on the policy.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import TYPE_CHECKING

import pyarrow as pa

from edrules.backends.sql import TABLE_ROLES, _needs_ips, ip_table, policy_tables, verdict_sql
from edrules.rules.model import Policy
from edrules.spark.transpile import to_spark

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def _signed(table: pa.Table) -> pa.Table:
    """uint64 columns reinterpreted as int64, bit for bit (Spark has no unsigned type; the
    transpiled query compares these keys only by bit pattern)."""
    cols = {}
    for f in table.schema:
        col = table.column(f.name).combine_chunks()
        cols[f.name] = col.view(pa.int64()) if pa.types.is_uint64(f.type) else col
    return pa.table(cols)


@contextmanager
def bound(spark: SparkSession, policy: Policy, *, now: datetime | date | None = None,
          dataset: str | None = None, messages: str = "messages",
          recipients: str = "recipients") -> Iterator[str]:
    """Bind the policy tables as temporary views under unique names; yield the Spark SQL."""
    tag = uuid.uuid4().hex[:10]
    tables = policy_tables(policy, now=now, dataset=dataset)
    if _needs_ips(policy):
        # The same distinct IPv6 texts DuckDB's `registered` binds (parsed by `ipaddress`).
        where = " AND dataset = :ds" if dataset is not None else ""
        args = {"ds": dataset} if dataset is not None else None
        rows = spark.sql(f"SELECT DISTINCT client_ip FROM {messages} WHERE client_ip LIKE '%:%'{where}",
                         args=args).collect()
        tables["ips"] = ip_table(r[0] for r in rows)
    else:
        tables["ips"] = ip_table(())
    names = {role: f"_edr_{tag}_{role}" for role in TABLE_ROLES}
    try:
        for role, table in tables.items():
            spark.createDataFrame(_signed(table)).createOrReplaceTempView(names[role])
        yield to_spark(verdict_sql(policy, names=names, messages=messages, recipients=recipients,
                                   dataset=dataset))
    finally:
        for name in names.values():
            spark.catalog.dropTempView(name)


def verdicts(spark: SparkSession, policy: Policy, *, now: datetime | date | None = None,
             dataset: str | None = None, messages: str = "messages",
             recipients: str = "recipients") -> DataFrame:
    """One verdict row per recipients row (VERDICT_COLUMNS), computed and cached on Spark.

    Cached so that the policy views can be dropped before the caller reads the result."""
    with bound(spark, policy, now=now, dataset=dataset, messages=messages, recipients=recipients) as sql:
        df = spark.sql(sql).localCheckpoint(eager=True)
    return df


def verdict_counts(spark: SparkSession, policy: Policy, *, now: datetime | date | None = None,
                   dataset: str | None = None, messages: str = "messages",
                   recipients: str = "recipients") -> list[tuple[str, str, int]]:
    """(action, category, recipients) counts, as edrules.backends.sql.verdict_counts returns them."""
    with bound(spark, policy, now=now, dataset=dataset, messages=messages, recipients=recipients) as sql:
        rows = spark.sql(f"SELECT action, category, count(*) AS n FROM ({sql}) v "
                         "GROUP BY action, category ORDER BY action, category").collect()
    return [(r[0], r[1], int(r[2])) for r in rows]
