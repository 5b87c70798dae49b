"""`edrules evaluate`: verdicts of a rule pack over a DuckDB dataset, by either backend."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime, time, timezone
from pathlib import Path

import click

from edrules.errors import EdrulesError, Location


def _parse_now(text: str | None) -> datetime | None:
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


@click.command()
@click.option("--db", "db_path", required=True, type=click.Path(dir_okay=False),
              help="DuckDB dataset file (edrules ingest).")
@click.option("--pack", "pack_path", required=True, type=click.Path(dir_okay=False),
              help="Compiled rule pack (edrules pack compile).")
@click.option("--backend", type=click.Choice(["sql", "runtime"]), default="sql", show_default=True,
              help="sql: one DuckDB query over the dataset; runtime: the gateway's evaluator per message.")
@click.option("--dataset", default=None, help="Only this dataset (default: all).")
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False),
              help="Write one verdict row per recipient to this Parquet file.")
@click.option("--now", "now_text", default=None,
              help="Evaluation date for entry expiry (YYYY-MM-DD; default: today, UTC).")
@click.option("--pubkey", default=None, type=click.Path(dir_okay=False),
              help="Trusted public key the pack must be signed by.")
@click.option("--allow-unsigned", is_flag=True, help="Accept an unsigned pack (development only).")
def evaluate(db_path: str, pack_path: str, backend: str, dataset: str | None, out_path: str | None,
             now_text: str | None, pubkey: str | None, allow_unsigned: bool) -> None:
    """Evaluate a rule pack over a dataset and print verdict counts by action and category."""

    from edrules.backends.sql import copy_verdicts, verdict_counts
    from edrules.pack import load_pack
    from edrules.schema import connect_dataset, require_dataset

    now = _parse_now(now_text)
    pack = load_pack(pack_path, pubkey_path=pubkey, allow_unsigned=allow_unsigned)
    if not Path(db_path).is_file():
        raise EdrulesError("no such dataset file", Location(db_path))
    con = connect_dataset(db_path, read_only=True)
    try:
        require_dataset(con, db_path)
        if backend == "sql":
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
    click.echo(f"pack {pack.name} ({backend} backend)" + (f", dataset {dataset}" if dataset else ""))
    click.echo(format_counts(counts))
    if out_path:
        click.echo(f"verdicts written to {out_path}")
