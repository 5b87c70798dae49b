"""Trust sender: a user-scope pair entry via the authenticated network, merged into evaluation."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edrules.backends.runtime import RuntimeEvaluator
from edrules.errors import EdrulesError
from edrules.facts import Action
from edrules.ingest.extract import facts_from_bytes
from edrules.ingest.trust import TrustConfig
from edrules.rules.parse import parse_rules
from edrules.runtime.overrides import Overrides
from edrules.runtime.store import QuarantinedRecipient, SqliteQuarantineStore

TRUST = TrustConfig(authserv_ids=frozenset({"gw.corp.test"}))
POLICY = parse_rules("name: acme\nfrom_policy: strict\n", source="acme.yaml")


def _raw(ar: str, subject: str = "Weekly news") -> bytes:
    head = f"Authentication-Results: gw.corp.test; {ar}\r\n" if ar else ""
    return (head + f"From: Brand <news@brand.example>\r\nTo: bob@corp.test\r\nSubject: {subject}\r\n"
            "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nHello.\r\n").encode()


def _facts(raw, *, envelope_from, client_ip, rcpts=("bob@corp.test",), category="spam"):
    f = facts_from_bytes(raw, envelope_from=envelope_from, recipients=list(rcpts), client_ip=client_ip,
                         helo="mx.example", trust=TRUST).facts
    return replace(f, category=category)  # as an upstream scanner header would set it


def _quarantine(store, raw, facts):
    [v] = RuntimeEvaluator(POLICY).evaluate(facts)
    assert v.action is Action.QUARANTINE
    return store.add(raw, [QuarantinedRecipient(facts.recipients[0], v.category, v.reason, v.rule_id)],
                     envelope_from=facts.envelope_from, client_ip=facts.client_ip, helo=facts.helo,
                     queue_id="Q1", pack_name="acme", pack_version="1", facts=facts)[0]


SENDGRID_AR = ("spf=pass smtp.mailfrom=bounces+1@em.sendgrid.net; dkim=pass header.d=sendgrid.net; "
               "dmarc=none header.from=brand.example")


def test_trusting_a_sender_seen_through_sendgrid_delivers_the_next_one_but_not_a_forgery(tmp_path):
    store = SqliteQuarantineStore(tmp_path)
    raw = _raw(SENDGRID_AR)
    item = _quarantine(store, raw, _facts(raw, envelope_from="bounces+1@em.sendgrid.net", client_ip="198.51.100.7"))
    ov = Overrides(tmp_path)
    choice = ov.trust(item, "bob@corp.test")
    assert (choice.sender, choice.via, choice.scope) == ("news@brand.example", "sendgrid", "user:bob@corp.test")
    merged = RuntimeEvaluator(ov.merged(POLICY))

    nxt_raw = _raw(SENDGRID_AR, "Next week")
    [v] = merged.evaluate(_facts(nxt_raw, envelope_from="bounces+2@em.sendgrid.net", client_ip="198.51.100.9"))
    assert (v.action, v.category, v.rule_id) == (Action.DELIVER, "allow", f"override:{choice.entry_id}")

    forged = _raw("spf=fail smtp.mailfrom=news@brand.example; dmarc=none header.from=brand.example")
    [f] = merged.evaluate(_facts(forged, envelope_from="news@brand.example", client_ip="203.0.113.66"))
    assert f.action is Action.QUARANTINE
    # another recipient's mail from the same sender is not affected by bob's decision
    [c] = merged.evaluate(_facts(nxt_raw, envelope_from="bounces+2@em.sendgrid.net", client_ip="198.51.100.9",
                                 rcpts=("carol@corp.test",)))
    assert c.action is Action.QUARANTINE


def test_without_a_provider_the_spf_passing_envelope_domain_is_the_via(tmp_path):
    store = SqliteQuarantineStore(tmp_path)
    ar = "spf=pass smtp.mailfrom=news@mail.brand.example; dmarc=pass header.from=brand.example"
    raw = _raw(ar)
    item = _quarantine(store, raw, _facts(raw, envelope_from="news@mail.brand.example", client_ip="192.0.2.5"))
    choice = Overrides(tmp_path).trust(item, "support")
    assert choice.via == "mail.brand.example"
    merged = RuntimeEvaluator(Overrides(tmp_path).merged(POLICY))
    [ok] = merged.evaluate(_facts(raw, envelope_from="news@mail.brand.example", client_ip="192.0.2.99"))
    assert ok.action is Action.DELIVER
    forged = _raw("spf=softfail smtp.mailfrom=news@mail.brand.example; dmarc=none header.from=brand.example")
    [bad] = merged.evaluate(_facts(forged, envelope_from="news@mail.brand.example", client_ip="203.0.113.66"))
    assert bad.action is Action.QUARANTINE


def test_with_no_authentication_at_all_the_client_ip_the_gateway_saw_is_the_via(tmp_path):
    store = SqliteQuarantineStore(tmp_path)
    raw = _raw("")
    item = _quarantine(store, raw, _facts(raw, envelope_from="news@brand.example", client_ip="192.0.2.5"))
    ov = Overrides(tmp_path)
    assert ov.trust(item, "support").via == "192.0.2.5/32"
    merged = RuntimeEvaluator(ov.merged(POLICY))
    assert merged.evaluate(_facts(raw, envelope_from="news@brand.example", client_ip="192.0.2.5"))[0].action is Action.DELIVER
    assert merged.evaluate(_facts(raw, envelope_from="news@brand.example", client_ip="192.0.2.6"))[0].action is Action.QUARANTINE
    nothing = replace(item, client_ip=None, auth=None)
    with pytest.raises(EdrulesError, match="bare From can be forged"):
        ov.trust(nothing, "support")


def test_overrides_round_trip_through_the_rules_parser_and_trusting_twice_adds_one_entry(tmp_path):
    store = SqliteQuarantineStore(tmp_path)
    raw = _raw(SENDGRID_AR)
    item = _quarantine(store, raw, _facts(raw, envelope_from="bounces+1@em.sendgrid.net", client_ip="198.51.100.7"))
    ov = Overrides(tmp_path)
    assert ov.trust(item, "bob").created and not ov.trust(item, "bob").created
    exported = ov.export_yaml()
    policy = parse_rules(exported, source="export.yaml")
    [e] = policy.allow
    assert (e.kind.value, e.value, e.via.kind.value, e.via.value, str(e.scope)) == (
        "sender", "news@brand.example", "provider", "sendgrid", "user:bob@corp.test")
    assert ov.entries()[0].value == e.value
    assert "sendgrid" in policy.providers
    assert ov.remove(e.id) and ov.entries() == ()


def test_a_hand_broken_overrides_file_is_reported_with_its_line(tmp_path):
    (tmp_path / "overrides.yaml").write_text("name: x\nallow:\n  - sender: not-an-address\n    via: sendgrid\n")
    with pytest.raises(EdrulesError) as e:
        Overrides(tmp_path).merged(POLICY)
    assert "overrides.yaml:3" in str(e.value)


def test_merging_no_overrides_returns_the_policy_unchanged(tmp_path):
    assert Overrides(tmp_path).merged(POLICY) is POLICY


def test_the_cli_trusts_an_item_and_lists_and_exports_the_override(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    store = SqliteQuarantineStore(tmp_path)
    raw = _raw(SENDGRID_AR)
    item = _quarantine(store, raw, _facts(raw, envelope_from="bounces+1@em.sendgrid.net", client_ip="198.51.100.7"))
    root = Path(__file__).resolve().parents[1]
    run = lambda *a: subprocess.run([sys.executable, "-m", "edrules.cli", *a], capture_output=True, text=True, cwd=root)
    t = run("quarantine", "trust", "--state", str(tmp_path), "--actor", "support@gw", item.id)
    assert t.returncode == 0, t.stderr
    assert "trusted: news@brand.example via sendgrid for user:bob@corp.test" in t.stdout
    listed = run("overrides", "list", "--state", str(tmp_path))
    assert f"trust-{item.id}: allow sender news@brand.example via sendgrid scope user:bob@corp.test" in listed.stdout
    out = tmp_path / "export.yaml"
    assert run("overrides", "export", "--state", str(tmp_path), "-o", str(out)).returncode == 0
    assert parse_rules(out.read_text(), source=str(out)).allow[0].via.value == "sendgrid"
    audit = store.audit_log(item_id=item.id)[-1]
    assert (audit.actor, audit.action, audit.how) == ("support@gw", "trust", "cli")


def test_a_message_the_from_domains_dmarc_disowns_cannot_be_trusted(tmp_path):
    store = SqliteQuarantineStore(tmp_path)
    raw = _raw("spf=pass smtp.mailfrom=x@em.sendgrid.net; dkim=pass header.d=sendgrid.net; "
               "dmarc=fail (p=reject) header.from=brand.example")
    facts = replace(_facts(raw, envelope_from="x@em.sendgrid.net", client_ip="198.51.100.7"), dmarc="fail",
                    dmarc_policy="reject")
    item = _quarantine(store, raw, facts)
    with pytest.raises(EdrulesError, match=r"DMARC policy \(p=reject\) disowns this message"):
        Overrides(tmp_path).trust(item, "bob")
    assert not (tmp_path / "overrides.yaml").exists()
