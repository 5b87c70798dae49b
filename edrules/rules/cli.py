"""`edrules pack ...` and `edrules explain`: thin click wrappers over edrules.pack and the runtime."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edrules.errors import EdrulesError


@click.group()
def pack() -> None:
    """Compile, sign and verify rule packs."""


@pack.command()
@click.option("--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Where to write edrules-pack.key (0600) and edrules-pack.pub.")
def keygen(directory: str) -> None:
    """Create an Ed25519 key pair for signing packs."""
    from edrules.pack import generate_keypair

    priv, pub = generate_keypair(directory)
    click.echo(f"private key: {priv}\npublic key:  {pub}")


@pack.command()
@click.argument("rules", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Pack file to write.")
@click.option("--key", type=click.Path(exists=True, dir_okay=False),
              help="Ed25519 private key (PEM); without it the pack is unsigned (development only).")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Signed metadata, repeatable.")
def compile(rules: str, output: str, key: str | None, meta: tuple[str, ...]) -> None:  # noqa: A001
    """Validate RULES.yaml and write a (signed) rule pack."""
    from edrules.pack import build_pack, write_pack
    from edrules.rules.parse import parse_rules

    source = Path(rules).read_bytes()
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError:
        raise EdrulesError(f"rules file is not UTF-8 in {rules}") from None
    policy = parse_rules(text, source=rules)
    metadata = {}
    for item in meta:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--meta")
        metadata[k] = v
    doc = build_pack(policy, source_bytes=source, private_key_path=key, metadata=metadata)
    write_pack(doc, output)
    n = len(policy.allow) + len(policy.block)
    signed = f"signed by {doc['signer']['key_id']}" if key else "UNSIGNED (development only)"
    click.echo(f"{output}: pack '{policy.name}', {n} entries, {signed}")


@pack.command()
@click.argument("pack_file", metavar="PACK.json", type=click.Path(exists=True, dir_okay=False))
@click.option("--pubkey", type=click.Path(exists=True, dir_okay=False),
              help="Trusted public key; without it only integrity (not the signer) is checked.")
@click.option("--allow-unsigned", is_flag=True, help="Accept an unsigned pack (development only).")
def verify(pack_file: str, pubkey: str | None, allow_unsigned: bool) -> None:
    """Check a pack's format and signature; exits non-zero when it must not be loaded."""
    from edrules.pack import load_pack

    loaded = load_pack(pack_file, pubkey_path=pubkey, allow_unsigned=allow_unsigned)
    p = loaded.policy
    if loaded.signed_by is None:
        trust = "UNSIGNED (accepted for development)"
    elif pubkey:
        trust = f"signature valid, signed by the trusted key {loaded.signed_by}"
    else:
        trust = (f"signature valid for the embedded key {loaded.signed_by} "
                 f"(pass --pubkey to check who signed it)")
    click.echo(
        f"{pack_file}: OK\n  name: {loaded.name}\n  created: {loaded.created.isoformat()}\n"
        f"  source sha256: {loaded.source_sha256}\n  from_policy: {p.from_policy}\n"
        f"  entries: {len(p.allow)} allow, {len(p.block)} block\n"
        f"  metadata: {json.dumps(loaded.metadata, sort_keys=True, ensure_ascii=False)}\n  {trust}"
    )


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
    from edrules.backends.cli import _parse_now
    from edrules.domains import normalize_ip
    from edrules.ingest.readers import read_message_file
    from edrules.rules.explain import WIDTH, explain_facts, explain_message, load_policy

    if client_ip is not None and normalize_ip(client_ip) is None:
        raise EdrulesError(f"--client-ip is not an IP address: {client_ip!r}")
    given = _parse_now(now_text)
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
