"""Where Spark comes from: an existing cluster (SPARK_REMOTE / EDRULES_SPARK_MASTER) or local[N]."""

from __future__ import annotations

import os
import shutil
import sys
from typing import TYPE_CHECKING

from edrules.errors import EdrulesError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEFAULT_MASTER = "local[2]"


def _require_pyspark() -> None:
    try:
        import pyspark  # noqa: F401
    except ModuleNotFoundError:
        raise EdrulesError("the Spark engine needs pyspark: pip install 'edrules[spark]'") from None
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")) and not os.environ.get("SPARK_REMOTE"):
        raise EdrulesError("the Spark engine needs a Java runtime (apt-get install default-jre-headless) "
                           "or SPARK_REMOTE pointing at a Spark Connect server")


def spark_session(master: str | None = None, app: str = "edrules") -> SparkSession:
    """A SparkSession: Spark Connect when SPARK_REMOTE is set, else `master`
    (default EDRULES_SPARK_MASTER or local[2]). Local mode binds to 127.0.0.1 and starts no UI."""
    _require_pyspark()
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app)
    if os.environ.get("SPARK_REMOTE") and master is None:
        return builder.remote(os.environ["SPARK_REMOTE"]).getOrCreate()
    master = master or os.environ.get("EDRULES_SPARK_MASTER") or DEFAULT_MASTER
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Executors must run the interpreter that has edrules installed, not the system python3.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (builder.config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false")
                   .config("spark.sql.shuffle.partitions", "8"))
    spark = (builder.master(master)
             # Dataset names are text even when they look like numbers or dates.
             .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
             .config("spark.sql.session.timeZone", "UTC")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark
