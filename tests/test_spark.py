"""The Spark engine on a real local Spark (pyspark, local[2], Debian's Java): ingest in executors
gives the same tables as DuckDB ingest, and the transpiled verdict query gives the same verdict,
reason and rule id as DuckDB for every corpus message under every differential-test pack."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from components import missing
from edrules.backends.sql import evaluate_sql, verdict_counts
from edrules.schema import attach_parquet_dataset, ensure_schema, export_parquet_dataset
from test_differential import LABELS, NOW, corpus_policies

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spark():
    try:
        import pyspark  # noqa: F401
    except ModuleNotFoundError:
        missing("needs pyspark (pip install 'edrules[spark]')")
    if shutil.which("java") is None:
        missing("needs a Java runtime (apt-get install default-jre-headless)")
    from edrules.spark.session import spark_session

    session = spark_session("local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def both(corpus: Path, spark, tmp_path_factory):
    """Every corpus folder ingested twice, one dataset per folder: by DuckDB into a file, and
    by Spark executors into a Parquet dataset folder (read back through DuckDB views)."""
    from edrules.ingest import ingest_paths
    from edrules.spark.dataset import attach
    from edrules.spark.ingest import ingest_spark

    tmp = tmp_path_factory.mktemp("spark")
    duck = duckdb.connect(str(tmp / "corpus.duckdb"))
    ensure_schema(duck)
    folders = sorted(p for p in corpus.iterdir() if p.is_dir())
    summaries = {}
    for folder in folders:
        ingest_paths(duck, [folder], dataset=folder.name, label=LABELS.get(folder.name), jobs=1)
        summaries[folder.name] = ingest_spark(spark, [folder], tmp / "parquet", dataset=folder.name,
                                              label=LABELS.get(folder.name))
    attach(spark, tmp / "parquet")
    pq = duckdb.connect()
    attach_parquet_dataset(pq, tmp / "parquet")
    yield duck, pq, summaries
    duck.close()
    pq.close()


# Columns that legitimately differ: the Parquet copy has no insertion order, and nothing else.
_TABLE_KEYS = {
    "messages": "SELECT * FROM messages ORDER BY dataset, msg_key",
    "recipients": "SELECT * FROM recipients ORDER BY ALL",
    "received_hops": "SELECT * FROM received_hops ORDER BY dataset, msg_key, idx",
    "headers": "SELECT * FROM headers ORDER BY dataset, msg_key, idx",
    "ingest_errors": "SELECT * FROM ingest_errors ORDER BY ALL",
}


@pytest.mark.parametrize("table", list(_TABLE_KEYS))
def test_ingest_on_spark_gives_the_same_rows_as_ingest_on_duckdb(both, table):
    duck, pq, _ = both
    want = duck.execute(_TABLE_KEYS[table]).fetchall()
    got = pq.execute(_TABLE_KEYS[table]).fetchall()
    assert len(got) == len(want)
    assert got == want
    if table == "messages":
        assert len(want) > 5000


def test_spark_verdicts_equal_duckdb_verdicts_and_reasons_on_every_corpus_folder_and_pack(both, spark):
    from edrules.spark.evaluate import verdicts

    duck, _, _ = both
    cols = ("dataset", "msg_key", "recipient", "action", "category", "reason", "rule_id")
    seen = Counter()
    for name, policy in corpus_policies(duck).items():
        t = evaluate_sql(duck, policy, now=NOW)
        want = Counter(zip(*(t.column(c).to_pylist() for c in cols)))
        got = Counter(tuple(r) for r in verdicts(spark, policy, now=NOW).select(*cols).collect())
        only_duck, only_spark = want - got, got - want
        assert not only_duck and not only_spark, (
            f"{name}: only DuckDB {list(only_duck)[:3]}\nonly Spark {list(only_spark)[:3]}")
        for row, n in want.items():
            seen[row[4]] += n
    # The packs reach every decision step, so the agreement covers all of them (incl. CIDRs).
    assert {"inbound", "malware", "block", "allow", "bulk", "forgery", "phishing", "clean"} <= set(seen)


def test_spark_counts_and_duckdb_over_the_parquet_folder_agree(both, spark):
    from edrules.spark.evaluate import verdict_counts as spark_counts

    duck, pq, _ = both
    policy = corpus_policies(duck)["cidrs_v4_v6"]
    assert spark_counts(spark, policy, now=NOW) == verdict_counts(duck, policy, now=NOW)
    assert verdict_counts(pq, policy, now=NOW) == verdict_counts(duck, policy, now=NOW)


def test_whatif_on_spark_reports_exactly_what_the_workbench_reports(both, spark):
    from edrules.spark.whatif import whatif_spark
    from edrules.workbench.evaluate import materialize
    from edrules.workbench.whatif import compute_whatif

    duck, pq, _ = both
    packs = corpus_policies(duck)
    before, after = packs["strict_allow_senders"], packs["relaxed_domains_and_blocks"]
    materialize(duck, before, "v_before", now=NOW, dataset=None)
    materialize(duck, after, "v_after", now=NOW, dataset=None)
    want = compute_whatif(duck, "v_before", "v_after", before_name="a", after_name="b")
    got = whatif_spark(spark, pq, before, after, now=NOW, before_name="a", after_name="b")
    assert got.counts() == want.counts()
    assert got.changed > 0 and got.total == want.total
    assert got.summary.to_dict(orient="records") == want.summary.to_dict(orient="records")


def test_a_duckdb_dataset_exported_to_parquet_reads_back_identically(tmp_path, spark):
    from edrules.ingest import ingest_paths

    src = duckdb.connect(str(tmp_path / "a.duckdb"))
    ingest_paths(src, [ROOT / "data" / "sample"], dataset="2024", jobs=1)  # a name that looks numeric
    export_parquet_dataset(src, tmp_path / "pq")
    back = duckdb.connect()
    attach_parquet_dataset(back, tmp_path / "pq")
    for table, query in _TABLE_KEYS.items():
        assert back.execute(query).fetchall() == src.execute(query).fetchall(), table
    from edrules.spark.dataset import attach

    attach(spark, tmp_path / "pq", prefix="exp_")
    assert spark.sql("SELECT DISTINCT dataset FROM exp_messages").collect()[0][0] == "2024"
