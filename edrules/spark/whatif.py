"""What-if on Spark: both packs evaluated and diffed on Spark; only the changed rows (few, next
to the traffic) come back, and the workbench's own report (compute_whatif over DuckDB views of
the same Parquet dataset) describes them, so the numbers and texts are the workbench's."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

import pyarrow as pa

from edrules.rules.model import Policy
from edrules.spark.evaluate import verdicts

if TYPE_CHECKING:
    import duckdb
    from pyspark.sql import SparkSession

    from edrules.workbench.whatif import WhatIf

_KEYS = ["dataset", "msg_key", "recipient"]
_VERDICT = ["action", "category", "reason", "rule_id"]


def whatif_spark(spark: SparkSession, con: duckdb.DuckDBPyConnection, before: Policy, after: Policy, *,
                 now: datetime | None = None, dataset: str | None = None,
                 before_name: str | None = None, after_name: str | None = None) -> WhatIf:
    """The what-if of `after` instead of `before`; `con` must see the same dataset (its
    messages feed the report's facts for the changed rows only)."""
    from edrules.workbench.whatif import compute_whatif

    b = verdicts(spark, before, now=now, dataset=dataset)
    a = verdicts(spark, after, now=now, dataset=dataset)
    total = b.count()
    changed = (b.alias("b").join(a.alias("a"), _KEYS)
               .where("b.action <> a.action")
               .selectExpr(*_KEYS, *(f"{s}.{c} AS {s}_{c}" for s in "ba" for c in _VERDICT))
               .toArrow())

    def side(s: str) -> pa.Table:
        return pa.table({k: changed.column(k) for k in _KEYS}
                        | {c: changed.column(f"{s}_{c}") for c in _VERDICT})

    con.register("_edr_spark_before", side("b"))
    con.register("_edr_spark_after", side("a"))
    try:
        diff = compute_whatif(con, "_edr_spark_before", "_edr_spark_after",
                              before_name=before_name or before.name, after_name=after_name or after.name)
    finally:
        con.unregister("_edr_spark_before")
        con.unregister("_edr_spark_after")
    return replace(diff, total=total)
