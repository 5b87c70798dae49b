"""`edrules ingest`: load mail files, folders, mbox, header dumps and quarantine CSVs into DuckDB."""

from __future__ import annotations

import sys

import click

from edrules.errors import EdrulesError, Location

DEFAULT_DB = "data/edrules.duckdb"
SHOW_ERRORS = 5


@click.command("ingest")
@click.option("--db", default=DEFAULT_DB, show_default=True,
              help="DuckDB database file (with --engine spark: a Parquet dataset folder).")
@click.option("--dataset", default="default", show_default=True, help="Dataset name the messages belong to.")
@click.option("--label", type=click.Choice(["spam", "phishing", "malware", "ham", "clean"], case_sensitive=False),
              help="Category for messages that carry none.")
@click.option("--trusted-authserv", "trusted_authserv", multiple=True, metavar="ID",
              help="Authserv-id (or Received-SPF receiver) whose results to believe; repeatable. "
                   "'(none)' stands for id-less Microsoft 365 headers. Turns auto-detection off.")
@click.option("--trusted-relay", "trusted_relay", multiple=True, metavar="CIDR",
              help="Network of our own relays; Received fields below them are believed too. Repeatable.")
@click.option("--no-auto-trust", is_flag=True, help="Do not auto-detect trusted authserv-ids or trust private relays.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, help="Worker processes [default: all cores].")
@click.option("--engine", type=click.Choice(["duckdb", "spark"]), default="duckdb", show_default=True,
              help="spark: Spark executors extract and write partitioned Parquet (docs/spark.md).")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=False))
def ingest(db, dataset, label, trusted_authserv, trusted_relay, no_auto_trust, jobs, engine, paths):
    """Ingest PATH... (.eml files, folders incl. maildir, mbox, pasted header dumps, quarantine CSV)."""
    from pathlib import Path

    from edrules.ingest import TrustConfig, ingest_paths

    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise EdrulesError("no such file or directory", Location(missing[0]))
    trust = TrustConfig(
        authserv_ids=frozenset(trusted_authserv),
        relays=tuple(trusted_relay),
        auto_detect=not no_auto_trust,
    )
    if engine == "spark":
        from edrules.spark import cli as spark_cli

        summary = spark_cli.ingest(db, list(paths), dataset=dataset, label=label, trust=trust)
        if summary.errors:
            click.echo(f"  see {Path(db) / 'ingest_errors'} for the error rows", err=True)
        if not trusted_authserv and not no_auto_trust:
            click.echo(f"trusted authserv-ids (auto-detected): {', '.join(summary.authserv_ids) or 'none found'}")
        click.echo(str(summary))
        return
    summary = ingest_paths(
        db, list(paths), dataset=dataset, label=label, trust=trust, jobs=jobs, progress=sys.stderr.isatty()
    )
    if summary.errors:
        import duckdb

        with duckdb.connect(str(db), read_only=True) as con:
            rows = con.execute(
                "SELECT source, position, error, detail FROM ingest_errors WHERE dataset = ? "
                "ORDER BY source, position LIMIT ?",
                [dataset, SHOW_ERRORS],
            ).fetchall()
        for source, position, error, detail in rows:
            click.echo(f"  {source} ({position}): {error}: {detail}", err=True)
        if summary.errors > len(rows):
            click.echo(f"  ... see table ingest_errors in {db}", err=True)
    if not trusted_authserv and not no_auto_trust:
        ids = ", ".join(summary.authserv_ids) or "none found"
        click.echo(f"trusted authserv-ids (auto-detected): {ids}")
    click.echo(str(summary))
