"""Scale-out on Apache Spark: ingest raw mail in executors and run the SQL backend's verdict
query on Spark, with the semantics of edrules.backends.sql (one query, transpiled by sqlglot).

Needs the `spark` extra (pyspark and a Java runtime); nothing else in edrules imports this package.
"""
