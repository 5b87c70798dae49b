"""`edrules evaluate`: verdicts of a rule pack over a DuckDB dataset, by either backend."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from pathlib import Path

import click

from edrules.errors import EdrulesError, Location


def parse_now(text: str | None) -> datetime | None:
    """`2026-01-31` or an ISO timestamp; naive values are UTC."""
    if text is None:
        return None
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), tzinfo=timezone.utc)
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EdrulesError(f"--now must be a date (YYYY-MM-DD) or ISO timestamp, not {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def format_counts(counts: list[tuple[str, str, int]]) -> str:
    """Plain-text table of (action, category, recipients), largest first, with a total."""
    rows = sorted(counts, key=lambda r: (-r[2], r[0], r[1]))
    total = sum(r[2] for r in rows)
    wa = max([len("action"), *(len(r[0]) for r in rows)])
    wc = max([len("category"), *(len(r[1]) for r in rows)])
    wn = max(len("recipients"), len(f"{total:,}"))
    lines = [f"{'action':<{wa}}  {'category':<{wc}}  {'recipients':>{wn}}"]
    lines += [f"{a:<{wa}}  {c:<{wc}}  {n:>{wn},}" for a, c, n in rows]
    lines.append(f"{'total':<{wa}}  {'':<{wc}}  {total:>{wn},}")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class _Named:
    """What evaluate needs of a pack or rules file: its name and policy."""

    name: str
    policy: object


def _load_policy(path: str, *, pubkey: str | None, allow_unsigned: bool) -> _Named:
    """A signed pack (.json) as the gateway loads it, or a rules file (.yaml), as whatif takes."""
    if path.endswith((".yaml", ".yml")):
        from edrules.rules.parse import parse_rules_file

        if not Path(path).is_file():
            raise EdrulesError("no such rules file", Location(path))
        policy = parse_rules_file(path)
        return _Named(policy.name, policy)
    from edrules.pack import load_pack

    loaded = load_pack(path, pubkey_path=pubkey, allow_unsigned=allow_unsigned)
    return _Named(loaded.name, loaded.policy)


@click.command()
@click.option("--db", "db_path", required=True, type=click.Path(),
              help="DuckDB dataset file (edrules ingest), or a Parquet dataset folder.")
@click.option("--pack", "pack_path", required=True, type=click.Path(dir_okay=False),
              help="Compiled rule pack (edrules pack compile) or a rules file (.yaml).")
@click.option("--backend", type=click.Choice(["sql", "runtime"]), default="sql", show_default=True,
              help="sql: one DuckDB query over the dataset; runtime: the gateway's evaluator per message.")
@click.option("--dataset", default=None, help="Only this dataset (default: all); an unknown name is an error.")
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False),
              help="Write one verdict row per recipient to this Parquet file.")
@click.option("--now", "now_text", default=None,
              help="Evaluation date for entry expiry (YYYY-MM-DD; default: a day after the newest "
                   "plausible message, as in whatif).")
@click.option("--pubkey", default=None, type=click.Path(dir_okay=False),
              help="Trusted public key the pack must be signed by.")
@click.option("--allow-unsigned", is_flag=True, help="Accept an unsigned pack (development only).")
@click.option("--engine", type=click.Choice(["duckdb", "spark"]), default="duckdb", show_default=True,
              help="spark: the SQL backend's query on Spark (docs/spark.md); --out is then a folder.")
def evaluate(db_path: str, pack_path: str, backend: str, dataset: str | None, out_path: str | None,
             now_text: str | None, pubkey: str | None, allow_unsigned: bool, engine: str) -> None:
    """Evaluate a rule pack over a dataset and print verdict counts by action and category."""
    from edrules.backends.evalscope import (
        EvalDate,
        default_now,
        no_envelope_note,
        require_known_dataset,
        rows_without_envelope,
    )
    from edrules.backends.sql import copy_verdicts, verdict_counts
    from edrules.schema import require_dataset

    given = parse_now(now_text)
    pack = _load_policy(pack_path, pubkey=pubkey, allow_unsigned=allow_unsigned)
    if engine == "spark" and backend != "sql":
        raise click.UsageError("--engine spark runs the SQL backend; --backend runtime is DuckDB-side only")
    con = open_dataset(db_path)
    try:
        require_dataset(con, db_path)
        require_known_dataset(con, dataset, db_path)
        when = EvalDate(given.replace(tzinfo=None), "given") if given else default_now(con, dataset)
        now = when.now
        blind = rows_without_envelope(con, dataset)
        if engine == "spark":
            from edrules.spark import cli as spark_cli

            if out_path:
                spark_cli.write_verdicts(db_path, pack.policy, out_path, now=now, dataset=dataset)
                counts = con.execute("SELECT action, category, count(*) FROM read_parquet($p) GROUP BY ALL",
                                     {"p": str(Path(out_path) / "*.parquet")}).fetchall()
            else:
                counts = spark_cli.counts(db_path, pack.policy, now=now, dataset=dataset)
        elif backend == "sql":
            if out_path:
                copy_verdicts(con, pack.policy, out_path, now=now, dataset=dataset)
                counts = con.execute(
                    "SELECT action, category, count(*) FROM read_parquet($p) GROUP BY ALL",
                    {"p": out_path},
                ).fetchall()
            else:
                counts = verdict_counts(con, pack.policy, now=now, dataset=dataset)
        else:
            from edrules.backends.replay import runtime_table

            table = runtime_table(con, pack.policy, now=now, dataset=dataset)
            if out_path:
                import pyarrow.parquet as pq

                pq.write_table(table, out_path)
            c = Counter(zip(table.column("action").to_pylist(), table.column("category").to_pylist()))
            counts = [(a, k, n) for (a, k), n in c.items()]
    finally:
        con.close()
    # One header line (the table follows it directly, as scripts read it), with the date used.
    click.echo(f"pack {pack.name} ({backend} backend{', spark' if engine == 'spark' else ''})"
               + (f", dataset {dataset}" if dataset else "")
               + f", {when.short()}")
    if not counts:
        raise EdrulesError("0 recipient rows were evaluated: the dataset has no recipient rows "
                           "to judge, so there are no counts to show")
    click.echo(format_counts(counts))
    note = no_envelope_note(blind, sum(n for _, _, n in counts), [pack.policy.from_policy])
    if note:
        click.echo(note)
    if out_path:
        click.echo(f"verdicts written to {out_path}")


def open_dataset(db_path: str):
    """A read-only connection to a DuckDB dataset file, or to DuckDB views over a Parquet
    dataset folder (edrules.schema.attach_parquet_dataset): both read the same way."""
    import duckdb

    from edrules.backends.evalscope import connect
    from edrules.schema import attach_parquet_dataset, is_parquet_dataset

    if is_parquet_dataset(db_path):
        con = duckdb.connect()
        attach_parquet_dataset(con, db_path)
        return con
    if not Path(db_path).is_file():
        raise EdrulesError("no such dataset (a DuckDB file or a Parquet dataset folder)", Location(db_path))
    return connect(db_path, read_only=True)
