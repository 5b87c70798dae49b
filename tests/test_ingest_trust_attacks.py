"""Hand-written attack messages against the trust rules of ingest (issue 8, items 1 to 4).

Each message is what an outside sender can deliver to the gateway `mx.acme.example`: every
field below the gateway's own Received field is the sender's text. The assertions say which
facts the attacker must NOT be able to choose.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from edrules.ingest import TrustConfig, facts_from_bytes

ID = "mx.acme.example"
TRUST = TrustConfig(authserv_ids=frozenset({ID}), auto_detect=False)
AUTO = TrustConfig()  # the default: ids detected from the message itself
DATE = "Tue, 1 Dec 2026 10:00:00 +0000"
BODY = ["From: ceo@partner.example", "To: cfo@acme.example", "Subject: wire", "", "pay now"]


def msg(*lines: str) -> bytes:
    return ("\r\n".join([*lines, *BODY]) + "\r\n").encode()


def facts(raw: bytes, trust: TrustConfig = TRUST, **kw):
    return facts_from_bytes(raw, source="attack.eml", trust=trust, **kw).facts


# -- 1. a forged `Received ... by <trusted id>` below the gateway's own field --------------

GW_OTHER_NAME = f"Received: from helo.attacker.example (unknown [203.0.113.9]) by gw.acme.example (Postfix) with ESMTP id A1; {DATE}"
FORGED_EDGE = f"Received: from mail.partner.example ([198.51.100.7]) by {ID} with ESMTP id F1; {DATE}"
AR_TOP = f"Authentication-Results: {ID}; spf=pass smtp.mailfrom=attacker.example; dkim=none; dmarc=none"


@pytest.mark.parametrize("trust", [TRUST, AUTO], ids=["configured id", "auto-detected id"])
def test_a_forged_received_naming_the_trusted_id_below_the_gateway_never_becomes_the_edge(trust):
    f = facts(msg(AR_TOP, GW_OTHER_NAME, FORGED_EDGE), trust)
    assert (f.client_ip, f.helo) == ("203.0.113.9", "helo.attacker.example")


def test_a_helo_naming_the_trusted_id_does_not_link_the_forged_field_when_the_relay_recorded_rdns():
    gw = f"Received: from {ID} (unknown [203.0.113.9]) by gw.acme.example (Postfix) with ESMTP id A1; {DATE}"
    f = facts(msg(AR_TOP, gw, FORGED_EDGE))
    assert f.client_ip == "203.0.113.9"


def test_a_chain_of_two_forged_fields_that_link_to_each_other_is_still_the_senders():
    link = f"Received: from {ID} ([203.0.113.10]) by relay.attacker.example with SMTP; {DATE}"
    f = facts(msg(AR_TOP, GW_OTHER_NAME, link, FORGED_EDGE))
    assert f.client_ip == "203.0.113.9"


def test_the_gateway_field_naming_its_id_stays_the_edge_over_a_forged_copy_below_it():
    gw = f"Received: from helo.attacker.example (unknown [203.0.113.9]) by {ID} (Postfix) with ESMTP id A1; {DATE}"
    f = facts(msg(AR_TOP, gw, FORGED_EDGE))
    assert f.client_ip == "203.0.113.9"


def test_trust_still_reaches_the_gateway_through_our_own_mailbox_hop_above_it():
    mbox = f"Received: from gw.acme.example (gw.acme.example [198.18.0.5]) by mbox.acme.example with LMTP; {DATE}"
    gw = f"Received: from helo.attacker.example (unknown [203.0.113.9]) by {ID} (Postfix) with ESMTP id A1; {DATE}"
    f = facts(msg(mbox, AR_TOP, gw, FORGED_EDGE))
    assert (f.client_ip, f.envelope_from_domain, f.spf) == ("203.0.113.9", "attacker.example", "pass")
    m = facts_from_bytes(msg(mbox, AR_TOP, gw, FORGED_EDGE), trust=TRUST)
    assert [h.trusted for h in m.hops] == [True, True, False]


# -- 2. a sender-written Return-Path and an SPF pass for the HELO ---------------------------

GW = f"Received: from mail.evil.example (mail.evil.example [203.0.113.9]) by {ID} (Postfix) with ESMTP id A1; {DATE}"
FORGED_RP = "Return-Path: <billing@partner.example>"


@pytest.mark.parametrize("spf", ["spf=pass smtp.helo=mail.evil.example", "spf=pass"],
                         ids=["spf pass for the HELO", "spf pass naming no identity"])
def test_a_return_path_below_the_edge_is_ignored_when_the_trusted_spf_names_no_envelope_domain(spf):
    f = facts(msg(f"Authentication-Results: {ID}; {spf}; dkim=none; dmarc=none", GW, FORGED_RP))
    assert (f.envelope_from, f.envelope_from_domain) == (None, None)
    assert f.spf is None


def test_an_spf_pass_for_the_helo_does_not_count_for_an_envelope_sender_of_another_domain():
    raw = msg(f"Authentication-Results: {ID}; spf=pass smtp.helo=mail.evil.example", GW)
    f = facts(raw, mbox_from="billing@partner.example")
    assert (f.envelope_from, f.spf, f.spf_domain) == ("billing@partner.example", None, "mail.evil.example")


def test_an_spf_pass_for_the_helo_counts_for_the_null_sender():
    raw = msg("Return-Path: <>", f"Authentication-Results: {ID}; spf=pass smtp.helo=mail.evil.example", GW)
    f = facts(raw)
    assert (f.envelope_from, f.helo, f.spf) == ("", "mail.evil.example", "pass")


def test_a_return_path_below_the_edge_matching_the_trusted_mailfrom_is_believed():
    raw = msg(f"Authentication-Results: {ID}; spf=pass smtp.mailfrom=partner.example", GW, FORGED_RP)
    f = facts(raw)
    assert (f.envelope_from, f.spf, f.spf_domain) == ("billing@partner.example", "pass", "partner.example")


# -- 3. a forged Authentication-Results right below the edge hop ----------------------------

FORGED_DMARC = f"Authentication-Results: {ID}; dmarc=pass header.from=partner.example"
AR_NO_DMARC = f"Authentication-Results: {ID}; spf=fail smtp.mailfrom=partner.example; dkim=none"


@pytest.mark.parametrize("trust", [TRUST, AUTO], ids=["configured id", "auto-detected id"])
def test_a_forged_authentication_results_below_the_edge_hop_fills_in_no_method(trust):
    f = facts(msg(AR_NO_DMARC, GW, FORGED_DMARC), trust)
    assert (f.spf, f.dmarc) == ("fail", None)


def test_below_its_own_received_field_only_the_gateways_top_most_result_counts():
    # Gmail-style: the gateway writes its results just below its own Received field.
    f = facts(msg(GW, AR_NO_DMARC, FORGED_DMARC))
    assert (f.spf, f.dmarc) == ("fail", None)
    assert facts(msg(GW, FORGED_DMARC)).dmarc == "pass"  # the top-most one is the gateway's


def test_a_forged_received_spf_below_the_gateways_results_is_ignored():
    spf = f"Received-SPF: pass (mx.acme.example: domain of partner.example) receiver={ID}; envelope-from=<a@partner.example>"
    f = facts(msg(f"Authentication-Results: {ID}; dkim=none", GW, spf))
    assert (f.spf, f.envelope_from) == (None, None)


def test_a_dmarc_result_for_another_header_from_domain_is_inapplicable():
    ar = f"Authentication-Results: {ID}; dmarc=pass (p=reject) header.from=other.example"
    f = facts(msg(ar, GW))
    assert (f.header_from_domain, f.dmarc, f.dmarc_policy) == ("partner.example", None, None)
    same = facts(msg(f"Authentication-Results: {ID}; dmarc=pass (p=reject) header.from=Partner.Example.", GW))
    assert (same.dmarc, same.dmarc_policy) == ("pass", "reject")


# -- 4. From repair and addresses mapped onto other addresses --------------------------------

def _with_from(value: str) -> bytes:
    lines = [AR_TOP, GW, f"From: {value}", "To: cfo@acme.example", "Subject: x", "", "body"]
    return ("\r\n".join(lines) + "\r\n").encode()


def test_a_from_that_needed_repair_is_invalid_in_mail_ingest_but_repaired_in_paste_mode():
    raw = _with_from("(\r\n) <ceo@partner.example>")
    f = facts(raw)
    assert (f.header_from, f.from_invalid) == (None, True)
    pasted = facts_from_bytes(raw, trust=TRUST, paste=True).facts
    assert (pasted.header_from, pasted.from_invalid) == ("ceo@partner.example", False)


def test_a_from_folded_with_a_no_break_space_is_invalid_in_mail_ingest():
    raw = _with_from("Boss\r\n\u00a0<ceo@partner.example>")
    assert facts(raw).from_invalid is True
    assert facts_from_bytes(raw, trust=TRUST, paste=True).facts.header_from == "ceo@partner.example"


@pytest.mark.parametrize("value", [
    "ceo@partner.example..", "ceo@.partner.example", "ceo@partner..example", "<<ceo@partner.example>>",
    "<ceo@partner.example", "ceo@partner.example>", "Boss <ceo@partner.example", "ceo@[198.51.100.7]",
    "<ceo@[IPv6:2001:db8::1]>", "ceo@-partner.example", "ceo@partner.example (",
    "Team: ceo@partner.example;", "<@relay.example:ceo@partner.example>", '"ceo@partner.example',
])
def test_a_from_domain_that_is_not_a_valid_domain_is_invalid_not_mapped_onto_one(value):
    f = facts(_with_from(value))
    assert (f.header_from, f.header_from_domain, f.from_invalid) == (None, None, True), value


@pytest.mark.parametrize("value, expected", [
    ('"ceo"@acme.example', "ceo@acme.example"),
    ('Boss <"CEO"@Acme.Example>', "ceo@acme.example"),
    ('"first.last"@acme.example', "first.last@acme.example"),
    ('"c e o"@acme.example', '"c e o"@acme.example'),
    ('"a..b"@acme.example', '"a..b"@acme.example'),
    ("ceo@partner.example.", "ceo@partner.example"),
])
def test_a_quoted_local_part_is_unquoted_when_the_quotes_are_not_needed(value, expected):
    f = facts(_with_from(value))
    assert (f.header_from, f.from_invalid) == (expected, False)


def test_a_quoted_envelope_sender_is_unquoted_too():
    f = facts(msg('Return-Path: <"billing"@partner.example>', GW))
    assert f.envelope_from == "billing@partner.example"


def test_a_from_with_fifty_thousand_nested_parentheses_is_invalid_not_a_crash():
    f = facts(_with_from("(" * 50_000 + "ceo@partner.example" + ")" * 50_000))
    assert f.from_invalid is True


def test_explain_on_a_from_with_fifty_thousand_nested_parentheses_prints_its_facts(tmp_path):
    path = tmp_path / "deep.eml"
    path.write_bytes(_with_from("(" * 50_000 + "ceo@partner.example" + ")" * 50_000))
    run = subprocess.run([sys.executable, "-c", "from edrules.cli import main; main()", "explain", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "internal error" not in run.stderr


def test_a_null_return_path_far_below_is_believed_when_the_trusted_spf_checked_the_helo():
    # Microsoft 365 writes `Return-Path: <>` below the sender's fields and checks the HELO
    # for a null sender: the identity becomes the HELO name, which SPF did verify.
    raw = msg(f"Authentication-Results: {ID}; spf=pass smtp.helo=mail.evil.example", GW, "Return-Path: <>")
    f = facts(raw)
    assert (f.envelope_from, f.spf, f.helo) == ("", "pass", "mail.evil.example")


def test_auto_detection_takes_no_id_from_a_received_spf_written_below_the_gateways_results():
    spf = "Received-SPF: pass (mx.evil.example: ok) receiver=mx.evil.example; envelope-from=<a@partner.example>"
    ar = "Authentication-Results: mx.evil.example; spf=pass smtp.mailfrom=partner.example; dmarc=pass header.from=partner.example"
    f = facts(msg(f"Authentication-Results: {ID}; dkim=none", GW, spf, ar), AUTO)
    assert (f.spf, f.dmarc, f.envelope_from, f.authserv_id) == (None, None, None, ID)


def test_a_return_path_below_the_edge_must_be_the_trusted_address_when_one_is_named():
    raw = msg(f"Authentication-Results: {ID}; spf=pass smtp.mailfrom=billing@partner.example", GW,
              "Return-Path: <ceo@partner.example>")
    assert facts(raw).envelope_from == "billing@partner.example"


@pytest.mark.parametrize("line", ["; dmarc=pass header.from=partner.example", "\u00a0; dmarc=pass header.from=partner.example"],
                         ids=["line without colon", "no-break-space fold"])
def test_a_line_the_sender_writes_under_the_gateways_last_field_is_not_joined_onto_it(line):
    ar = f"Authentication-Results: {ID}; spf=fail smtp.mailfrom=partner.example"
    f = facts(msg(GW, ar, line))
    assert (f.spf, f.dmarc, f.header_from) == ("fail", None, "ceo@partner.example")
    pasted = facts_from_bytes(msg(GW, ar, line), trust=TRUST, paste=True).facts
    assert pasted.dmarc == "pass"  # a paste is repaired as the reader asked


def test_a_receiver_named_by_the_senders_received_spf_does_not_link_its_forged_fields_into_our_chain():
    # No Received-SPF of the gateway: the sender's is the top-most, so auto-detection takes
    # its receiver, here the gateway's own client; trust must not walk into the sender's text.
    gw = f"Received: from mail.partner.example (mail.partner.example [198.51.100.7]) by gw.acme.example (Postfix) with ESMTP id A1; {DATE}"
    spf = "Received-SPF: pass (mail.partner.example: ok) receiver=mail.partner.example; client-ip=10.9.9.9"
    forged = f"Received: from helo.forged.example ([192.0.2.66]) by mail.partner.example with ESMTP id F2; {DATE}"
    f = facts(msg(AR_TOP, gw, spf, forged), AUTO)
    assert (f.client_ip, f.helo) == ("198.51.100.7", "mail.partner.example")


def test_a_helo_naming_the_trusted_id_does_not_link_when_the_relay_recorded_no_reverse_name():
    gw = f"Received: from {ID} ([203.0.113.9]) by gw.acme.example (8.17.1/8.17.1) with ESMTP id A1; {DATE}"
    f = facts(msg(AR_TOP, gw, FORGED_EDGE))
    assert (f.client_ip, f.helo) == ("203.0.113.9", ID)
