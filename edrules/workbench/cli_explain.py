"""`edrules explain`: the facts of one message (a file, or a stored one with --db), its verdict
per recipient, and why; a thin click wrapper over edrules.backends.explain and the Workbench."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edrules.errors import EdrulesError


@click.command()
@click.argument("message", metavar="FILE.eml|-|KEY")
@click.option("--db", "db", type=click.Path(dir_okay=False), default=None,
              help="Explain a stored message: MESSAGE is its key (or the 12-character prefix reports print).")
@click.option("--dataset", default=None, help="With --db: the dataset the key belongs to.")
@click.option("--now", "now_text", default=None,
              help="Evaluation date for entry expiry (YYYY-MM-DD; with --db default: as whatif).")
@click.option("--pack", "pack_file", type=click.Path(exists=True, dir_okay=False),
              help="Rule pack (.json) or rules file (.yaml); without it the default policy (strict, no entries).")
@click.option("--pubkey", type=click.Path(exists=True, dir_okay=False), help="Trusted pack public key.")
@click.option("--allow-unsigned", is_flag=True, help="Accept an unsigned pack (development only).")
@click.option("--trusted-authserv", "trusted_authserv", multiple=True, metavar="ID",
              help="Authserv-id whose Authentication-Results are trusted (repeatable), as in ingest.")
@click.option("--trust-authserv", "trust_authserv_old", multiple=True, hidden=True)  # old spelling
@click.option("--mail-from", default=None, help="Envelope sender as the MTA saw it ('' for <>).")
@click.option("--rcpt", multiple=True, help="Envelope recipient (repeatable); default: from headers.")
@click.option("--client-ip", default=None, help="Connecting client IP as the MTA saw it.")
@click.option("--helo", default=None, help="HELO/EHLO name as the MTA saw it.")
@click.option("--category", default=None, help="Upstream scanner category: malware, phishing, spam, ham.")
@click.option("--json", "as_json", is_flag=True, help="Print facts, verdicts and trace as JSON.")
def explain(message: str, db: str | None, dataset: str | None, now_text: str | None,
            pack_file: str | None, pubkey: str | None, allow_unsigned: bool,
            trusted_authserv: tuple[str, ...], trust_authserv_old: tuple[str, ...],
            mail_from: str | None, rcpt: tuple[str, ...], client_ip: str | None, helo: str | None,
            category: str | None, as_json: bool) -> None:
    """Show the facts of one message, the verdict per recipient, and why.

    MESSAGE is a file (or - for stdin), or with --db the key of a stored message.
    """
    from edrules.workbench.cli_evaluate import parse_now
    from edrules.domains import normalize_ip
    from edrules.ingest.readers import read_message_file
    from edrules.backends.explain import WIDTH, explain_facts, explain_message, load_policy

    if client_ip is not None and normalize_ip(client_ip) is None:
        raise EdrulesError(f"--client-ip is not an IP address: {client_ip!r}")
    given = parse_now(now_text)
    given = given.replace(tzinfo=None) if given else None
    if db is not None:
        from edrules.workbench.core import Workbench

        if any((mail_from is not None, rcpt, client_ip, helo, category, trusted_authserv, trust_authserv_old)):
            raise click.UsageError("with --db the stored facts are explained: --mail-from, --rcpt, "
                                   "--client-ip, --helo, --category and --trusted-authserv do not apply")
        policy = load_policy(pack_file, pubkey_path=pubkey, allow_unsigned=allow_unsigned)
        with Workbench(db, dataset=dataset, now=given) as wb:
            facts = wb.facts_of(message)
            report = explain_facts(facts, policy, now=wb.now, now_line=wb.now_used.describe())
    else:
        if message != "-" and not Path(message).exists():
            raise EdrulesError(f"cannot read message: no such file {message} "
                               "(a stored message's key needs --db FILE)")
        data = read_message_file(message)
        report = explain_message(
            data, source=message, pack_path=pack_file, pubkey_path=pubkey,
            allow_unsigned=allow_unsigned, trusted_authserv_ids=trusted_authserv + trust_authserv_old,
            envelope_from=mail_from, recipients=list(rcpt) or None, client_ip=client_ip, helo=helo,
            category=category, now=given,
        )
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        click.echo(report.to_text(width=WIDTH))
