"""`edrules synth`: a labelled, reproducible demo tenant (a month of signed, gateway-stamped mail)."""

from __future__ import annotations

from collections import Counter
from datetime import date
from pathlib import Path

import click

from edrules.synth.build import DEFAULT_START, Tenant, generate
from edrules.synth.keys import KEYS_DIR

DEFAULT_OUT = KEYS_DIR.parent  # the repository's data/demo-tenant, wherever edrules is run from

__all__ = ["synthesize", "synth_command", "DEFAULT_OUT", "Tenant"]


def synthesize(out: str | Path = DEFAULT_OUT, *, seed: int = 7, users: int = 6, days: int = 30,
               start: date = DEFAULT_START, keys_dir: str | Path = KEYS_DIR) -> Tenant:
    """Write the demo tenant into `out` (label folders, quarantine.csv, zone.txt, README.md)."""
    return generate(Path(out), seed, users, days, start, Path(keys_dir))


def summary_line(t: Tenant) -> str:
    labels = Counter(str(m.draft.label) for m in t.messages)
    parts = ", ".join(f"{lab} {labels[lab]}" for lab in ("ham", "spam", "phishing", "malware"))
    return f"{len(t.messages)} messages ({parts}) in {t.out}"


@click.command("synth")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default="data/demo-tenant", help="Output directory.")
@click.option("--seed", type=int, default=7, show_default=True, help="Same seed, byte-identical files.")
@click.option("--users", type=int, default=6, show_default=True, help="Mailboxes in the tenant (3-12).")
@click.option("--days", type=int, default=30, show_default=True, help="Days of mail.")
@click.option("--start", type=click.DateTime(formats=["%Y-%m-%d"]), default=str(DEFAULT_START),
              show_default=True, help="First day (YYYY-MM-DD).")
@click.option("--keys", "keys_dir", type=click.Path(file_okay=False, path_type=Path), default=KEYS_DIR,
              show_default="data/demo-tenant/keys", help="Demo DKIM keys (created once if missing).")
def synth_command(out: Path, seed: int, users: int, days: int, start, keys_dir: Path) -> None:
    """Write a labelled demo tenant: a month of mail with DKIM, SPF and DMARC that verify offline."""
    tenant = synthesize(out, seed=seed, users=users, days=days, start=start.date(), keys_dir=keys_dir)
    click.echo(summary_line(tenant))
