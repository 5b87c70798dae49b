"""`edrules demo`: build the demo database from data/ in named steps, printing what each did.

Steps run in order and each reads what the earlier ones left in the database; a later step
(compile the example pack, what-if report, serve dashboards) is one more `Step` in `STEPS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edrules.ingest.demo import (  # noqa: F401 (SAMPLE_LABELS: tests read the demo's labels here)
    DATA,
    SAMPLE_LABELS,
    TENANT_LABELS,
    Part,
    ingest_part,
    quarantine_parts,
    sample_parts,
    tenant_parts,
)

if TYPE_CHECKING:  # imported lazily at run time: `edrules --help` stays fast
    from edrules.ingest.pipeline import IngestSummary


@dataclass(slots=True)
class Run:
    """What the steps share: where things are, and a printer."""

    db: Path
    sample: Path
    tenant: Path
    rules: Path
    packs: Path
    echo: Callable[[str], None] = click.echo
    jobs: int | None = None
    summaries: list[tuple[str, IngestSummary]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    title: str
    run: Callable[[Run], None]


def ensure_tenant(r: Run) -> None:
    if all((r.tenant / label).is_dir() for label in TENANT_LABELS) and (r.tenant / "quarantine.csv").exists():
        r.echo(f"  {r.tenant} exists (delete it or run `edrules synth` to regenerate)")
        return
    from edrules.synth import summary_line, synthesize

    r.echo("  " + summary_line(synthesize(r.tenant)))


def _ingest(r: Run, parts: list[Part]) -> None:
    for part in parts:
        summary = ingest_part(r.db, part, jobs=r.jobs)
        r.summaries.append((part.name, summary))
        r.echo(f"  {part.what:<28} {summary}")


def ingest_sample(r: Run) -> None:
    _ingest(r, sample_parts(r.sample))


def ingest_tenant(r: Run) -> None:
    _ingest(r, tenant_parts(r.tenant))


def ingest_quarantine(r: Run) -> None:
    _ingest(r, quarantine_parts(r.tenant))


SUMMARY_SQL = """
SELECT m.dataset, coalesce(m.category, '(none)') AS label,
       count(DISTINCT m.msg_key) AS messages, count(r.recipient) AS recipients
FROM messages m
LEFT JOIN recipients r ON r.dataset = m.dataset AND r.msg_key = m.msg_key
GROUP BY ALL ORDER BY 1, 2
"""


def dataset_summary(db: Path) -> list[tuple[str, str, int, int]]:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        return [tuple(row) for row in con.execute(SUMMARY_SQL).fetchall()]


def print_summary(r: Run) -> None:
    rows = dataset_summary(r.db)
    r.echo(f"  {'dataset':<16} {'label':<9} {'messages':>8} {'recipients':>10}")
    for dataset, label, messages, recipients in rows:
        r.echo(f"  {dataset:<16} {label:<9} {messages:>8} {recipients:>10}")


def compare_rules(r: Run) -> None:
    """Each example rules file over the demo tenant: what it delivers and what it holds."""
    import duckdb

    from edrules.backends.sql import registered
    from edrules.rules.parse import parse_rules_file

    files = sorted(r.rules.glob("*.yaml"))
    if not files:
        r.echo(f"  no rules files in {r.rules}")
        return
    r.echo(f"  {'rules file':<24} {'delivered':>9} {'held':>5} {'ham held':>8} {'bad delivered':>13}")
    with duckdb.connect(str(r.db), read_only=True) as con:
        for path in files:
            policy = parse_rules_file(path)
            with registered(con, policy, dataset="demo") as sql:
                delivered, held, ham_held, bad_delivered = con.execute(
                    f"""SELECT count(*) FILTER (v.action IN ('deliver', 'tag')),
                               count(*) FILTER (v.action IN ('quarantine', 'reject')),
                               count(*) FILTER (v.action IN ('quarantine', 'reject') AND m.category = 'ham'),
                               count(*) FILTER (v.action IN ('deliver', 'tag') AND m.category <> 'ham')
                        FROM ({sql}) v JOIN messages m ON m.dataset = v.dataset AND m.msg_key = v.msg_key"""
                ).fetchall()[0]
            r.echo(f"  {path.name:<24} {delivered:>9} {held:>5} {ham_held:>8} {bad_delivered:>13}")
    r.echo("  (ham held: legitimate mail stopped; bad delivered: spam, phishing or malware let through)")


def compile_packs(r: Run) -> None:
    """Compile and sign every example rules file, as an analyst would before deploying."""
    from edrules.pack import build_pack, generate_keypair, load_pack, write_pack
    from edrules.rules.parse import parse_rules_file

    keys = r.packs / "keys"
    private, public = keys / "edrules-pack.key", keys / "edrules-pack.pub"
    if not private.exists():
        keys.mkdir(parents=True, exist_ok=True)
        private, public = generate_keypair(keys)
        r.echo(f"  new demo signing key: {private} (public: {public})")
    for path in sorted(r.rules.glob("*.yaml")):
        out = r.packs / f"{path.stem}.json"
        pack = build_pack(parse_rules_file(path), source_bytes=path.read_bytes(), private_key_path=private)
        write_pack(pack, out)
        loaded = load_pack(out, pubkey_path=public)  # what the gateway does: refuse what does not verify
        r.echo(f"  {out}  pack '{loaded.name}' signed by {loaded.signed_by}")


def whatif_report(r: Run) -> None:
    """The story's answer: what the aligned From-policy would change against today's policy."""
    from edrules.workbench.cli import render_text
    from edrules.workbench.core import Workbench

    before, after = r.packs / "current.json", r.packs / "fix-aligned.json"
    if not (before.exists() and after.exists()):
        r.echo(f"  needs {before.name} and {after.name} in {r.packs}")
        return
    with Workbench(r.db, dataset="demo") as wb:
        public = r.packs / "keys" / "edrules-pack.pub"
        diff = wb.whatif(wb.pack(before, pubkey_path=public), wb.pack(after, pubkey_path=public))
        for line in render_text(diff, limit=10).splitlines():
            r.echo(f"  {line}")


def gateway_run(r: Run) -> None:
    """The demo tenant's mail through the gateway runtime (the milter's own decision code),
    filling the quarantine the dashboards show; the current pack is deployed for the tenant."""
    from edrules.support.demo_site import DEMO_MAILBOX_PORT, prepare_demo_site

    prepare_demo_site(state_dir(r.db), db=r.db, pack=r.packs / "current.json", keys=r.packs / "keys",
                      tenant=r.tenant, next_hop=f"127.0.0.1:{DEMO_MAILBOX_PORT}", echo=r.echo)


def state_dir(db: Path) -> Path:
    """The demo gateway's and web server's state (quarantine, accounts), next to the dataset."""
    return Path(db).parent / "state"


STEPS: tuple[Step, ...] = (
    Step("tenant", "demo tenant (edrules synth)", ensure_tenant),
    Step("sample", "ingest data/sample -> dataset 'sample'", ingest_sample),
    Step("tenant-ingest", "ingest the demo tenant -> dataset 'demo'", ingest_tenant),
    Step("quarantine", "ingest the gateway's quarantine export -> dataset 'demo-quarantine'", ingest_quarantine),
    Step("summary", "dataset summary (recipients per message label)", print_summary),
    Step("rules", "example rules over the demo tenant (recipients)", compare_rules),
    Step("packs", "compile and sign the example packs", compile_packs),
    Step("whatif", "what-if: current policy -> aligned From-policy, per recipient", whatif_report),
    Step("gateway", "the demo tenant's mail through the gateway runtime -> quarantine", gateway_run),
)


def run_demo(db: str | Path, *, sample: str | Path = DATA / "sample", tenant: str | Path = DATA / "demo-tenant",
             rules: str | Path = DATA / "rules", packs: str | Path | None = None,
             echo: Callable[[str], None] = click.echo,
             jobs: int | None = None, steps: tuple[Step, ...] = STEPS) -> Run:
    packs = Path(packs) if packs is not None else Path(db).parent / "packs"
    r = Run(Path(db), Path(sample), Path(tenant), Path(rules), packs, echo, jobs)
    r.db.parent.mkdir(parents=True, exist_ok=True)
    for i, step in enumerate(steps, 1):
        echo(f"[{i}/{len(steps)}] {step.title}")
        step.run(r)
    return r


@click.command("demo")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=DATA / "edrules.duckdb",
              show_default="data/edrules.duckdb", help="DuckDB file to create or extend.")
@click.option("--tenant", type=click.Path(file_okay=False, path_type=Path), default=DATA / "demo-tenant",
              show_default="data/demo-tenant", help="Demo tenant folder (generated when missing).")
@click.option("--sample", type=click.Path(file_okay=False, path_type=Path), default=DATA / "sample",
              show_default="data/sample", help="Bundled sample folder.")
@click.option("--rules", type=click.Path(file_okay=False, path_type=Path), default=DATA / "rules",
              show_default="data/rules", help="Rules files to compare over the demo tenant.")
@click.option("--jobs", type=int, default=None, help="Ingest worker processes (default: all cores).")
@click.option("--serve/--no-serve", default=False, show_default=True,
              help="Afterwards serve the dashboards with Voila on 127.0.0.1 until Ctrl-C.")
@click.option("--port", type=int, default=8866, show_default=True, help="Dashboard port (with --serve).")
def demo(db: Path, tenant: Path, sample: Path, rules: Path, jobs: int | None, serve: bool, port: int) -> None:
    """Generate the demo tenant if missing, ingest it and the bundled sample, compile the example
    packs, print the what-if report; optionally serve the dashboards."""
    run_demo(db, sample=sample, tenant=tenant, rules=rules, jobs=jobs)
    if serve:
        serve_dashboards(db, port)


def serve_dashboards(db: Path, port: int) -> None:
    """`edrules serve` on loopback behind login, with the demo's downstream mailbox running."""
    from edrules.server.demo import serve_demo
    from edrules.support.demo_site import DEMO_MAILBOX_PORT, DemoMailbox

    state = state_dir(db)
    try:
        mailbox = DemoMailbox(state)
        mailbox.__enter__()
    except OSError as exc:
        mailbox = None
        click.echo(f"warning: the demo mailbox cannot listen on 127.0.0.1:{DEMO_MAILBOX_PORT} ({exc.strerror}); "
                   "releases and e-mailed codes will fail until it can", err=True)
    if mailbox is not None:
        click.echo(f"demo mailbox on 127.0.0.1:{DEMO_MAILBOX_PORT}: released mail and sign-in codes "
                   f"are filed in {mailbox.folder}")
    try:
        serve_demo(state, db=db, dashboards=DATA.parent / "dashboards", port=port,
                   smtp=("127.0.0.1", DEMO_MAILBOX_PORT), echo=click.echo)
    except KeyboardInterrupt:
        pass
    finally:
        if mailbox is not None:
            mailbox.__exit__(None, None, None)
