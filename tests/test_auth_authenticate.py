"""authenticate(): SPF + DKIM + ARC + DMARC for one message, and the gateway's A-R header."""

from __future__ import annotations

import authres
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from edrules.auth import authenticate, from_domains
from edrules.auth.dkim import public_key_record, sign_dkim
from edrules.auth.dmarc import Policy
from edrules.auth.headers import format_authentication_results
from edrules.auth.resolver import ZoneResolver
from edrules.errors import EdrulesError
from edrules.facts import AuthResult, DkimSignatureResult


@pytest.fixture(autouse=True)
def _no_live_dns(monkeypatch):
    monkeypatch.setenv("EDRULES_DNS", "offline")


def _message(from_line: bytes = b"From: Bank <alerts@bank.example>") -> bytes:
    return (from_line + b"\r\nTo: you@customer.example\r\nSubject: statement\r\n"
            b"Message-ID: <42@bank.example>\r\n\r\nYour statement is ready.\r\n")


@pytest.fixture(scope="module")
def key() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture(scope="module")
def zone(key) -> ZoneResolver:
    return ZoneResolver.from_text(f"""\
$ORIGIN bank.example.
@              IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc         IN TXT "v=DMARC1; p=reject; rua=mailto:dmarc@bank.example"
s1._domainkey  IN TXT "{public_key_record(key, 'ed25519-sha256')}"
$ORIGIN esp.example.
@              IN TXT "v=spf1 ip4:198.51.100.0/24 -all"
""")


def test_mail_from_the_domains_own_servers_passes_everything(zone, key):
    msg = _message()
    msg = sign_dkim(msg, "s1", "bank.example", key, "ed25519-sha256") + msg
    r = authenticate(msg, "192.0.2.10", "mta.bank.example", "bounce@bank.example", zone)
    assert (r.spf.result, [o.result for o in r.dkim], r.dmarc.result, r.arc) == (
        AuthResult.PASS, [AuthResult.PASS], AuthResult.PASS, None)
    assert r.header_from == ("alerts@bank.example",) and not r.from_invalid
    assert r.dmarc.spf_aligned and r.dmarc.dkim_aligned


def test_a_spoof_from_an_esp_fails_dmarc_with_the_reject_policy(zone):
    r = authenticate(_message(), "198.51.100.5", "esp.example", "bounces@esp.example", zone)
    assert r.spf.result is AuthResult.PASS and r.spf.domain == "esp.example"
    assert (r.dmarc.result, r.dmarc.policy) == (AuthResult.FAIL, Policy.REJECT)


def test_an_esp_signing_with_the_brands_key_passes_dmarc_through_dkim_alone(zone, key):
    msg = _message()
    msg = sign_dkim(msg, "s1", "bank.example", key, "ed25519-sha256") + msg
    r = authenticate(msg, "198.51.100.5", "esp.example", "bounces@esp.example", zone)
    assert r.dmarc.result is AuthResult.PASS and r.dmarc.dkim_aligned and not r.dmarc.spf_aligned


def test_null_sender_uses_helo_for_spf_and_alignment(zone):
    r = authenticate(_message(), "192.0.2.10", "bank.example", "<>", zone)
    assert (r.spf.identity, r.spf.result, r.dmarc.result) == ("helo", AuthResult.PASS, AuthResult.PASS)


@pytest.mark.parametrize("from_line,count", [
    (b"From: a@bank.example, b@evil.example", 2),
    (b"From: a@bank.example\r\nFrom: a@bank.example", 2),
    (b"X-No-From: here", 0),
])
def test_several_or_no_from_mailboxes_make_dmarc_fail_even_when_everything_else_passes(zone, from_line, count):
    r = authenticate(_message(from_line), "192.0.2.10", "mta.bank.example", "bounce@bank.example", zone)
    assert len(r.header_from) == count and r.from_invalid
    assert r.dmarc.result is AuthResult.FAIL


def test_from_domains_reads_every_mailbox_of_every_from_header():
    msg = b"From: \"Doe, J\" <J@Example.COM>, x@y.example\r\nFrom: z@w.example\r\n\r\nbody"
    assert from_domains(msg) == ("j@example.com", "x@y.example", "z@w.example")


def test_fact_fields_fill_message_facts_columns(zone, key):
    msg = _message()
    msg = sign_dkim(msg, "s1", "bank.example", key, "ed25519-sha256") + msg
    facts = authenticate(msg, "192.0.2.10", "h", "bounce@bank.example", zone).fact_fields()
    assert facts == {"spf": "pass", "spf_domain": "bank.example",
                     "dkim": (DkimSignatureResult("bank.example", "s1", "pass", "bank.example"),),
                     "dmarc": "pass", "dmarc_policy": "none"}


def test_without_a_resolver_authenticate_uses_live_dns_which_tests_forbid():
    with pytest.raises(EdrulesError, match="EDRULES_DNS=offline"):
        authenticate(_message(), "192.0.2.10", "h", "a@bank.example")


# -- Authentication-Results ----------------------------------------------------------------


def test_the_header_is_rfc8601_and_parses_back_with_the_same_results(zone, key):
    msg = _message()
    msg = sign_dkim(msg, "s1", "bank.example", key, "ed25519-sha256") + msg
    r = authenticate(msg, "198.51.100.5", "esp.example", "bounces@esp.example", zone)
    value = format_authentication_results("mx.gateway.example", r)
    assert value.startswith("mx.gateway.example;\r\n\t")
    parsed = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + value)
    assert parsed.authserv_id == "mx.gateway.example"
    words = {(res.method, res.result) for res in parsed.results}
    assert words == {("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass")}
    props = {(p.type, p.name): p.value for res in parsed.results for p in res.properties}
    assert props[("smtp", "mailfrom")] == "bounces@esp.example"
    assert props[("header", "d")] == "bank.example" and props[("header", "from")] == "bank.example"
    # header.b is base64 ('/', '+', '=' are RFC 2045 tspecials), so it is a quoted-string,
    # which authres' parser drops on the way back in: check the text instead.
    b = r.dkim[0].b
    assert f'header.b="{b}"' in value or f"header.b={b} " in value


def test_unsigned_failing_mail_gets_dkim_none_and_the_dmarc_policy_comment(zone):
    r = authenticate(_message(), "203.0.113.1", "x.example", "a@bank.example", zone)
    value = format_authentication_results("mx.gateway.example", r)
    assert "dkim=none" in value and "spf=fail" in value
    assert "dmarc=fail (p=reject dis=reject) header.from=bank.example" in value


def test_an_authserv_id_that_is_not_a_host_name_is_refused(zone):
    r = authenticate(_message(), "192.0.2.10", "h", "a@bank.example", zone)
    with pytest.raises(EdrulesError, match="authserv-id"):
        format_authentication_results("bad id; spf=pass", r)


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.binary(max_size=300), sender=st.text(max_size=40))
def test_authenticate_never_raises_on_hostile_messages(zone, head, sender):
    for message in (head, b"From: " + head + b"\r\nARC-Seal: i=1; " + head + b"\r\n\r\nbody"):
        r = authenticate(message, "192.0.2.10", "h.example", sender, zone)
        assert r.dmarc.result in set(AuthResult)
        format_authentication_results("mx.gateway.example", r)
