"""Gateway.process without SMTP (what the milter and `edrules demo` share), pack reload, the
milter CLI's refusals, metrics, and the no-pandas/duckdb rule for the runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from components import free_port
from postfix import make_keys, make_pack, require_pymilter

from edrules.auth.resolver import ZoneResolver
from edrules.errors import EdrulesError
from edrules.facts import Action
from edrules.runtime.gateway import Gateway, Outcome
from edrules.runtime.metrics import Metrics
from edrules.runtime.reload import PackHolder

ROOT = Path(__file__).resolve().parent.parent
TENANT = ROOT / "data" / "demo-tenant"
RULES = """name: unit
from_policy: aligned
actions:
  block: reject
  spam: tag
allow:
  - sender: DoNotReply@someotpsite.cz
    via: amazonses
    id: otp
block:
  - domain: rejected.example
    id: no-rejected
"""
ZONE = '$ORIGIN friend.example.\n@ IN TXT "v=spf1 ip4:192.0.2.10 -all"\n'


class FailingStore:
    def list(self, **kw):
        return []

    def add(self, *a, **kw):
        raise OSError(28, "No space left on device")


@pytest.fixture()
def keys(tmp_path):
    return make_keys(tmp_path / "keys")


@pytest.fixture()
def pack(tmp_path, keys):
    return make_pack(RULES, tmp_path / "pack.json", keys[0], version="7")


def gateway(tmp_path, pack, keys, **kw) -> Gateway:
    kw.setdefault("resolver", ZoneResolver.from_text(ZONE))
    return Gateway(pack, keys[1], tmp_path / "state", authserv_id="mx.unit.test", **kw)


def msg(frm="alice@friend.example", extra="", body="hi\r\n") -> bytes:
    return (f"From: {frm}\r\nTo: bob@corp.test\r\nSubject: s\r\nMessage-ID: <1@x>\r\n{extra}\r\n{body}").encode()


def test_clean_mail_is_accepted_with_our_ar_and_verdict_and_forged_copies_of_our_id_removed(tmp_path, pack, keys):
    g = gateway(tmp_path, pack, keys)
    raw = msg(extra="Authentication-Results: mx.unit.test; dmarc=pass\r\n"
                    "Authentication-Results: other.example; spf=pass\r\n"
                    "X-EDRules-Verdict: deliver; forged\r\n")
    d = g.process(raw, mail_from="alice@friend.example", rcpts=["<Bob@Corp.test>"], client_ip="192.0.2.10",
                  helo="mail.friend.example", queue_id="Q1")
    assert d.outcome is Outcome.ACCEPT and d.error is None
    assert d.remove_headers == (("X-EDRules-Verdict", 1), ("Authentication-Results", 1))
    (ar_name, ar), (vname, verdict) = d.add_headers
    assert ar_name == "Authentication-Results" and ar.startswith("mx.unit.test;")
    assert "spf=pass smtp.mailfrom=alice@friend.example" in ar
    assert verdict == "deliver; category=clean; rule=default; pack=unit/7"
    assert [r.recipient for r in d.recipients] == ["bob@corp.test"]
    rec = d.log_record()
    assert rec["queue_id"] == "Q1" and rec["recipients"][0]["action"] == "deliver" and rec["ms"] >= 0


def test_every_recipient_rejected_gives_550_with_the_rule_id(tmp_path, pack, keys):
    g = gateway(tmp_path, pack, keys)
    d = g.process(msg("x@rejected.example"), mail_from="x@rejected.example", rcpts=["a@corp.test", "b@corp.test"],
                  client_ip="192.0.2.99", helo="h")
    assert d.outcome is Outcome.REJECT
    code, xcode, text = d.reply
    assert (code, xcode) == ("550", "5.7.1") and "no-rejected" in text and "%" not in text


def test_a_store_that_fails_makes_the_message_tempfail_never_lost(tmp_path, pack, keys):
    g = gateway(tmp_path, pack, keys, store=FailingStore())
    # strict? no: aligned, and the From is not aligned-authenticated -> forgery -> quarantine
    d = g.process(msg("ceo@corp.test"), mail_from="x@elsewhere.example", rcpts=["bob@corp.test"],
                  client_ip="192.0.2.99", helo="h")
    assert d.outcome is Outcome.TEMPFAIL and d.reply[0] == "451" and "No space left" in d.error


def test_a_gateway_never_starts_on_a_tampered_or_unsigned_pack(tmp_path, pack, keys):
    doc = json.loads(pack.read_text())
    doc["policy"]["block"] = []
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    with pytest.raises(EdrulesError, match="modified after signing"):
        gateway(tmp_path, tampered, keys)
    unsigned = make_pack(RULES, tmp_path / "unsigned.json", None)
    with pytest.raises(EdrulesError, match="unsigned"):
        gateway(tmp_path, unsigned, keys)


@pytest.mark.parametrize("which", ["tampered", "unsigned"])
def test_the_milter_command_refuses_a_bad_pack_with_exit_2_and_one_line(tmp_path, pack, keys, which):
    if which == "tampered":
        bad = tmp_path / "bad.json"
        bad.write_text(pack.read_text().replace('"no-rejected"', '"gone"'))
        expect = "pack signature does not match its content"
    else:
        bad = make_pack(RULES, tmp_path / "bad.json", None)
        expect = "pack is unsigned"
    out = subprocess.run([sys.executable, "-m", "edrules.cli", "milter", "--pack", str(bad), "--pubkey", str(keys[1]),
                          "--listen", f"unix:{tmp_path}/m.sock", "--state", str(tmp_path / "st")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0] and str(bad) in lines[0]
    assert "Traceback" not in out.stderr


def test_reload_keeps_the_old_pack_on_a_bad_file_and_swaps_to_a_good_one(tmp_path, pack, keys):
    holder = PackHolder(pack, keys[1], tmp_path / "state")
    old = holder.current
    pack.write_text(pack.read_text().replace('"unit"', '"evil"'))
    r = holder.check_files()
    assert r is not None and not r.ok and "modified after signing" in r.error
    assert holder.current is old
    make_pack(RULES.replace("name: unit", "name: unit2"), pack, keys[0], version="8")
    r = holder.check_files()
    assert r.ok and r.changed and holder.current.name == "unit2" and holder.current.version == "8"
    assert holder.check_files() is None  # nothing changed since


def test_upstream_authentication_results_count_only_from_a_trusted_authserv_id(tmp_path, pack, keys):
    raw = (TENANT / "ham" / "20250901-060412-0008-ses_otp.eml").read_bytes()
    env = dict(mail_from="0100019903e03f60-e2b7c6ad-f11d-3bdd-794d-fcf0b5995099-000000@amazonses.com",
               rcpts=["martin.kral@northwind-traders.cz"], client_ip="10.0.0.5", helo="relay.internal")
    trusted = gateway(tmp_path, pack, keys, trusted_authserv=["mx1.northwind-traders.cz"], resolver=None)
    d = trusted.process(raw, **env)
    assert d.recipients[0].verdict.rule_id == "otp" and d.outcome is Outcome.ACCEPT
    # Without trust, our own checks run: from 10.0.0.5 SPF fails, but both DKIM signatures verify.
    own = gateway(tmp_path, pack, keys, resolver=ZoneResolver.from_file(TENANT / "zone.txt"))
    d2 = own.process(raw, **env)
    assert d2.facts.spf == "fail" and {x.d for x in d2.facts.dkim if x.result == "pass"} == {
        "amazonses.com", "someotpsite.cz"}
    assert d2.facts.bulk_provider == "amazonses" and d2.recipients[0].verdict.rule_id == "otp"


def test_scanner_headers_set_the_category_only_when_a_scanner_is_configured(tmp_path, pack, keys):
    raw = msg(extra="X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=9.1\r\n"
                    "Received: from a by mx.corp.test with SMTP id 1; Mon, 1 Sep 2025 08:00:00 +0000\r\n")
    env = dict(mail_from="alice@friend.example", rcpts=["bob@corp.test"], client_ip="192.0.2.10", helo="h")
    plain = gateway(tmp_path, pack, keys).process(raw, **env)
    assert plain.recipients[0].action is Action.DELIVER and plain.facts.category is None
    scanned = gateway(tmp_path, pack, keys, scanner="spamassassin").process(raw, **env)
    assert scanned.recipients[0].action is Action.TAG and scanned.add_headers[1][1].startswith("tag; category=spam")


def test_metrics_endpoint_counts_messages_verdicts_and_tempfails(tmp_path, pack, keys):
    m = Metrics()
    port = free_port()
    m.serve("127.0.0.1", port)
    try:
        g = gateway(tmp_path, pack, keys, metrics=m, store=FailingStore())
        env = dict(rcpts=["bob@corp.test"], client_ip="192.0.2.10", helo="h")
        g.process(msg(), mail_from="alice@friend.example", **env)
        g.process(msg("ceo@corp.test"), mail_from="x@elsewhere.example", **env)
        g.packs.reload("test")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        m.close()
    assert 'edrules_messages_total{outcome="accept"} 1.0' in text
    assert 'edrules_messages_total{outcome="tempfail"} 1.0' in text
    assert 'edrules_verdicts_total{action="deliver",category="clean"} 1.0' in text
    assert 'edrules_tempfails_total{reason="internal-error"} 1.0' in text
    assert 'edrules_reloads_total{result="ok",trigger="test"} 1.0' in text
    assert 'edrules_pack_loaded_timestamp_seconds{name="unit",version="7"}' in text


def test_the_release_header_name_is_the_one_release_signs():
    from edrules.runtime import gateway as gw
    from edrules.runtime.release import RELEASE_HEADER

    assert gw._RELEASE_HEADER == RELEASE_HEADER


def test_importing_the_runtime_and_the_milter_never_imports_pandas_or_duckdb():
    code = ("import sys, edrules.runtime, edrules.runtime.gateway, edrules.runtime.reload, "
            "edrules.runtime.status, edrules.runtime.metrics, edrules.runtime.milter_cli, edrules.runtime.store, "
            "edrules.runtime.release\n"
            "try:\n import edrules.runtime.milter\nexcept ImportError as e:\n assert 'Milter' in str(e), e\n"
            "from edrules.auth import authenticate\n"
            "bad = sorted(m for m in ('pandas', 'duckdb', 'pyarrow') if m in sys.modules)\n"
            "assert not bad, bad\nprint('clean')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "clean", out.stderr


def test_trusting_a_quarantined_sender_reaches_the_gateway_through_the_overrides_file(tmp_path, keys):
    from edrules.runtime.overrides import Overrides, trust_item

    rules = ("name: strict-unit\nfrom_policy: strict\n")
    pack = make_pack(rules, tmp_path / "strict.json", keys[0], version="1")
    zone = '$ORIGIN partner.example.\n@ IN TXT "v=spf1 ip4:192.0.2.10 -all"\n'
    g = gateway(tmp_path, pack, keys, resolver=ZoneResolver.from_text(zone))
    env = dict(mail_from="partner@partner.example", rcpts=["bob@corp.test", "carol@corp.test"],
               client_ip="192.0.2.10", helo="mail.partner.example")
    first = g.process(msg("ceo@corp.test"), **env)
    assert [a.action for a in first.recipients] == [Action.QUARANTINE, Action.QUARANTINE]
    item = first.recipients[0].item_id
    choice = trust_item(g.store, Overrides(tmp_path / "state"), item, "support@corp.test", "cli")
    assert choice.via == "partner.example" and choice.scope == "user:bob@corp.test"
    r = g.packs.check_files()  # the milter's watcher does this every second
    assert r.ok and r.changed and g.packs.current.overrides == 1
    again = g.process(msg("ceo@corp.test", body="again\r\n"), **env)
    assert {a.recipient: (a.action, a.verdict.rule_id) for a in again.recipients} == {
        "bob@corp.test": (Action.DELIVER, f"override:{choice.entry_id}"),
        "carol@corp.test": (Action.QUARANTINE, "from_policy:strict")}


def test_a_message_retried_under_a_new_queue_id_is_held_once(tmp_path, pack, keys):
    # After a crash between the store write and the 250, the client resends the same bytes and
    # Postfix gives them a new queue id.
    g = gateway(tmp_path, pack, keys)
    env = dict(mail_from="x@elsewhere.example", rcpts=["bob@corp.test"], client_ip="192.0.2.99", helo="h")
    a = g.process(msg("ceo@corp.test"), queue_id="AAA1", **env)
    b = g.process(msg("ceo@corp.test"), queue_id="BBB2", **env)
    assert a.outcome is b.outcome is Outcome.DISCARD
    assert [i.id for i in a.quarantined] == [i.id for i in b.quarantined]
    assert g.store.count(state=None) == 1
    # Once released, the same bytes arriving again are a new arrival and are held again.
    g.store.mark_released(a.quarantined[0].id, "t", "cli")
    c = g.process(msg("ceo@corp.test"), queue_id="CCC3", **env)
    assert g.store.count(state=None) == 2 and c.quarantined[0].id != a.quarantined[0].id


def test_listen_addresses_are_postfix_spelling_and_anything_else_is_a_clear_error():
    require_pymilter()
    from edrules.runtime.milter import Listen

    assert Listen.parse("unix:/run/edrules/milter.sock").libmilter == "unix:/run/edrules/milter.sock"
    assert Listen.parse("inet:127.0.0.1:8891").libmilter == "inet:8891@127.0.0.1"
    assert str(Listen.parse("inet:[::1]:8891")) == "inet:::1:8891"
    for bad in ("127.0.0.1:8891", "inet:127.0.0.1", "unix:", "tcp:x:1"):
        with pytest.raises(EdrulesError, match="--listen must be unix:PATH or inet:HOST:PORT"):
            Listen.parse(bad)


def test_the_demo_tenant_replays_through_the_gateway_with_its_recorded_envelope(tmp_path, keys):
    from edrules.runtime.gateway import recorded_envelope

    pack = make_pack((ROOT / "data" / "rules" / "current.yaml").read_text(), tmp_path / "cur.json", keys[0])
    g = Gateway(pack, keys[1], tmp_path / "state", trusted_authserv=["mx1.northwind-traders.cz"])
    raw = (TENANT / "ham" / "20250901-060412-0008-ses_otp.eml").read_bytes()
    env = recorded_envelope(raw, "mx1.northwind-traders.cz")
    assert env.rcpts == ("martin.kral@northwind-traders.cz",) and env.client_ip == "54.240.76.106"
    d = g.process(raw, mail_from=env.mail_from, rcpts=env.rcpts, client_ip=env.client_ip, helo=env.helo)
    # ticket 4711: the allow entry names the From, but strict compares the envelope (amazonses.com)
    assert d.outcome is Outcome.DISCARD and d.recipients[0].verdict.rule_id == "from_policy:strict"
    (item,) = d.quarantined
    assert g.store.get(item.id).recipient == "martin.kral@northwind-traders.cz"
