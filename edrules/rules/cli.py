"""`edrules pack ...`: thin click wrappers over edrules.pack (compile, sign, verify)."""

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

