"""`edrules whatif`: the per-recipient verdict diff of two packs over a dataset, as text or JSON."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import click
import pandas as pd

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


def render_text(diff: WhatIf, limit: int) -> str:
    """The summary and the top `limit` changed rows, for a terminal."""
    c = diff.counts()
    labels = ", ".join(f"{k} {v}" for k, v in c["newly_delivered_by_label"].items()) or "none"
    lines = [
        f"what-if: {diff.before} -> {diff.after} over {c['total']} recipient rows",
        f"changed: {c['changed']}  newly delivered: {c['newly_delivered']} "
        f"({c['newly_delivered_messages']} messages; forged {c['newly_delivered_forged']}; {labels})  "
        f"newly stopped: {c['newly_stopped']}",
    ]
    if diff.changed == 0:
        lines.append("no verdict changes")
        return "\n".join(lines)
    summary = diff.summary.copy()
    summary["forged"] = summary["forged"].map({True: "yes", False: "no"})
    lines += ["", summary.to_string(index=False), ""]
    top = diff.rows.head(limit)[_ROW_COLUMNS].copy()
    top["msg_key"] = top["msg_key"].str[:12]
    top["forged"] = top["forged"].map({True: "yes", False: "no"})
    shown = f"top {len(top)} of {diff.changed}" if diff.changed > len(top) else f"all {diff.changed}"
    lines += [f"changed rows ({shown}, most alarming first):",
              top.fillna("-").to_string(index=False)]
    return "\n".join(lines)


@click.command("whatif")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="DuckDB dataset (default: $EDRULES_DB or data/edrules.duckdb).")
@click.option("--pack", "packs", multiple=True, required=True,
              help="Rule pack (.json) or rules file (.yaml); give it twice: BEFORE then AFTER.")
@click.option("--dataset", default=None, help="Only this dataset (default: all).")
@click.option("--now", default=None, help="Evaluation time for entry expiry (default: a day after the newest message).")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=0), help="Changed rows to list.")
@click.option("--backend", type=click.Choice([b.value for b in Backend]), default=Backend.SQL.value,
              show_default=True, help="Rule backend that computes the verdicts.")
@click.option("--pubkey", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Require signed packs to be signed by this key.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: counts, summary and the top rows.")
def whatif(db: Path | None, packs: tuple[str, ...], dataset: str | None, now: str | None, limit: int,
           backend: str, pubkey: Path | None, as_json: bool) -> None:
    """Replay pack AFTER instead of BEFORE over the dataset; print what changes, per recipient.

    Unsigned packs are accepted (this only analyses them); a signed pack must verify.
    """
    if len(packs) != 2:
        raise click.UsageError("give --pack exactly twice: the deployed pack, then the candidate")
    with Workbench(db or default_db(), dataset=dataset, now=_parse_now(now), backend=backend) as wb:
        before = wb.pack(packs[0], pubkey_path=pubkey)
        after = wb.pack(packs[1], pubkey_path=pubkey)
        if before.name == after.name:
            after = wb.pack(after, name=f"{after.name} ({Path(packs[1]).name})")
        diff = wb.whatif(before, after)
        if as_json:
            out = diff.to_json(limit=limit)
            out["now"] = wb.now.isoformat()
            click.echo(json.dumps(out, indent=2, default=_json_default, ensure_ascii=False))
        else:
            click.echo(render_text(diff, limit))


def _json_default(value):
    if isinstance(value, (pd.Timestamp, datetime)):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)
