"""Rule packs: canonical round trip, Ed25519 signing, and refusal of unsigned/tampered/newer packs."""

from __future__ import annotations

import json
import os
from dataclasses import replace
import stat
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cli_run import edrules as _edrules, one_line_error as _one_line_error
from edrules.cli import cli
from edrules.errors import EdrulesError
from edrules.facts import Action
from edrules.pack import (
    FORMAT_VERSION,
    build_pack,
    canonical_json,
    generate_keypair,
    load_pack,
    policy_from_dict,
    policy_to_dict,
    write_pack,
)
from edrules.rules.model import (
    BulkPolicy,
    Entry,
    EntryKind,
    FromPolicy,
    ListKind,
    Policy,
    ProviderDef,
    Scope,
    ScopeKind,
    Via,
    ViaKind,
)
from edrules.rules.parse import parse_rules

SEED = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "seed_example" / "otp-headers-pasted.txt"
RULES = b"""name: seed
allow:
  - sender: DoNotReply@someotpsite.cz
    via: amazonses
    id: otp
"""
CREATED = datetime(2026, 11, 28, 7, 0, tzinfo=timezone.utc)


@pytest.fixture()
def keys(tmp_path):
    return generate_keypair(tmp_path / "keys")


def _signed(tmp_path, keys, **kw) -> Path:
    doc = build_pack(parse_rules(RULES.decode()), source_bytes=RULES, private_key_path=keys[0],
                     created=CREATED, **kw)
    path = tmp_path / "pack.json"
    write_pack(doc, path)
    return path


# -- canonical policy dict ----------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)
domains = st.builds(lambda a, b: f"{a}.{b}", names, st.sampled_from(["example", "cz", "co.uk"]))
entries = st.builds(
    lambda i, lst, kind, dom, sub, via, scope, comment, exp: Entry(
        id=f"e{i}", list=lst, kind=kind,
        value={EntryKind.SENDER: f"x@{dom}", EntryKind.DOMAIN: dom, EntryKind.IP: "192.0.2.0/24"}[kind],
        subdomains=sub and kind is EntryKind.DOMAIN,
        via=None if kind is EntryKind.IP else via, scope=scope, comment=comment, expires=exp,
        line=i + 1,
    ),
    st.integers(0, 10_000), st.sampled_from(ListKind), st.sampled_from(EntryKind), domains, st.booleans(),
    st.one_of(st.none(), st.builds(Via, st.just(ViaKind.PROVIDER), st.just("amazonses")),
              st.builds(Via, st.just(ViaKind.DOMAIN), domains),
              st.builds(Via, st.just(ViaKind.CIDR), st.just("2001:db8::/32"))),
    st.one_of(st.just(Scope()), st.builds(Scope, st.just(ScopeKind.DOMAIN), domains),
              st.builds(lambda d: Scope(ScopeKind.USER, f"u@{d}"), domains)),
    st.one_of(st.none(), st.text(max_size=20)),
    st.one_of(st.none(), st.dates(date(2000, 1, 1), date(2100, 1, 1))),
)
policies = st.builds(
    lambda name, mode, bulk, actions, allow, block, relays, enforce: Policy(
        name=name, from_policy=mode, bulk_mailers=bulk,
        actions={**Policy(name="d").actions, **actions},
        inbound_relays=relays, inbound_enforce=enforce,
        allow=tuple(replace(e, list=ListKind.ALLOW) for e in allow),
        block=tuple(replace(e, list=ListKind.BLOCK) for e in block),
        providers={"amazonses": ProviderDef("amazonses", ("amazonses.com",), ("amazonses.com",))},
    ),
    names, st.sampled_from(FromPolicy),
    st.dictionaries(st.sampled_from(["amazonses", "sendgrid"]), st.sampled_from([BulkPolicy.ALLOW, BulkPolicy.BLOCK])),
    st.dictionaries(st.sampled_from(["spam", "phishing", "block"]), st.sampled_from(Action)),
    st.lists(entries, max_size=5), st.lists(entries, max_size=5),
    st.lists(st.sampled_from(["192.0.2.0/24", "2001:db8::/32"]), max_size=2).map(tuple), st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(policies)
def test_policy_dict_round_trips_through_canonical_json(policy):
    data = json.loads(canonical_json(policy_to_dict(policy)))
    back = policy_from_dict(data)
    assert back == policy
    assert canonical_json(policy_to_dict(back)) == canonical_json(policy_to_dict(policy))


def test_a_malformed_compiled_policy_is_a_clear_error_not_a_key_error():
    with pytest.raises(EdrulesError, match="malformed compiled policy"):
        policy_from_dict({"name": "x", "allow": [{"kind": "sender"}], "actions": {}, "retention_days": {}})


# -- build, sign, load --------------------------------------------------------------------


def test_a_signed_pack_carries_every_documented_field_and_loads_with_the_trusted_key(tmp_path, keys):
    path = _signed(tmp_path, keys, metadata={"ticket": "4711"})
    doc = json.loads(path.read_bytes())
    assert {"format", "format_version", "name", "created", "source_sha256", "catalog_version",
            "policy", "metadata", "signer", "signature"} <= set(doc)
    assert doc["format_version"] == FORMAT_VERSION and doc["created"] == "2026-11-28T07:00:00Z"
    loaded = load_pack(path, pubkey_path=keys[1])
    assert loaded.name == "seed" and loaded.metadata == {"ticket": "4711"}
    assert loaded.created == CREATED
    import hashlib

    assert loaded.source_sha256 == hashlib.sha256(RULES).hexdigest()
    assert loaded.signed_by == doc["signer"]["key_id"] and loaded.signed_by.startswith("ed25519:")
    assert loaded.policy == parse_rules(RULES.decode())


def test_pack_bytes_are_canonical_and_reproducible(tmp_path, keys):
    a = _signed(tmp_path, keys).read_bytes()
    b = _signed(tmp_path, keys).read_bytes()
    assert a == b  # Ed25519 signatures are deterministic
    assert a == canonical_json(json.loads(a)) + b"\n"


@pytest.mark.parametrize("edit", [
    lambda d: d["policy"]["allow"][0].__setitem__("value", "attacker@evil.example"),
    lambda d: d["policy"].__setitem__("from_policy", "relaxed"),
    lambda d: d["metadata"].__setitem__("ticket", "9999"),
    lambda d: d.__setitem__("created", "2030-01-01T00:00:00Z"),
], ids=["entry value", "from_policy", "metadata", "created"])
def test_a_pack_modified_after_signing_is_refused(tmp_path, keys, edit):
    path = _signed(tmp_path, keys, metadata={"ticket": "4711"})
    doc = json.loads(path.read_bytes())
    edit(doc)
    path.write_text(json.dumps(doc, indent=2))
    for kw in ({"pubkey_path": keys[1]}, {}, {"allow_unsigned": True}):
        with pytest.raises(EdrulesError, match="modified after signing"):
            load_pack(path, **kw)


def test_a_pack_re_signed_by_another_key_is_refused_when_the_trusted_key_is_given(tmp_path, keys):
    other = generate_keypair(tmp_path / "other")
    path = _signed(tmp_path, other)
    with pytest.raises(EdrulesError, match="not by the trusted key"):
        load_pack(path, pubkey_path=keys[1])
    assert load_pack(path).signed_by is not None  # integrity alone still holds


def test_an_unsigned_pack_loads_only_when_explicitly_allowed(tmp_path):
    path = tmp_path / "dev.json"
    write_pack(build_pack(parse_rules(RULES.decode()), source_bytes=RULES), path)
    with pytest.raises(EdrulesError, match="pack is unsigned"):
        load_pack(path)
    loaded = load_pack(path, allow_unsigned=True)
    assert loaded.signed_by is None and loaded.policy.allow[0].id == "otp"


def test_a_newer_format_version_is_refused_with_an_upgrade_message(tmp_path, keys):
    path = _signed(tmp_path, keys)
    doc = json.loads(path.read_bytes())
    doc["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(doc))
    with pytest.raises(EdrulesError, match=r"newer than this edrules supports \(1\); upgrade"):
        load_pack(path, pubkey_path=keys[1])


def test_a_pack_with_a_repeated_key_is_refused_even_if_the_signature_holds(tmp_path, keys):
    path = _signed(tmp_path, keys)
    raw = path.read_bytes()
    # Smuggle a second "policy" in front: Python's json keeps the last (signed) one, other
    # readers may keep the first; either way the pack must not load.
    evil = raw.replace(b'{"catalog_version"', b'{"policy":{"name":"evil"},"catalog_version"', 1)
    path.write_bytes(evil)
    with pytest.raises(EdrulesError, match="pack repeats the key 'policy'"):
        load_pack(path, pubkey_path=keys[1])


@pytest.mark.parametrize("content,message", [
    (b"{not json", "not valid JSON"),
    (b'{"format": "something-else"}', "not an edrules rule pack"),
    (b'{"format": "edrules-pack"}', "no integer format_version"),
])
def test_files_that_are_not_packs_are_refused_clearly(tmp_path, content, message):
    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(EdrulesError, match=message) as info:
        load_pack(path, allow_unsigned=True)
    assert info.value.location.file == str(path)


def test_keygen_writes_a_private_key_only_its_owner_can_read_and_never_overwrites(tmp_path):
    priv, pub = generate_keypair(tmp_path)
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert b"PUBLIC KEY" in pub.read_bytes()
    with pytest.raises(EdrulesError, match="refusing to overwrite"):
        generate_keypair(tmp_path)


# -- command line -------------------------------------------------------------------------


def test_pack_keygen_compile_verify_on_the_command_line(tmp_path):
    runner = CliRunner()
    rules = tmp_path / "rules.yaml"
    rules.write_bytes(RULES)
    r = runner.invoke(cli, ["pack", "keygen", "--dir", str(tmp_path / "k")], catch_exceptions=False)
    assert r.exit_code == 0
    key, pub = tmp_path / "k" / "edrules-pack.key", tmp_path / "k" / "edrules-pack.pub"
    out = tmp_path / "p.json"
    r = runner.invoke(cli, ["pack", "compile", str(rules), "-o", str(out), "--key", str(key),
                            "--meta", "ticket=4711"], catch_exceptions=False)
    assert r.exit_code == 0 and "1 entries, signed by ed25519:" in r.output
    r = runner.invoke(cli, ["pack", "verify", str(out), "--pubkey", str(pub)], catch_exceptions=False)
    assert r.exit_code == 0 and "signed by the trusted key" in r.output
    assert load_pack(out, pubkey_path=pub).metadata == {"ticket": "4711"}


def test_cli_refuses_bad_rules_and_tampered_packs_with_exit_code_2(tmp_path, keys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("from_policy: loose\nbulk_mailers: {amazonsess: allow}\n")
    edrules = [sys.executable, "-m", "edrules.cli"]
    r = subprocess.run([*edrules, "pack", "compile", str(bad), "-o", str(tmp_path / "o.json")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and not (tmp_path / "o.json").exists()
    assert f"{bad}:1 (from_policy)" in r.stderr and "did you mean amazonses?" in r.stderr
    path = _signed(tmp_path, keys)
    path.write_bytes(path.read_bytes().replace(b"donotreply", b"donotreplx"))
    r = subprocess.run([*edrules, "pack", "verify", str(path)], capture_output=True, text=True)
    assert r.returncode == 2 and "modified after signing" in r.stderr


@pytest.mark.skipif(not SEED.exists(), reason="corpus seed example not present")
def test_explain_prints_the_forgery_sentence_for_the_seed_message(tmp_path, keys):
    rules = tmp_path / "seed.yaml"
    rules.write_text("allow:\n  - sender: DoNotReply@someotpsite.cz\n")
    out = tmp_path / "seed.json"
    runner = CliRunner()
    runner.invoke(cli, ["pack", "compile", str(rules), "-o", str(out), "--key", str(keys[0])],
                  catch_exceptions=False)
    r = runner.invoke(cli, ["explain", "--pack", str(out), "--pubkey", str(keys[1]),
                            "--trust-authserv", "inbound10.exchangedefender.com", str(SEED)],
                      catch_exceptions=False)
    assert r.exit_code == 0
    text = " ".join(r.output.split())  # the words, whatever the line wrapping (lines fit 100 columns)
    assert ("quarantined as forgery: header From someotpsite.cz does not match the envelope sender "
            "amazonses.com under the strict From-policy") in text
    assert "'via: amazonses'" in text  # the hint names the safe fix
    r = runner.invoke(cli, ["explain", "--json", "--pack", str(out), "--pubkey", str(keys[1]),
                            "--trust-authserv", "inbound10.exchangedefender.com", "-"],
                      input=SEED.read_bytes(), catch_exceptions=False)
    doc = json.loads(r.output)
    (v,) = doc["verdicts"]
    assert (v["recipient"], v["action"], v["category"], v["rule_id"]) == (
        "demo@exchangedefenderdemo.com", "quarantine", "forgery", "from_policy:strict")
    assert doc["facts"]["header_from"] == "donotreply@someotpsite.cz"


def test_every_pack_and_explain_command_and_option_is_documented():
    from edrules.rules.cli import pack
    from edrules.workbench.cli_explain import explain

    doc = (Path(__file__).resolve().parent.parent / "docs" / "rules.md").read_text(encoding="utf-8")
    cli_section = doc.split("## Command line", 1)[1]
    commands = [(f"edrules pack {name}", cmd) for name, cmd in pack.commands.items()]
    commands.append(("edrules explain", explain))
    for title, cmd in commands:
        assert title in cli_section, title
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert opt in cli_section, f"{title} {opt}"


# -- hostile pack documents: one located line, never an internal error ----------------------


def test_a_pack_whose_signer_is_a_list_is_a_located_error(tmp_path, keys):
    path = _signed(tmp_path, keys)
    doc = json.loads(path.read_bytes())
    doc["signer"] = [doc["signer"]]
    path.write_text(json.dumps(doc))
    with pytest.raises(EdrulesError, match="'signer' must be an object"):
        load_pack(path)
    _one_line_error(_edrules("pack", "verify", str(path)), str(path), "signer")


def test_a_pack_nested_a_hundred_thousand_levels_deep_is_a_located_error(tmp_path):
    path = tmp_path / "deep.json"
    depth = 100_000
    path.write_text('{"format": "edrules-pack", "format_version": 1, "policy": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(EdrulesError, match="nested too deeply"):
        load_pack(path, allow_unsigned=True)
    _one_line_error(_edrules("pack", "verify", str(path), "--allow-unsigned"), str(path), "nested too deeply")


def test_a_verify_mismatch_names_the_fingerprint_of_the_key_actually_embedded(tmp_path, keys):
    other = generate_keypair(tmp_path / "other")
    path = _signed(tmp_path, other)
    doc = json.loads(path.read_bytes())
    real = doc["signer"]["key_id"]
    # key_id is outside what an attacker must keep consistent: claim the trusted key's id.
    (tmp_path / "t").mkdir()
    trusted_id = load_pack(_signed(tmp_path / "t", keys)).signed_by
    doc["signer"]["key_id"] = trusted_id
    path.write_text(json.dumps(doc))
    err = _one_line_error(_edrules("pack", "verify", str(path), "--pubkey", str(keys[1])), "not by the trusted key")
    assert f"signed by {real}," in err and err.count(trusted_id) == 1
