"""Authentication results at ingest: which headers are believed, and that they are read right."""

from __future__ import annotations

from pathlib import Path

import authres
import duckdb

from edrules.ingest import TrustConfig, facts_from_bytes, ingest_paths, read_facts
from edrules.ingest.authheaders import (
    NO_AUTHSERV_ID,
    normalize_result,
    parse_authentication_results,
    parse_received_spf,
)
from edrules.ingest.headers import split_header_block
from edrules.ingest.pipeline import units_of
from edrules.ingest.readers import Unit, read_unit_bytes

TRUSTED = TrustConfig(authserv_ids=frozenset({"mx.example.org"}))
EDGE = b"Received: from out.sender.example (out.sender.example [198.51.100.4]) by mx.example.org; Thu, 1 Jan 2026 00:00:01 +0000\r\n"
BODY = b"From: a@sender.example\r\nTo: u@example.org\r\nSubject: s\r\n\r\nhi\r\n"


def test_results_from_a_trusted_authserv_id_are_used():
    raw = (b"Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=b@sender.example;\r\n"
           b" dkim=pass header.d=sender.example header.s=s1; dmarc=pass (p=REJECT) header.from=sender.example\r\n"
           + EDGE + BODY)
    f = facts_from_bytes(raw, trust=TRUSTED).facts
    assert (f.spf, f.spf_domain, f.dmarc, f.dmarc_policy, f.authserv_id) == (
        "pass", "sender.example", "pass", "reject", "mx.example.org")
    assert [(d.d, d.s, d.result) for d in f.dkim] == [("sender.example", "s1", "pass")]


def test_results_from_an_untrusted_authserv_id_are_ignored():
    raw = b"Authentication-Results: attacker.example; spf=pass; dkim=pass header.d=bank.example; dmarc=pass\r\n" + EDGE + BODY
    f = facts_from_bytes(raw, trust=TRUSTED).facts
    assert (f.spf, f.dkim, f.dmarc, f.authserv_id) == (None, (), None, None)


def test_a_forged_header_with_a_trusted_id_below_the_outside_hop_is_ignored():
    forged_hop = b"Received: from x (x [203.0.113.7]) by out.sender.example; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
    raw = (b"Authentication-Results: mx.example.org; spf=fail smtp.mailfrom=sender.example\r\n" + EDGE + forged_hop
           + b"Authentication-Results: mx.example.org; dmarc=pass header.from=bank.example\r\n" + BODY)
    f = facts_from_bytes(raw, trust=TRUSTED).facts
    assert (f.spf, f.dmarc) == ("fail", None)


def test_the_topmost_trusted_header_wins_per_method():
    raw = (b"Authentication-Results: mx.example.org; dmarc=fail header.from=sender.example\r\n"
           b"Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=sender.example; dmarc=pass\r\n" + EDGE + BODY)
    f = facts_from_bytes(raw, trust=TRUSTED).facts
    assert (f.spf, f.dmarc) == ("pass", "fail")


def test_received_spf_is_used_only_from_a_trusted_receiver():
    spf = (b"Received-SPF: softfail (mx.example.org: domain of transitioning b@sender.example) "
           b"receiver=mx.example.org; client-ip=198.51.100.4; helo=out.sender.example; envelope-from=b@sender.example;\r\n")
    f = facts_from_bytes(spf + EDGE + BODY, trust=TRUSTED).facts
    assert (f.spf, f.spf_domain, f.envelope_from) == ("softfail", "sender.example", "b@sender.example")
    other = TrustConfig(authserv_ids=frozenset({"gw.other.example"}), auto_detect=False)
    f = facts_from_bytes(spf + EDGE + BODY, trust=other).facts
    assert (f.spf, f.envelope_from) == (None, None)


def test_microsoft_headers_without_authserv_id_are_trusted_as_none():
    raw = (b"Authentication-Results: spf=pass (sender IP is 198.51.100.4)\r\n smtp.mailfrom=sender.example; dkim=pass\r\n"
           b" (signature was verified) header.d=sender.example;dmarc=bestguesspass action=none\r\n"
           b" header.from=sender.example;compauth=pass reason=109\r\n" + EDGE.replace(b"mx.example.org", b"x.mail.protection.outlook.com") + BODY)
    trust = TrustConfig(authserv_ids=frozenset({NO_AUTHSERV_ID, "protection.outlook.com"}))
    f = facts_from_bytes(raw, trust=trust).facts
    assert (f.spf, f.dmarc, f.authserv_id) == ("pass", "none", NO_AUTHSERV_ID)
    assert f.client_ip == "198.51.100.4"
    assert facts_from_bytes(raw, trust=TRUSTED).facts.spf is None


def test_a_single_message_trusts_the_ids_heading_it_unless_auto_detection_is_off(corpus):
    raw = (corpus / "seed_example/otp-headers-pasted.txt").read_bytes()
    assert facts_from_bytes(raw).facts.dmarc == "pass"
    off = facts_from_bytes(raw, trust=TrustConfig(auto_detect=False)).facts
    assert (off.spf, off.dkim, off.dmarc, off.authserv_id) == (None, (), None, None)
    assert off.client_ip == "65.99.255.114"  # hop 0 only: the gateway is not known to be ours


def test_dataset_auto_detection_trusts_the_receiving_systems_id(tmp_path):
    for n in range(12):
        (tmp_path / f"{n}.eml").write_bytes(
            b"Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=sender.example\r\n" + EDGE + BODY
            + f"{n}\r\n".encode())
    # one message whose top header claims another id: not the receiver's, not trusted
    (tmp_path / "z.eml").write_bytes(b"Authentication-Results: forged.example; spf=pass\r\n" + BODY)
    con = duckdb.connect()
    s = ingest_paths(con, [tmp_path], jobs=1)
    assert s.authserv_ids == ("mx.example.org",)
    spf = {f.source.rsplit("/", 1)[1]: f.spf for f in read_facts(con)}
    assert spf["z.eml"] is None and spf["0.eml"] == "pass"
    con2 = duckdb.connect()
    s = ingest_paths(con2, [tmp_path], jobs=1, trust=TrustConfig(auto_detect=False))
    assert s.authserv_ids == () and {f.spf for f in read_facts(con2)} == {None}


def test_vendor_result_words_map_to_rfc_8601_words():
    assert [normalize_result(w) for w in ("Pass", "hardfail", "bestguesspass", "timeout", "weird", None)] == [
        "pass", "fail", "none", "temperror", None, None]


def test_received_spf_fields_are_read_from_comment_and_key_values():
    r = parse_received_spf("Pass (protection.outlook.com: domain of sendgrid.net designates 149.72.167.253 as "
                           "permitted sender) receiver=protection.outlook.com; client-ip=149.72.167.253; "
                           "helo=wrqvxtfd.outbound-mail.sendgrid.net; pr=C")
    assert (r.result, r.receiver, r.client_ip, r.helo) == (
        "pass", "protection.outlook.com", "149.72.167.253", "wrqvxtfd.outbound-mail.sendgrid.net")
    g = parse_received_spf("pass (google.com: domain of x@y.example designates 192.0.2.1 as permitted sender) client-ip=192.0.2.1;")
    assert g.receiver == "google.com"


def _all_ar_headers(corpus: Path) -> list[str]:
    out = []
    for folder in ("phishing_pot", "authentication_milter_tdata", "rspamd_test_messages", "mailauth_fixtures",
                   "spamassassin_t_data", "authheaders_tests", "ruby-mail_fixtures", "seed_example"):
        for path in sorted((corpus / folder).rglob("*")):
            if not path.is_file():
                continue
            for unit in units_of(path):
                if not isinstance(unit, Unit) or unit.kind == "csv":
                    continue
                block = split_header_block(read_unit_bytes(unit)[:200000])
                out.extend(v for _, v in block.get_all("authentication-results"))
    return out


def _props(result) -> dict[str, str]:
    return {f"{p.type}.{p.name}".lower(): p.value for p in result.properties}


def test_the_fast_parser_agrees_with_authres_on_every_corpus_header_authres_accepts(corpus):
    headers = _all_ar_headers(corpus)
    assert len(headers) > 2000
    compared = 0
    for value in headers:
        idless = parse_authentication_results(value).authserv_id == NO_AUTHSERV_ID
        try:
            ref = authres.AuthenticationResultsHeader.parse_value(("placeholder; " if idless else "") + value)
        except Exception:  # noqa: BLE001 - authres rejects what it rejects; the fast parser still copes
            continue
        mine = parse_authentication_results(value)
        if not idless:
            assert mine.authserv_id == ref.authserv_id.lower(), value
        ref_results = [r for r in ref.results if r.method.lower() != "none"]
        assert [r.method.lower() for r in mine.results] == [r.method.lower() for r in ref_results], value
        for a, b in zip(mine.results, ref_results):
            assert a.raw_result.lower() == b.result.lower(), value
            for key, val in _props(b).items():
                if a.props.get(key) == "" and "=" in val:
                    continue  # `smtp.mailfrom= smtp.helo=x`: authres takes the next property as the value
                assert a.props.get(key) == val, (key, value)
        compared += 1
    # authres rejects about a fifth (Microsoft variants, odd comments); the rest must agree.
    assert compared > 0.75 * len(headers)


def test_trusted_results_equal_the_results_of_the_header_they_came_from(corpus):
    """Acceptance: with Microsoft's stamps trusted, spf/dkim/dmarc equal the top-most A-R header."""
    trust = TrustConfig(authserv_ids=frozenset({NO_AUTHSERV_ID, "protection.outlook.com"}))
    checked = 0
    for path in sorted((corpus / "phishing_pot").glob("*.eml"))[:400]:
        raw = path.read_bytes()
        block = split_header_block(raw)
        top = block.first("authentication-results")
        if top is None or parse_authentication_results(top).authserv_id != NO_AUTHSERV_ID:
            continue
        try:
            ref = authres.AuthenticationResultsHeader.parse_value("placeholder; " + top)
        except Exception:  # noqa: BLE001
            continue
        f = facts_from_bytes(raw, trust=trust).facts
        by = {}
        for r in ref.results:
            by.setdefault(r.method.lower(), []).append(r)
        if "spf" in by:
            assert f.spf == normalize_result(by["spf"][0].result), path.name
        if "dmarc" in by:
            assert f.dmarc == normalize_result(by["dmarc"][0].result), path.name
        if "dkim" in by:
            assert [d.result for d in f.dkim] == [normalize_result(r.result) or "permerror" for r in by["dkim"]], path.name
            assert [d.d for d in f.dkim] == [
                (_props(r).get("header.d") or "").lower() or None for r in by["dkim"]], path.name
        checked += 1
    assert checked > 300


def test_a_two_label_receiver_id_does_not_claim_every_host_of_that_domain():
    trust = TrustConfig(authserv_ids=frozenset({"google.com", "protection.outlook.com"}))
    assert trust.writes_hop("abc.mail.protection.outlook.com")
    assert not trust.writes_hop("mail-sor-f41.google.com")
    assert trust.writes_hop("google.com")


def test_an_address_literal_helo_does_not_become_the_client_ip():
    # RFC 5321 lets a client EHLO with any address literal; the MTA writes it as the leading
    # token and the real peer address in the comment. Believing the literal would let anyone
    # pass `ip:` allow entries and inbound.enforce by announcing a listed address.
    from edrules.backends.runtime import RuntimeEvaluator
    from edrules.rules.parse import parse_rules

    policy = parse_rules("allow:\n  - ip: 192.0.2.10\n    id: partner-relay\n")
    hops = {
        "postfix": b"Received: from [192.0.2.10] (unknown [203.0.113.9]) by mx.example.org (Postfix) with ESMTP id A1; Thu, 1 Jan 2026 00:00:01 +0000\r\n",
        "qmail": b"Received: from unknown (HELO [192.0.2.10]) (203.0.113.9) by mx.example.org with SMTP; Thu, 1 Jan 2026 00:00:01 +0000\r\n",
        "exim": b"Received: from [203.0.113.9] (helo=[192.0.2.10]) by mx.example.org with esmtp; Thu, 1 Jan 2026 00:00:01 +0000\r\n",
    }
    for mta, hop in hops.items():
        f = facts_from_bytes(hop + BODY, trust=TRUSTED).facts
        assert f.client_ip == "203.0.113.9", mta
        assert f.helo == "192.0.2.10", mta
        assert RuntimeEvaluator(policy).evaluate(f)[0].rule_id != "partner-relay", mta


def test_a_return_path_the_sender_wrote_does_not_override_the_envelope_our_gateway_authenticated():
    # No MTA Return-Path (a gateway export): the only one is the sender's own, below the edge
    # hop. Believing it over the trusted smtp.mailfrom would transfer the SPF pass of the
    # sender's real domain to any address it names, and an aligned allow entry would deliver.
    from edrules.backends.runtime import RuntimeEvaluator
    from edrules.rules.parse import parse_rules

    policy = parse_rules("from_policy: aligned\nallow:\n  - sender: ceo@partner.example\n    id: partner-ceo\n")
    raw = (b"Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=x@attacker.example; dmarc=none\r\n"
           + EDGE + b"Return-Path: <ceo@partner.example>\r\nFrom: ceo@partner.example\r\nTo: u@example.org\r\n"
           b"Subject: invoice\r\n\r\nhi\r\n")
    f = facts_from_bytes(raw, trust=TRUSTED).facts
    assert (f.envelope_from, f.envelope_from_domain) == ("x@attacker.example", "attacker.example")
    v = RuntimeEvaluator(policy).evaluate(f)[0]
    assert (v.category, v.rule_id) == ("forgery", "from_policy:aligned")
    # The same Return-Path agreeing with the authenticated domain is still read (it may be the
    # only full address, e.g. Microsoft 365 writes a bare smtp.mailfrom domain).
    same = raw.replace(b"x@attacker.example", b"partner.example")
    assert facts_from_bytes(same, trust=TRUSTED).facts.envelope_from == "ceo@partner.example"
