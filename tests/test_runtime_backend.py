"""Runtime backend: every clause of docs/rules.md "Semantics" on hand-built facts."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from edrules.backends.runtime import IntervalIndex, RuntimeEvaluator, cidr_range, ip_to_int
from edrules.domains import address_domain, normalize_address, normalize_domain, org_domain
from edrules.facts import DkimSignatureResult, MessageFacts
from edrules.rules.parse import parse_rules

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


def facts(
    header_from: str | None = "news@brand.example",
    envelope_from: str | None = "bounce@brand.example",
    *,
    rcpt: tuple[str, ...] = ("alice@corp.example",),
    dkim: tuple[tuple[str, str], ...] = (),
    helo: str | None = None,
    **kw,
) -> MessageFacts:
    """Facts the way ingest normalises them (domains and org domains derived once)."""
    hf = normalize_address(header_from)
    ef = normalize_address(envelope_from)
    hfd, efd = address_domain(hf), address_domain(ef)
    h = normalize_domain(helo)
    return MessageFacts(
        msg_key="m1",
        header_from=hf,
        header_from_domain=hfd,
        header_from_org=org_domain(hfd),
        envelope_from=ef,
        envelope_from_domain=efd,
        envelope_from_org=org_domain(efd),
        helo=h,
        helo_org=org_domain(h),
        dkim=tuple(DkimSignatureResult(d, "s1", r, org_domain(d)) for d, r in dkim),
        recipients=rcpt,
        **kw,
    )


def verdicts(rules: str, f: MessageFacts, now: datetime = NOW):
    return RuntimeEvaluator(parse_rules(rules)).evaluate(f, now)


def one(rules: str, f: MessageFacts, now: datetime = NOW) -> tuple[str, str, str | None]:
    (v,) = verdicts(rules, f, now)
    return str(v.action), v.category, v.rule_id


SES = dict(
    header_from="DoNotReply@someotpsite.cz",
    envelope_from="0100abc@amazonses.com",
    helo="a77-69.smtp-out.amazonses.com",
    client_ip="54.240.77.69",
    spf="pass",
    bulk_provider="amazonses",
)

# -- decision order -----------------------------------------------------------------------


def test_clean_mail_with_matching_from_and_envelope_is_delivered_by_the_default_step():
    assert one("name: t", facts()) == ("deliver", "clean", "default")


def test_inbound_enforcement_rejects_a_client_outside_the_relays_before_anything_else():
    rules = "inbound: {relays: [192.0.2.0/24], enforce: true}\nallow: [{ip: 203.0.113.9}]"
    assert one(rules, facts(client_ip="203.0.113.9", category="malware")) == (
        "reject", "inbound", "inbound:relays")
    assert one(rules, facts(client_ip="192.0.2.7"))[1] == "clean"


def test_inbound_enforcement_fails_closed_when_the_client_ip_is_unknown():
    rules = "inbound: {relays: [192.0.2.0/24], enforce: true}"
    assert one(rules, facts(client_ip=None))[1] == "inbound"


def test_relays_without_enforce_reject_nothing():
    assert one("inbound: {relays: [192.0.2.0/24]}", facts(client_ip="203.0.113.9"))[1] == "clean"


def test_malware_is_never_delivered_by_an_allow_entry():
    rules = "allow: [{sender: bounce@brand.example}, {ip: 198.51.100.0/24}, {domain: brand.example}]"
    f = facts(client_ip="198.51.100.1", category="malware")
    assert one(rules, f) == ("quarantine", "malware", "category:malware")
    assert one(rules + "\nactions: {malware: reject}", f)[0] == "reject"


def test_block_beats_allow_and_matches_the_unauthenticated_header_from_in_strict_mode():
    rules = "allow: [{sender: bounce@brand.example}]\nblock: [{sender: news@brand.example, id: no-news}]"
    assert one(rules, facts()) == ("quarantine", "block", "no-news")


def test_allow_entry_delivers_before_bulk_forgery_and_category_steps():
    rules = "bulk_mailers: {amazonses: block}\nallow: [{sender: 0100abc@amazonses.com}]"
    assert one(rules, facts(**SES, category="spam")) == ("deliver", "allow", "allow[0]")


def test_bulk_block_applies_before_forgery():
    assert one("bulk_mailers: {ses: block}\nactions: {bulk: reject}", facts(**SES)) == (
        "reject", "bulk", "bulk:amazonses")


def test_phishing_and_spam_take_their_configured_actions():
    rules = "actions: {spam: tag, phishing: reject}"
    assert one(rules, facts(category="spam")) == ("tag", "spam", "category:spam")
    assert one(rules, facts(category="phishing")) == ("reject", "phishing", "category:phishing")
    assert one(rules, facts(category="ham"))[1] == "clean"


def test_a_message_without_recipients_has_no_verdicts():
    assert verdicts("name: t", facts(rcpt=())) == []


# -- From-policy modes --------------------------------------------------------------------

ALLOW_SEED = "allow: [{sender: DoNotReply@someotpsite.cz}]\n"


def test_seed_case_is_a_forgery_under_strict_even_with_the_header_from_allow_listed():
    v = verdicts(ALLOW_SEED, facts(**SES))[0]
    assert (str(v.action), v.category, v.rule_id) == ("quarantine", "forgery", "from_policy:strict")
    assert v.reason == ("header From someotpsite.cz does not match the envelope sender "
                        "amazonses.com under the strict From-policy")


def test_strict_allow_entries_match_the_envelope_sender_only():
    rules = "allow: [{domain: amazonses.com}]"
    assert one(rules, facts(**SES)) == ("deliver", "allow", "allow[0]")


def test_aligned_trusts_the_header_from_when_an_aligned_dkim_signature_passes():
    f = facts(**SES, dkim=(("someotpsite.cz", "pass"), ("amazonses.com", "pass")))
    assert one("from_policy: aligned\n" + ALLOW_SEED, f) == ("deliver", "allow", "allow[0]")


def test_aligned_does_not_trust_a_header_from_whose_only_dkim_pass_is_the_providers():
    f = facts(**SES, dkim=(("amazonses.com", "pass"),))
    assert one("from_policy: aligned\n" + ALLOW_SEED, f) == (
        "quarantine", "forgery", "from_policy:aligned")


def test_aligned_header_allow_requires_header_ok_even_with_aligned_auth():
    f = facts(**SES, dkim=(("someotpsite.cz", "pass"),), dmarc="fail", dmarc_policy="reject")
    assert one("from_policy: aligned\n" + ALLOW_SEED, f)[1] != "allow"


def test_aligned_matches_the_envelope_sender_only_when_spf_passed():
    rules = "from_policy: aligned\nallow: [{domain: brand.example}]"
    assert one(rules, facts(header_from="x@other.example", spf="pass"))[1] == "allow"
    assert one(rules, facts(header_from="x@other.example", spf="softfail"))[1] == "forgery"


def test_aligned_with_no_authentication_facts_at_all_is_a_forgery():
    # Missing facts make each comparison false, so aligned_auth is false, not unknown.
    assert one("from_policy: aligned", facts()) == ("quarantine", "forgery", "from_policy:aligned")


def test_aligned_counts_spf_pass_aligned_with_the_from_organisational_domain():
    f = facts(header_from="a@mail.brand.example", envelope_from="b@bounce.brand.example", spf="pass")
    assert one("from_policy: aligned", f)[1] == "clean"


def test_relaxed_trusts_the_header_from_as_written():
    assert one("from_policy: relaxed\n" + ALLOW_SEED, facts(**SES)) == ("deliver", "allow", "allow[0]")


def test_relaxed_still_treats_a_dmarc_fail_under_p_reject_as_forgery_and_ignores_the_allow():
    f = facts(**SES, dmarc="fail", dmarc_policy="reject")
    assert one("from_policy: relaxed\n" + ALLOW_SEED, f) == ("quarantine", "forgery", "from_policy:relaxed")
    assert one("from_policy: relaxed", facts(**{**SES, "spf": None}, dmarc="fail", dmarc_policy="none"))[1] == "clean"


def test_a_dmarc_fail_under_an_enforcing_policy_is_a_forgery_in_every_mode():
    f = facts(dmarc="fail", dmarc_policy="quarantine")  # From and envelope share the organisation
    for mode in ("strict", "aligned", "relaxed"):
        assert one(f"from_policy: {mode}", f) == ("quarantine", "forgery", f"from_policy:{mode}")
    assert one("name: t", facts(dmarc="fail", dmarc_policy="none"))[1] == "clean"


def test_an_allow_entry_on_the_envelope_does_not_deliver_a_message_its_organisation_disowned():
    f = facts(dmarc="fail", dmarc_policy="reject", spf="pass")
    for mode in ("strict", "aligned", "relaxed"):
        rules = f"from_policy: {mode}\nallow: [{{sender: bounce@brand.example}}, {{domain: brand.example}}]"
        assert one(rules, f)[1] == "forgery"


def test_an_allow_entry_on_another_organisations_envelope_survives_a_dmarc_fail():
    # A mailing list re-sending a p=reject author: allowing the list is a local override.
    f = facts("author@strict.example", "owner@lists.example", dmarc="fail", dmarc_policy="reject")
    assert one("allow: [{domain: lists.example}]", f) == ("deliver", "allow", "allow[0]")
    assert one("name: t", f)[1] == "forgery"


def test_an_invalid_from_is_a_forgery_in_every_mode():
    for mode in ("strict", "aligned", "relaxed"):
        f = facts(from_invalid=True, dmarc="pass")
        assert one(f"from_policy: {mode}", f) == ("quarantine", "forgery", f"from_policy:{mode}")


def test_null_sender_uses_the_helo_domain_for_the_strict_comparison():
    f = facts(envelope_from="", helo="mta1.brand.example")
    assert one("name: t", f)[1] == "clean"
    f = facts(envelope_from="", helo="mx.attacker.example")
    assert one("name: t", f)[1] == "forgery"


def test_sender_and_domain_entries_never_match_the_helo_of_a_null_sender():
    f = facts(envelope_from="", helo="mta1.brand.example")
    assert one("allow: [{domain: brand.example, subdomains: true}]", f)[1] == "clean"


# -- bulk-mailer allow and pairs ----------------------------------------------------------


def test_bulk_allow_exempts_forgery_only_when_the_provider_is_authenticated():
    rules = "bulk_mailers: {amazonses: allow}"
    assert one(rules, facts(**SES)) == ("deliver", "clean", "default")
    forged = facts(**{**SES, "spf": "fail"})
    assert one(rules, forged) == ("quarantine", "forgery", "from_policy:strict")
    by_dkim = facts(**{**SES, "spf": "fail"}, dkim=(("amazonses.com", "pass"),))
    assert one(rules, by_dkim)[1] == "clean"


def test_provider_suffixes_are_label_wise_so_lookalike_domains_do_not_authenticate():
    rules = "bulk_mailers: {amazonses: allow}"
    f = facts(**{**SES, "envelope_from": "x@evilamazonses.com"}, dkim=(("evilamazonses.com", "pass"),))
    assert one(rules, f)[1] == "forgery"


def test_pair_via_provider_delivers_only_through_the_authenticated_network():
    rules = "allow: [{sender: DoNotReply@someotpsite.cz, via: amazonses, id: otp}]"
    assert one(rules, facts(**SES)) == ("deliver", "allow", "otp")
    # Same header From from elsewhere: no pair match, still a forgery.
    elsewhere = facts(**{**SES, "envelope_from": "x@mailer.attacker.example", "bulk_provider": None})
    assert one(rules, elsewhere)[1] == "forgery"
    # HELO alone never authenticates a provider.
    helo_only = facts(**{**SES, "spf": "fail"})
    assert one(rules, helo_only)[1] == "forgery"


def test_pair_refuses_a_header_from_that_fails_dmarc_under_an_enforcing_policy():
    rules = "allow: [{sender: DoNotReply@someotpsite.cz, via: amazonses}]"
    f = facts(**SES, dmarc="fail", dmarc_policy="quarantine")
    assert one(rules, f)[1] == "forgery"


def test_pair_via_domain_accepts_spf_for_the_envelope_domain_or_a_dkim_signature():
    rules = "allow: [{domain: someotpsite.cz, via: amazonses.com}]"
    assert one(rules, facts(**SES))[1] == "allow"
    assert one(rules, facts(**{**SES, "spf": "none"}, dkim=(("amazonses.com", "pass"),)))[1] == "allow"
    assert one(rules, facts(**{**SES, "spf": "none"}, dkim=(("amazonses.com", "fail"),)))[1] == "forgery"


def test_pair_via_cidr_needs_the_client_ip_inside_it():
    rules = "allow: [{sender: DoNotReply@someotpsite.cz, via: 54.240.64.0/18}]"
    assert one(rules, facts(**SES))[1] == "allow"
    assert one(rules, facts(**{**SES, "client_ip": "203.0.113.5"}))[1] == "forgery"


def test_block_pair_matches_only_through_the_named_network():
    rules = "block: [{domain: someotpsite.cz, via: amazonses}]"
    assert one(rules, facts(**SES))[1] == "block"
    assert one(rules, facts(**{**SES, "spf": "fail"}))[1] == "forgery"


# -- entry matching -----------------------------------------------------------------------


def test_domain_entries_never_match_a_lookalike_and_subdomains_only_when_asked():
    exact = "allow: [{domain: example.com}]"
    subs = "allow: [{domain: example.com, subdomains: true}]"
    assert one(exact, facts("a@evilexample.com", "a@evilexample.com"))[1] == "clean"
    assert one(subs, facts("a@evilexample.com", "a@evilexample.com"))[1] == "clean"
    assert one(exact, facts("a@mail.example.com", "a@mail.example.com"))[1] == "clean"
    assert one(subs, facts("a@mail.example.com", "a@mail.example.com"))[1] == "allow"
    assert one(subs, facts("a@example.com", "a@example.com"))[1] == "allow"


def test_an_exact_domain_entry_stays_exact_when_other_entries_ask_for_subdomains():
    rules = "block: [{domain: example.com}, {domain: other.example, subdomains: true}]"
    assert one(rules, facts("a@mail.example.com", "a@mail.example.com"))[1] == "clean"
    assert one(rules, facts("a@x.other.example", "a@x.other.example"))[2] == "block[1]"


def test_cidr_entries_match_ipv4_and_ipv6_and_the_first_entry_in_file_order_wins():
    rules = """
allow:
  - {ip: 10.0.0.0/8, id: wide}
  - {ip: 10.1.0.0/16, id: narrow}
  - {ip: "2001:db8::/32", id: v6}
block:
  - {ip: 10.1.2.3, id: host}
"""
    assert one(rules, facts(client_ip="10.9.9.9"))[2] == "wide"
    assert one(rules, facts(client_ip="10.1.9.9"))[2] == "wide"
    assert one(rules, facts(client_ip="10.1.2.3")) == ("quarantine", "block", "host")
    assert one(rules, facts(client_ip="2001:db8::1"))[2] == "v6"
    assert one(rules, facts(client_ip="2001:db9::1"))[1] == "clean"
    assert one(rules, facts(client_ip=None))[1] == "clean"


def test_first_matching_entry_in_file_order_decides_across_kinds():
    rules = "allow: [{ip: 192.0.2.1, id: by-ip}, {sender: bounce@brand.example, id: by-sender}]"
    assert one(rules, facts(client_ip="192.0.2.1"))[2] == "by-ip"
    rules = "allow: [{sender: bounce@brand.example, id: by-sender}, {ip: 192.0.2.1, id: by-ip}]"
    assert one(rules, facts(client_ip="192.0.2.1"))[2] == "by-sender"


def test_expired_entries_are_ignored_and_an_entry_is_valid_through_its_expiry_date():
    rules = "allow: [{sender: bounce@brand.example, expires: 2026-06-01}]\nblock: [{domain: brand.example, expires: 2026-05-31}]"
    assert one(rules, facts(category="spam"), now=datetime(2026, 6, 1, 23, 59, tzinfo=timezone.utc))[1] == "allow"
    assert one(rules, facts(category="spam"), now=datetime(2026, 6, 2, tzinfo=timezone.utc))[1] == "spam"


def test_scopes_give_each_recipient_its_own_verdict_in_recipient_order():
    rules = """
allow:
  - {sender: bounce@brand.example, scope: "user:bob@corp.example", id: bob}
  - {sender: bounce@brand.example, scope: "domain:partner.example", id: partner}
block:
  - {domain: brand.example, scope: "user:carol@corp.example", id: carol}
"""
    rcpt = ("alice@corp.example", "bob@corp.example", "carol@corp.example", "dave@partner.example")
    vs = verdicts(rules, facts(rcpt=rcpt, category="spam"))
    assert [(v.recipient, v.category, v.rule_id) for v in vs] == [
        ("alice@corp.example", "spam", "category:spam"),
        ("bob@corp.example", "allow", "bob"),
        ("carol@corp.example", "block", "carol"),
        ("dave@partner.example", "allow", "partner"),
    ]


def test_scoped_cidr_entries_apply_only_to_their_recipients_and_file_order_spans_scopes():
    rules = """
allow:
  - {ip: 192.0.2.0/24, scope: "user:bob@corp.example", id: bob-net}
  - {ip: 192.0.2.0/28, scope: "domain:partner.example", id: partner-net}
  - {ip: 192.0.2.7, id: host}
"""
    rcpt = ("alice@corp.example", "bob@corp.example", "dave@partner.example")
    vs = verdicts(rules, facts(rcpt=rcpt, client_ip="192.0.2.7"))
    assert [v.rule_id for v in vs] == ["host", "bob-net", "partner-net"]
    vs = verdicts(rules, facts(rcpt=rcpt, client_ip="192.0.2.100"))
    assert [v.rule_id for v in vs] == ["default", "bob-net", "default"]


def test_many_users_allowing_the_same_sender_each_get_their_own_entry():
    entries = "\n".join(f"  - {{sender: news@brand.example, scope: 'user:u{i}@corp.example', id: u{i}}}"
                         for i in range(500))
    vs = verdicts("allow:\n" + entries, facts("news@brand.example", "news@brand.example",
                                                rcpt=("u499@corp.example", "u7@corp.example", "x@corp.example")))
    assert [v.rule_id for v in vs] == ["u499", "u7", "default"]


def test_a_scoped_entry_earlier_in_the_file_beats_a_later_global_one():
    rules = """
allow:
  - {domain: brand.example, scope: "domain:corp.example", id: scoped}
  - {domain: brand.example, id: global}
"""
    vs = verdicts(rules, facts(rcpt=("a@corp.example", "b@other.example")))
    assert [v.rule_id for v in vs] == ["scoped", "global"]


def test_every_verdict_carries_a_trace_of_the_evidence_it_used():
    v = verdicts("allow: [{sender: DoNotReply@someotpsite.cz, via: amazonses}]", facts(**SES))[0]
    steps = {t.step: t.detail for t in v.trace}
    assert "allow" in steps and "amazonses" in steps["via"]


def test_the_runtime_module_and_every_rules_module_import_neither_pandas_nor_duckdb():
    # Every module under edrules/rules/, found on disk (tests/test_layers.py checks the same
    # statically, naming the import that would pull them in).
    code = ("import sys, pkgutil, importlib, edrules.backends.runtime, edrules.pack, edrules.rules as r\n"
            "mods = [m.name for m in pkgutil.walk_packages(r.__path__, 'edrules.rules.')]\n"
            "[importlib.import_module(m) for m in mods]\n"
            "print(len(mods), sorted(m for m in ('pandas', 'duckdb', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n, _, heavy = out.stdout.strip().partition(" ")
    assert int(n) >= 3 and heavy == "[]", out.stdout


# -- CIDR interval index against a brute-force reference ----------------------------------

v4_nets = st.builds(
    lambda a, p: ipaddress.ip_network((a, p), strict=False),
    st.integers(0, 2**32 - 1), st.integers(0, 32),
)
v6_nets = st.builds(
    lambda a, p: ipaddress.ip_network((a, p), strict=False),
    st.integers(0, 2**128 - 1), st.integers(0, 128),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(v4_nets, v6_nets), max_size=12), st.lists(st.one_of(
    st.integers(0, 2**32 - 1).map(lambda i: str(ipaddress.IPv4Address(i))),
    st.integers(0, 2**128 - 1).map(lambda i: str(ipaddress.IPv6Address(i))),
), max_size=12))
def test_interval_index_finds_exactly_the_covering_cidrs(nets, ips):
    idx = IntervalIndex((*cidr_range(str(n)), pos) for pos, n in enumerate(nets))
    for n in nets:  # probe the edges too
        ips = [*ips, str(n.network_address), str(n.broadcast_address)]
    for ip in ips:
        addr = ipaddress.ip_address(ip)
        expected = tuple(i for i, n in enumerate(nets) if n.version == addr.version and addr in n)
        assert idx.lookup(ip_to_int(ip)) == expected


# -- hostile facts --------------------------------------------------------------------------

_text = st.one_of(st.none(), st.text(max_size=12), st.sampled_from(
    ["", "a@b.example", "B.Example", "example.com.", "xn--bcher-kva.example", "::1", "10.0.0.1", "pass", "fail"]))
hostile_facts = st.builds(
    MessageFacts,
    msg_key=st.just("h"),
    header_from=_text, header_from_domain=_text, header_from_org=_text, from_invalid=st.booleans(),
    envelope_from=_text, envelope_from_domain=_text, envelope_from_org=_text,
    client_ip=st.one_of(_text, st.sampled_from(["2001:db8::1", "192.0.2.1", "999.1.1.1", "fe80::1%eth0"])),
    helo=_text, helo_org=_text,
    spf=st.sampled_from([None, "pass", "fail", "softfail", "none", "garbage"]),
    dkim=st.lists(st.builds(DkimSignatureResult, _text, _text, st.sampled_from(["pass", "fail", ""]), _text),
                  max_size=3).map(tuple),
    dmarc=st.sampled_from([None, "pass", "fail", "none"]),
    dmarc_policy=st.sampled_from([None, "none", "quarantine", "reject", "REJECT"]),
    bulk_provider=st.sampled_from([None, "amazonses", "sendgrid", "unknown"]),
    category=st.sampled_from([None, "malware", "phishing", "spam", "ham", "weird"]),
    recipients=st.lists(st.one_of(st.text(max_size=8), st.just("a@corp.example")), max_size=3).map(tuple),
)
HOSTILE_RULES = parse_rules("""
from_policy: aligned
bulk_mailers: {amazonses: allow, sendgrid: block}
inbound: {relays: [192.0.2.0/24, "2001:db8::/32"]}
allow:
  - {domain: b.example, subdomains: true, scope: "domain:corp.example"}
  - {sender: a@b.example, via: amazonses}
  - {domain: b.example, via: 10.0.0.0/8, expires: 2026-01-01}
  - {ip: "::/0"}
block:
  - {domain: example.com, subdomains: true}
  - {sender: a@b.example, via: b.example, scope: "user:a@corp.example"}
  - {ip: 0.0.0.0/0}
""")


@settings(max_examples=300, deadline=None)
@given(hostile_facts)
def test_the_runtime_never_crashes_and_answers_every_recipient_in_order(f):
    vs = RuntimeEvaluator(HOSTILE_RULES).evaluate(f, NOW)
    assert [v.recipient for v in vs] == list(f.recipients)
    for v in vs:
        assert v.category in ("malware", "block", "allow", "bulk", "forgery", "phishing", "spam", "clean")
        assert v.rule_id and v.reason and v.trace


# -- the indices against a plain scan of docs/rules.md ------------------------------------
# A deliberately naive reference: every entry checked in file order with the table's
# predicates. It shares no code with the runtime's indices, so an index bug shows here.

from datetime import timedelta  # noqa: E402

from edrules.rules.model import (  # noqa: E402
    Entry, EntryKind, ListKind, Policy, ProviderDef, Scope, ScopeKind, Via, ViaKind,
)

SES_DEF = ProviderDef("amazonses", ("amazonses.com",), ("amazonses.com",))


def _under(x, d):
    return bool(x) and (x == d or x.endswith("." + d))


def _ip_in(ip, cidr):
    if not ip:
        return False
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)
    except (ValueError, TypeError):
        return False


def reference_entry(policy: Policy, f: MessageFacts, rcpt: str, allow: bool):
    null = f.envelope_from == ""
    env_org = f.helo_org if null else f.envelope_from_org
    env_domain = f.helo if null else f.envelope_from_domain
    hfo = f.header_from_org
    fail = f.dmarc == "fail" and f.dmarc_policy in ("quarantine", "reject")
    header_ok = not f.from_invalid and not fail
    env_ok = not (fail and env_org is not None and env_org == hfo)
    spf = f.spf == "pass"
    aligned = f.dmarc == "pass" or (spf and env_org is not None and env_org == hfo) or any(
        s.result == "pass" and hfo is not None and s.org == hfo for s in f.dkim)
    mode = str(policy.from_policy)
    rdomain = rcpt.rpartition("@")[2] if "@" in rcpt else None

    def infra(via: Via) -> bool:
        if via.kind is ViaKind.CIDR:
            return _ip_in(f.client_ip, via.value)
        if via.kind is ViaKind.DOMAIN:
            return (spf and _under(f.envelope_from_domain, via.value)) or any(
                s.result == "pass" and _under(s.d, via.value) for s in f.dkim)
        p = policy.providers[via.value]
        return (spf and any(_under(env_domain, x) for x in p.envelope_suffixes)) or any(
            s.result == "pass" and any(_under(s.d, x) for x in p.dkim_domains) for s in f.dkim)

    for e in (policy.allow if allow else policy.block):
        if e.expires is not None and e.expires < NOW.date():
            continue
        s = e.scope
        if not (s.kind is ScopeKind.GLOBAL or (s.kind is ScopeKind.DOMAIN and s.value == rdomain)
                or (s.kind is ScopeKind.USER and s.value == rcpt)):
            continue
        if e.kind is EntryKind.IP:
            if _ip_in(f.client_ip, e.value):
                return e.id
            continue

        def hit(x):
            return bool(x) and (x == e.value or (e.kind is EntryKind.DOMAIN and e.subdomains and x.endswith("." + e.value)))

        env_v = f.envelope_from if e.kind is EntryKind.SENDER else f.envelope_from_domain
        hdr_v = f.header_from if e.kind is EntryKind.SENDER else f.header_from_domain
        if e.via is not None:
            if header_ok and hit(hdr_v) and infra(e.via):
                return e.id
        elif not allow:
            if hit(env_v) or hit(hdr_v):
                return e.id
        else:
            env_trust = {"strict": env_ok, "aligned": spf and env_ok, "relaxed": env_ok}[mode]
            hdr_trust = {"strict": False, "aligned": header_ok and aligned, "relaxed": header_ok}[mode]
            if (env_trust and hit(env_v)) or (hdr_trust and hit(hdr_v)):
                return e.id
    return None


_dom = st.sampled_from(["a.example", "b.a.example", "c.b.a.example", "evila.example", "amazonses.com",
                        "mail.amazonses.com", "y.x.co.uk"])
_addr = st.builds(lambda d: f"info@{d}", _dom)
_cidr = st.sampled_from(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "0.0.0.0/0",
                         "2001:db8::/32", "2001:db8:1::/48", "::/0"])
_ip = st.sampled_from([None, "10.1.2.3", "10.1.9.9", "10.200.0.1", "192.0.2.1", "2001:db8:1::5", "2001:db9::1"])
_rcpts = ["a@corp.example", "b@corp.example", "c@other.example"]


@st.composite
def _entry(draw, i: int, lst: ListKind) -> Entry:
    kind = draw(st.sampled_from(list(EntryKind)))
    value = {EntryKind.SENDER: draw(_addr), EntryKind.DOMAIN: draw(_dom), EntryKind.IP: draw(_cidr)}[kind]
    via = None if kind is EntryKind.IP else draw(st.one_of(
        st.none(), st.none(), st.just(Via(ViaKind.PROVIDER, "amazonses")),
        st.builds(Via, st.just(ViaKind.DOMAIN), _dom), st.builds(Via, st.just(ViaKind.CIDR), _cidr)))
    scope = draw(st.sampled_from([Scope(), Scope(ScopeKind.DOMAIN, "corp.example"),
                                  Scope(ScopeKind.USER, "b@corp.example"), Scope(ScopeKind.USER, "c@other.example")]))
    expires = draw(st.sampled_from([None, None, NOW.date(), NOW.date() - timedelta(days=1)]))
    return Entry(f"{lst}{i}", lst, kind, value, subdomains=kind is EntryKind.DOMAIN and draw(st.booleans()),
                 via=via, scope=scope, expires=expires)


@st.composite
def _policy_and_facts(draw):
    allow = tuple(draw(_entry(i, ListKind.ALLOW)) for i in range(draw(st.integers(1, 10))))
    block = tuple(draw(_entry(i, ListKind.BLOCK)) for i in range(draw(st.integers(0, 5))))
    policy = Policy(name="p", from_policy=draw(st.sampled_from(["strict", "aligned", "relaxed"])),
                    allow=allow, block=block, providers={"amazonses": SES_DEF})
    hf = draw(st.one_of(st.none(), _addr, _addr))
    ef = draw(st.one_of(st.none(), st.just(""), _addr, st.just(hf), st.just(hf)))
    f = facts(hf, ef, rcpt=tuple(draw(st.lists(st.sampled_from(_rcpts), min_size=1, max_size=3))),
              dkim=tuple(draw(st.lists(st.tuples(_dom, st.sampled_from(["pass", "fail"])), max_size=2))),
              helo=draw(st.one_of(st.none(), _dom)), client_ip=draw(_ip),
              spf=draw(st.sampled_from([None, "pass", "pass", "fail"])),
              dmarc=draw(st.sampled_from([None, "pass", "fail", "fail"])),
              dmarc_policy=draw(st.sampled_from([None, "none", "reject", "reject"])),
              from_invalid=(draw(st.integers(0, 4)) == 0) if hf else True)
    return policy, f


@settings(max_examples=200, deadline=None)
@given(_policy_and_facts())
def test_the_indices_pick_the_same_entry_as_a_plain_scan_in_file_order(case):
    from edrules.rules.model import FromPolicy

    policy, f = case
    policy = Policy(**{**{k: getattr(policy, k) for k in ("name", "allow", "block", "providers")},
                       "from_policy": FromPolicy(policy.from_policy)})
    for v in RuntimeEvaluator(policy).evaluate(f, NOW):
        block = reference_entry(policy, f, v.recipient, allow=False)
        allow = reference_entry(policy, f, v.recipient, allow=True)
        if block is not None:
            assert (v.category, v.rule_id) == ("block", block)
        elif allow is not None:
            assert (v.category, v.rule_id) == ("allow", allow)
        else:
            assert v.category not in ("block", "allow"), v
