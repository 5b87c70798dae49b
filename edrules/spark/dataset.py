"""An edrules dataset on Spark: temp views over a Parquet dataset folder (edrules.schema layout)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edrules.errors import EdrulesError, Location
from edrules.schema import PARQUET_TABLES, is_parquet_dataset, table_columns

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def attach(spark: SparkSession, path: str | Path, *, prefix: str = "") -> dict[str, str]:
    """Register `messages`, `recipients`, ... (with `prefix`) over the folder; returns the view
    names. Columns come in schema order, so a row reads as it does from DuckDB."""
    root = Path(path)
    if not is_parquet_dataset(root):
        raise EdrulesError("not a Parquet dataset folder (needs messages/ and recipients/; "
                           "`edrules ingest --engine spark --out DIR` or `edrules export-parquet` write one)",
                           Location(str(root)))
    names = {}
    for table in PARQUET_TABLES:
        folder = root / table
        if not folder.is_dir() or not any(folder.glob("**/*.parquet")):
            continue
        cols = table_columns(table)
        df = spark.read.option("basePath", str(folder)).parquet(str(folder))
        names[table] = prefix + table
        df.select(*cols).createOrReplaceTempView(names[table])
    return names
