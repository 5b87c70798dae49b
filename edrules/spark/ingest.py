"""Ingest on Spark: executors run the same extraction as `edrules ingest` (the worker of
edrules.ingest.pipeline, i.e. extract / facts_from_bytes) and write Arrow batches straight to
Parquet; Spark then removes duplicate messages and writes the dataset as partitioned Parquet
(edrules.schema layout) that DuckDB and Spark both read.

There is no single writer: each task writes its own files, and the one Spark pass that follows
(duplicates, header explode) runs in parallel on the executors too.
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from edrules.errors import EdrulesError, Location

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from edrules.ingest.trust import TrustConfig


@dataclass(frozen=True, slots=True)
class SparkIngestSummary:
    messages: int
    recipients: int
    errors: int
    duplicates: int
    files: int
    skipped: int
    seconds: float
    authserv_ids: tuple[str, ...]

    def __str__(self) -> str:
        rate = self.messages / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.messages:,} messages, {self.recipients:,} recipients, {self.errors:,} errors"
                + (f", {self.duplicates:,} duplicates" if self.duplicates else "")
                + (f", {self.skipped:,} non-mail files skipped" if self.skipped else "")
                + f" in {self.seconds:.1f} s ({rate:,.0f} msg/s) on Spark")


def _write_batch(stage: Path, index: int, batch) -> None:
    """Each table's rows as one Parquet file, tagged with the chunk number and row order so
    duplicates resolve as in DuckDB ingest (the first copy in input order wins)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = {"messages": batch.messages, "recipients": batch.recipients, "received_hops": batch.hops,
              "headers": batch.headers, "ingest_errors": batch.errors}
    for name, table in tables.items():
        n = table.num_rows
        table = table.append_column("_chunk", pa.array([index] * n, pa.int32()))
        table = table.append_column("_row", pa.array(range(n), pa.int32()))
        (stage / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, str(stage / name / f"chunk-{index:06d}.parquet"))


def _write_chunk(item: tuple[int, tuple], stage: str) -> int:
    """Executor: extract one chunk of files (the ingest worker) and write its batch."""
    from edrules.ingest.pipeline import _process

    index, task = item
    batch = _process(task)
    _write_batch(Path(stage), index, batch)
    return batch.messages.num_rows


def ingest_spark(
    spark: SparkSession,
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    dataset: str = "default",
    label: str | None = None,
    trust: TrustConfig | None = None,
) -> SparkIngestSummary:
    """Ingest files and folders into the Parquet dataset folder `out` (created or appended to).

    `out` must be a path every executor can write (local mode: any folder; a cluster: a shared
    filesystem). Messages already in `out` for this dataset are duplicates and add nothing."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window

    from edrules.ingest.extract import normalize_category
    from edrules.ingest.pipeline import _tasks, plan_run
    from edrules.ingest.trust import TrustConfig
    from edrules.schema import is_parquet_dataset, require_parquet_dataset, table_columns

    t0 = time.perf_counter()
    if not dataset or not dataset.strip():
        raise EdrulesError("dataset name is empty")
    label = normalize_category(label)
    trust = trust or TrustConfig()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdrulesError("--out must be a folder (a Parquet dataset)", Location(str(out)))
    if is_parquet_dataset(out):
        require_parquet_dataset(out)  # appending version 2 rows to a version 1 folder mixes schemas
    files, skipped, pre, trust = plan_run(paths, dataset, trust)
    tasks = list(enumerate(_tasks(files, dataset, label, trust), start=1))
    stage = out / f"_staging-{uuid.uuid4().hex[:12]}"
    stage.mkdir(parents=True)
    try:
        # Chunk 0: read failures found while walking the inputs (a FIFO, an unreadable file).
        _write_batch(stage, 0, pre.to_arrow())
        if tasks:
            spark.sparkContext.parallelize(tasks, numSlices=len(tasks)).map(
                lambda item, s=str(stage): _write_chunk(item, s)).collect()
        read = {name: spark.read.parquet(str(stage / name)) for name in
                ("messages", "recipients", "received_hops", "headers", "ingest_errors")}
        first = Window.partitionBy("msg_key").orderBy("_chunk", "_row")
        msgs = read["messages"].withColumn("_rank", F.row_number().over(first))
        existing = _existing_keys(spark, out, dataset)
        kept = msgs.filter("_rank = 1")
        if existing is not None:
            kept = kept.join(existing, "msg_key", "left_anti")
        # Checkpointed, not cached: appending to out/messages below invalidates every cached
        # plan that reads that folder (the anti-join above does), and re-running it then would
        # find the just-written keys and keep nothing.
        kept = kept.drop("_rank").localCheckpoint(eager=True)
        keys = kept.select("msg_key", "_chunk")
        n_all = msgs.count()
        tables = {
            "messages": kept,
            "recipients": read["recipients"].join(keys, ["msg_key", "_chunk"], "left_semi"),
            "received_hops": read["received_hops"].join(keys, ["msg_key", "_chunk"], "left_semi"),
            "headers": read["headers"].join(keys, ["msg_key", "_chunk"], "left_semi")
                .where("packed IS NOT NULL")
                .select("dataset", "msg_key", "_chunk",
                        F.posexplode(F.split("packed", "\x1f")).alias("idx", "fv"))
                .select("dataset", "msg_key", "_chunk", F.col("idx").cast("int").alias("idx"),
                        F.substring_index("fv", "\x1e", 1).alias("name"),
                        F.expr("substr(fv, instr(fv, '\x1e') + 1)").alias("value"),
                        F.lit(0).alias("_row")),
            "ingest_errors": read["ingest_errors"].dropDuplicates(["dataset", "source", "position", "error"]),
        }
        counts = {}
        for name, df in tables.items():
            cols = [c for c in table_columns(name) if c != "dataset"]
            # Sorted within each file so a dataset reads back in a stable order.
            final = df.orderBy("_chunk", "_row").select(*cols, "dataset").cache()
            counts[name] = final.count()
            final.write.mode("append").partitionBy("dataset").parquet(str(out / name))
            final.unpersist()
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return SparkIngestSummary(
        messages=counts["messages"], recipients=counts["recipients"], errors=counts["ingest_errors"],
        duplicates=n_all - counts["messages"], files=len(files), skipped=len(skipped),
        seconds=time.perf_counter() - t0, authserv_ids=tuple(sorted(trust.authserv_ids)),
    )


def _existing_keys(spark: SparkSession, out: Path, dataset: str):
    from pyspark.sql import functions as F

    folder = out / "messages"
    if not folder.is_dir() or not any(folder.glob("**/*.parquet")):
        return None
    return (spark.read.option("basePath", str(folder)).parquet(str(folder))
            .where(F.col("dataset") == dataset)
            .select("msg_key").distinct())
