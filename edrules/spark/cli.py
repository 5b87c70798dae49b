"""What `--engine spark` does for `edrules ingest`, `evaluate` and `whatif` (the commands parse
their options and hand over here; this module is only imported when Spark is asked for)."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator

from edrules.errors import EdrulesError, Location
from edrules.rules.model import Policy


def ingest(out: str, paths: list[str], *, dataset: str, label: str | None, trust):
    """`edrules ingest --engine spark --db DIR`: the dataset folder is written by Spark."""
    from edrules.spark.ingest import ingest_spark
    from edrules.spark.session import spark_session

    if Path(out).is_file():
        raise EdrulesError("with --engine spark, --db names a Parquet dataset folder, not a DuckDB file",
                           Location(out))
    spark = spark_session()
    return ingest_spark(spark, paths, out, dataset=dataset, label=label, trust=trust)


@contextmanager
def parquet_dataset(db: str) -> Iterator[Path]:
    """The dataset as a Parquet folder: `db` itself, or a DuckDB file exported to a temporary one
    (on one machine that is a few seconds per million rows; a cluster reads the folder directly)."""
    import duckdb

    from edrules.schema import export_parquet_dataset, is_parquet_dataset, require_dataset

    if is_parquet_dataset(db):
        yield Path(db)
        return
    if not Path(db).is_file():
        raise EdrulesError("no such dataset (a DuckDB file or a Parquet dataset folder)", Location(db))
    with tempfile.TemporaryDirectory(prefix="edrules-spark-") as tmp:
        con = duckdb.connect(db, read_only=True)
        try:
            require_dataset(con, db)
            export_parquet_dataset(con, tmp)
        finally:
            con.close()
        yield Path(tmp)


def counts(db: str, policy: Policy, *, now: datetime | None, dataset: str | None) -> list[tuple[str, str, int]]:
    """`edrules evaluate --engine spark`: (action, category, recipients) counts."""
    from edrules.spark.dataset import attach
    from edrules.spark.evaluate import verdict_counts
    from edrules.spark.session import spark_session

    with parquet_dataset(db) as folder:
        spark = spark_session()
        attach(spark, folder)
        return verdict_counts(spark, policy, now=now, dataset=dataset)


def write_verdicts(db: str, policy: Policy, out: str, *, now: datetime | None, dataset: str | None) -> None:
    """`edrules evaluate --engine spark --out DIR`: the verdict rows as Parquet, written by Spark."""
    from edrules.spark.dataset import attach
    from edrules.spark.evaluate import bound
    from edrules.spark.session import spark_session

    with parquet_dataset(db) as folder:
        spark = spark_session()
        attach(spark, folder)
        with bound(spark, policy, now=now, dataset=dataset) as sql:
            spark.sql(sql).write.mode("overwrite").parquet(out)


def whatif(db: str, before: Policy, after: Policy, *, now: datetime | None, dataset: str | None):
    """`edrules whatif --engine spark`: (the workbench's WhatIf computed on Spark, EvalDate)."""
    import duckdb

    from edrules.backends.evalscope import EvalDate, default_now, require_known_dataset
    from edrules.schema import attach_parquet_dataset
    from edrules.spark.dataset import attach
    from edrules.spark.session import spark_session
    from edrules.spark.whatif import whatif_spark

    with parquet_dataset(db) as folder:
        con = duckdb.connect()
        attach_parquet_dataset(con, folder)
        require_known_dataset(con, dataset, db)
        when = EvalDate(now.replace(tzinfo=None), "given") if now else default_now(con, dataset)
        spark = spark_session()
        attach(spark, folder)
        diff = whatif_spark(spark, con, before, after, now=when.now, dataset=dataset)
        return diff, when
