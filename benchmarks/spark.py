"""Benchmark: the same jobs on DuckDB and on local Spark (local[2]) in one run: evaluate a
100k-entry pack over generated Parquet traffic (with each engine's bare scan+join as the
baseline), and ingest a corpus folder (DuckDB ingest with 2 workers vs Spark executors).

Run: nice .venv/bin/python -m benchmarks.spark [--rows 1e6] [--corpus ../shared/corpus/spamassassin_publiccorpus] [--write-docs]
Data goes to $BENCH_DATA (default /tmp/edrules-bench), never into the repository.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from benchmarks.rules_sql import BARE_SQL, DOCS
from benchmarks.rules_sql_data import benchmark_policy, generate_parquet

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
DATA = Path(os.environ.get("BENCH_DATA", "/tmp/edrules-bench")) / "spark"
SECTION = "## Scale-out: DuckDB and Spark (local[2])"
ROOT = Path(__file__).resolve().parents[1]


def best(fn, repeat: int = 2) -> tuple[float, object]:
    t_best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        t_best = min(t_best, time.perf_counter() - t)
    return t_best, out


def evaluate_both(rows: int) -> list[str]:
    from edrules.backends.sql import policy_tables, verdict_counts
    from edrules.spark.dataset import attach
    from edrules.spark.evaluate import verdict_counts as spark_counts
    from edrules.spark.session import spark_session

    folder = DATA / f"traffic-{rows}"
    if not (folder / "messages").is_dir():
        generate_parquet(folder, rows)
    policy = benchmark_policy(100_000)
    con = duckdb.connect()
    for t in ("messages", "recipients"):
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{folder}/{t}/*.parquet')")
    n_rows = con.execute("SELECT count(*) FROM recipients").fetchall()[0][0]
    con.register("bare_entries", policy_tables(policy)["entries"])
    bare_sql = BARE_SQL.format(recipients="recipients", messages="messages", entries="bare_entries")
    duck_bare, _ = best(lambda: con.execute(bare_sql).fetchall())
    duck_eval, duck_counts = best(lambda: verdict_counts(con, policy, now=NOW))

    t0 = time.perf_counter()
    spark = spark_session("local[2]")
    start = time.perf_counter() - t0
    attach(spark, folder)
    spark.createDataFrame(policy_tables(policy)["entries"]).createOrReplaceTempView("bare_entries")
    spark_bare, _ = best(lambda: spark.sql(bare_sql).collect())
    spark_eval, s_counts = best(lambda: spark_counts(spark, policy, now=NOW))
    assert sorted(s_counts) == sorted(duck_counts), "Spark and DuckDB disagree"
    spark.stop()
    return [
        f"Evaluate: {n_rows:,} recipient rows, 100k-entry pack, counts by action and category "
        "(identical on both engines; checked by the run).",
        "",
        "| engine | bare scan+join | evaluate | ratio to its bare scan | recipient rows/s |",
        "|---|---:|---:|---:|---:|",
        f"| DuckDB (2 threads) | {duck_bare:.2f} s | {duck_eval:.2f} s | {duck_eval / duck_bare:.1f}x "
        f"| {n_rows / duck_eval:,.0f} |",
        f"| Spark local[2] | {spark_bare:.2f} s | {spark_eval:.2f} s | {spark_eval / spark_bare:.1f}x "
        f"| {n_rows / spark_eval:,.0f} |",
        "",
        f"Spark session start (JVM, local[2]): {start:.1f} s, not included above. "
        f"Spark / DuckDB on the same evaluate: {spark_eval / duck_eval:.1f}x.",
    ]


def ingest_both(corpus: Path) -> list[str]:
    from edrules.ingest import ingest_paths
    from edrules.spark.ingest import ingest_spark
    from edrules.spark.session import spark_session

    out = DATA / "ingest"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t = time.perf_counter()
    d = ingest_paths(out / "duck.duckdb", [corpus], dataset="bench", jobs=2)
    duck_s = time.perf_counter() - t
    spark = spark_session("local[2]")
    t = time.perf_counter()
    s = ingest_spark(spark, [corpus], out / "parquet", dataset="bench")
    spark_s = time.perf_counter() - t
    spark.stop()
    assert (s.messages, s.recipients) == (d.messages - d.duplicates, d.recipients), (s, d)
    return [
        f"Ingest: {corpus.name} ({d.messages:,} messages, {d.bytes / 1e6:.1f} MB).",
        "",
        "| engine | wall | messages/s |",
        "|---|---:|---:|",
        f"| DuckDB ingest, 2 workers | {duck_s:.1f} s | {d.messages / duck_s:,.0f} |",
        f"| Spark local[2] (executors extract, write Parquet; dedupe pass) | {spark_s:.1f} s "
        f"| {s.messages / spark_s:,.0f} |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=float, default=1e6, help="recipient rows of generated traffic")
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "spamassassin_publiccorpus")
    ap.add_argument("--write-docs", action="store_true", help="replace this section of docs/benchmarks.md")
    args = ap.parse_args()
    os.environ.setdefault("EDRULES_DNS", "offline")
    lines = [SECTION, "",
             f"`nice .venv/bin/python -m benchmarks.spark --rows {args.rows:g}` on {platform.machine()}, "
             f"{os.cpu_count()} cores, {datetime.now(timezone.utc):%Y-%m-%d}.", ""]
    lines += evaluate_both(int(args.rows)) + [""]
    if args.corpus.is_dir():
        lines += ingest_both(args.corpus) + [""]
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        _write_docs_section(text)


def _write_docs_section(text: str) -> None:
    old = DOCS.read_text(encoding="utf-8")
    if SECTION in old:
        head, _, rest = old.partition(SECTION)
        nxt = rest.find("\n## ")
        old = head + (rest[nxt + 1:] if nxt >= 0 else "")
    DOCS.write_text(old.rstrip() + "\n\n" + text.rstrip() + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
