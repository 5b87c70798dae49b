"""`edrules whatif`: the per-recipient verdict diff of two packs over a dataset, as text or JSON."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import click
import pandas as pd

from edrules.backends.evalscope import rows_without_envelope
from edrules.workbench.cli_evaluate import open_dataset
from edrules.workbench.core import Workbench, default_db
from edrules.workbench.evaluate import Backend
from edrules.workbench.whatif import WhatIf

_ROW_COLUMNS = ["msg_key", "recipient", "transition", "label", "forged", "header_from",
                "rule_before", "rule_after"]


def _parse_now(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO date or time: {value!r}", param_hint="--now") from None


WIDTH = 100  # every report line fits a 100-column terminal


def _cut(text: object, width: int) -> str:
    t = "-" if text is None or (isinstance(text, float) and text != text) else str(text)
    return t if len(t) <= width else t[: width - 1] + "…"


def _table(df: pd.DataFrame, widths: dict[str, int]) -> list[str]:
    """Fixed-width columns, each cut to its width (with an ellipsis), one space apart."""
    cols = [c for c in widths if c in df.columns]
    w = {c: min(widths[c], max([len(c), *(len(_cut(v, widths[c])) for v in df[c])])) for c in cols}
    num = {c for c in cols if pd.api.types.is_integer_dtype(df[c])}
    fmt = lambda c, v: _cut(v, w[c]).rjust(w[c]) if c in num else _cut(v, w[c]).ljust(w[c])
    lines = [" ".join(c.rjust(w[c]) if c in num else c.ljust(w[c]) for c in cols).rstrip()]
    for row in df[cols].itertuples(index=False):
        lines.append(" ".join(fmt(c, v) for c, v in zip(cols, row)).rstrip())
    return lines


def render_text(diff: WhatIf, limit: int, *, now_line: str | None = None) -> str:
    """The summary and the top `limit` changed rows, for a terminal (lines of <= 100 columns)."""
    c = diff.counts()
    labels = ", ".join(f"{k} {v}" for k, v in c["newly_delivered_by_label"].items()) or "none"
    scope = f" ({diff.scope})" if diff.scope else ""
    lines = [_cut(f"what-if: {diff.before} -> {diff.after} over {c['total']} recipient rows{scope}", WIDTH)]
    if now_line or diff.now:
        lines.append(_cut(now_line or f"evaluation date {diff.now}", WIDTH))
    if diff.empty:
        lines.append("WARNING: 0 recipient rows were evaluated: nothing was compared, so this is "
                     "NOT \"no change\"")
        return "\n".join(lines)
    lines += [
        f"changed: {c['changed']}  newly delivered: {c['newly_delivered']} "
        f"({c['newly_delivered_messages']} messages; forged {c['newly_delivered_forged']})  "
        f"newly stopped: {c['newly_stopped']}",
        _cut(f"newly delivered by label: {labels}", WIDTH),
    ]
    lines += diff.envelope_note.splitlines()  # wrapped to WIDTH already; none when every envelope is known
    if diff.changed == 0:
        lines.append("no verdict changes")
        return "\n".join(lines)
    summary = diff.summary.copy()
    summary["forged"] = summary["forged"].map({True: "yes", False: "no"})
    lines += ["", "changes by transition, label and forged From:"]
    lines += _table(summary, {"transition": 22, "label": 10, "forged": 6, "recipients": 10,
                              "messages": 8, "top_senders": 44})
    top = diff.rows.head(limit).copy()
    top["msg_key"] = top["msg_key"].str[:12]
    top["forged"] = top["forged"].map({True: "yes", False: "no"})
    shown = f"top {len(top)} of {diff.changed}" if diff.changed > len(top) else f"all {diff.changed}"
    lines += ["", f"changed rows ({shown}, most alarming first; `edrules explain --db FILE KEY`):"]
    lines += _table(top, {"msg_key": 12, "recipient": 24, "transition": 18, "label": 8,
                          "forged": 6, "header_from": 26})
    return "\n".join(lines)


def render_over_time(diff: WhatIf, unit: str) -> str:
    t = diff.over_time(unit)
    if t.empty:
        return f"changed rows per {unit}: none"
    t = t.assign(bucket=t["bucket"].dt.strftime("%Y-%m-%d"))
    return "\n".join([f"changed rows per {unit} (bucket start):",
                      *_table(t, {"bucket": 10, "newly_delivered": 15, "newly_delivered_forged": 22,
                                  "newly_stopped": 13, "other": 6})])


def render_changes(table: pd.DataFrame) -> str:
    if table.empty:
        return "rules diff: the two files make the same policy"
    return "\n".join(["rules diff, each change alone against BEFORE:",
                      *_table(table.rename(columns={"newly_delivered": "delivered",
                                                    "newly_delivered_forged": "forged",
                                                    "newly_phishing": "phish", "newly_stopped": "stopped"}),
                              {"change": 7, "what": 18, "before": 22, "after": 22, "changed": 7,
                               "delivered": 9, "forged": 6, "stopped": 7})])


@click.command("whatif")
@click.option("--db", type=click.Path(path_type=Path), default=None,
              help="DuckDB dataset (default: $EDRULES_DB or data/edrules.duckdb); with --engine spark "
                   "also a Parquet dataset folder.")
@click.option("--pack", "packs", multiple=True, required=True,
              help="Rule pack (.json) or rules file (.yaml); give it twice: BEFORE then AFTER.")
@click.option("--dataset", default=None, help="Only this dataset (default: all); an unknown name is an error.")
@click.option("--now", default=None,
              help="Evaluation date for entry expiry (default: a day after the newest plausible message).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=0), help="Changed rows to list.")
@click.option("--backend", type=click.Choice([b.value for b in Backend]), default=Backend.SQL.value,
              show_default=True, help="Rule backend that computes the verdicts.")
@click.option("--pubkey", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Require signed packs to be signed by this key.")
@click.option("--recipient", default=None, help="Only this recipient's rows.")
@click.option("--recipient-domain", default=None, help="Only rows of recipients in this domain.")
@click.option("--over-time", type=click.Choice(["day", "week", "month"]), default=None,
              help="Also print changed rows per day, week or month.")
@click.option("--by-change", is_flag=True,
              help="Also diff the two rules change by change, with the what-if of each change alone.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every changed row to FILE.csv or FILE.parquet (summary to FILE.summary.*).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: counts, summary and the top rows.")
@click.option("--engine", type=click.Choice(["duckdb", "spark"]), default="duckdb", show_default=True,
              help="spark: both packs evaluated and diffed on Spark (docs/spark.md).")
def whatif(db: Path | None, packs: tuple[str, ...], dataset: str | None, now: str | None, limit: int,
           backend: str, pubkey: Path | None, recipient: str | None, recipient_domain: str | None,
           over_time: str | None, by_change: bool, out: Path | None, as_json: bool, engine: str) -> None:
    """Replay pack AFTER instead of BEFORE over the dataset; print what changes, per recipient.

    Unsigned packs are accepted (this only analyses them); a signed pack must verify. A
    what-if that evaluated 0 recipient rows exits with status 2: it compared nothing.
    """
    from edrules.errors import EdrulesError

    if len(packs) != 2:
        raise click.UsageError("give --pack exactly twice: the deployed pack, then the candidate")
    if engine == "spark":
        if recipient or recipient_domain or by_change or backend != Backend.SQL.value:
            raise click.UsageError("--engine spark takes no --recipient, --recipient-domain, --by-change "
                                   "or --backend runtime")
        from edrules.spark import cli as spark_cli
        from edrules.workbench.packs import to_policy

        before, after = (to_policy(p, pubkey_path=pubkey) for p in packs)
        diff, when = spark_cli.whatif(str(db or default_db()), before, after, now=_parse_now(now),
                                      dataset=dataset)
        con = open_dataset(str(db or default_db()))
        try:
            diff = replace(diff, rows_without_envelope=rows_without_envelope(con, dataset),
                           from_policies=(str(before.from_policy), str(after.from_policy)))
        finally:
            con.close()
        if as_json:
            body = diff.to_json(limit=limit) | {"now": when.now.isoformat(), "evaluation_date": when.describe()}
            click.echo(json.dumps(body, indent=2, default=_json_default, ensure_ascii=False))
        else:
            click.echo(render_text(diff, limit, now_line=when.describe()))
        for p in diff.write(out) if out is not None else []:
            click.echo(f"written: {p}")
        if diff.empty:
            raise EdrulesError("the what-if evaluated 0 recipient rows: nothing was compared")
        return
    with Workbench(db or default_db(), dataset=dataset, now=_parse_now(now), backend=backend) as wb:
        wb.con  # the dataset file and name are checked before anything else
        before = wb.pack(packs[0], pubkey_path=pubkey)
        after = wb.pack(packs[1], pubkey_path=pubkey)
        if before.name == after.name:
            after = wb.pack(after, name=f"{after.name} ({Path(packs[1]).name})")
        diff = wb.whatif(before, after, recipient=recipient, recipient_domain=recipient_domain)
        written = diff.write(out) if out is not None else []
        changes = wb.diff(before, after) if by_change else None
        if as_json:
            body = diff.to_json(limit=limit)
            body["now"] = wb.now.isoformat()
            body["evaluation_date"] = wb.now_used.describe()
            if over_time:
                t = diff.over_time(over_time)
                body["over_time"] = t.assign(bucket=t["bucket"].astype(str)).to_dict(orient="records")
            if changes is not None:
                body["changes"] = changes.to_dict(orient="records")
            click.echo(json.dumps(body, indent=2, default=_json_default, ensure_ascii=False))
        else:
            click.echo(render_text(diff, limit, now_line=wb.now_used.describe()))
            if over_time:
                click.echo("\n" + render_over_time(diff, over_time))
            if changes is not None:
                click.echo("\n" + render_changes(changes))
            for p in written:
                click.echo(f"written: {p}")
        if diff.empty:
            raise EdrulesError("the what-if evaluated 0 recipient rows: nothing was compared "
                               "(check --dataset, --recipient and --recipient-domain)")


def _json_default(value):
    if isinstance(value, (pd.Timestamp, datetime)):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)
