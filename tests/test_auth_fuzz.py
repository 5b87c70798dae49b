"""Hostile DNS data: no DKIM key record, DMARC record or zone file crashes the auth engine.

Key and DMARC records are written by whoever controls the sending domain, so every one of
them must end in a result word (RFC 8601) or a dns-check finding, never an exception: on
the gateway an exception is a tempfail loop for that sender's mail. Records are served
through an OverlayResolver, so any string (including bytes that are not UTF-8, carried as
surrogate escapes as live DNS delivers them) reaches the parsers unchanged.
"""

from __future__ import annotations

import base64

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edrules.auth import authenticate
from edrules.auth.arc import seal_arc, verify_arc
from edrules.auth.dkim import parse_key_record, public_key_record, verify_dkim
from edrules.auth.dmarc import RecordStatus, evaluate_dmarc, parse_dmarc_record
from edrules.auth.dnscheck import Severity, check_domain, publish
from edrules.auth.resolver import OverlayResolver, ZoneResolver
from edrules.errors import EdrulesError
from edrules.facts import AuthResult

MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: fuzz\r\n"
           b"Date: Sat, 28 Nov 2026 06:00:00 +0000\r\nMessage-ID: <f@example.org>\r\n\r\nBody.\r\n")
BASE = ZoneResolver.from_text(
    "$ORIGIN example.org.\n"
    '@ IN TXT "v=spf1 ip4:192.0.2.1 -all"\n'
    "@ IN MX 10 mx.example.org.\n"
    "mx IN A 192.0.2.25\n"
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def _no_live_dns(monkeypatch):
    monkeypatch.setenv("EDRULES_DNS", "offline")


@pytest.fixture(scope="module")
def signed():
    pem = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    message = dkimpy.sign(MESSAGE, b"sel", b"example.org", pem, canonicalize=(b"relaxed", b"relaxed")) + MESSAGE
    with_ar = b"Authentication-Results: lists.example.org; spf=pass smtp.mailfrom=example.org\r\n" + message
    sealed = b"".join(seal_arc(with_ar, "sel", "example.org", pem, "lists.example.org")) + with_ar
    return {"pem": pem, "message": message, "sealed": sealed, "p": public_key_record(pem).split("p=", 1)[1]}


_surrogate_text = st.binary(max_size=60).map(lambda b: b.decode("utf-8", "surrogateescape"))
_value = st.one_of(
    st.sampled_from(["DKIM1", "DKIM2", "rsa", "ed25519", "RSA", "email", "*", "email:web", "web", "tlsrpt",
                     "email : tlsrpt", "", ":", "y", "s", "y:s", "sha1", "sha256", "sha1:sha256", "x",
                     "AAAA", "!!!", "====", "MIGfMA0", "\x00", "é"]),
    st.text(max_size=30), _surrogate_text,
)
_tag = st.sampled_from(["v", "k", "p", "s", "h", "t", "g", "n", "q", "V", "P", "x y", "", "="])


@st.composite
def key_records(draw, real_p: str) -> str:
    tags = draw(st.lists(st.tuples(_tag, _value), max_size=8))
    if draw(st.booleans()):
        tags.insert(draw(st.integers(0, len(tags))), ("p", draw(st.sampled_from([
            real_p, real_p[:-4], real_p + "A", base64.b64encode(b"\x30\x03\x02\x01\x00").decode(),
            "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="]))))
    sep = draw(st.sampled_from(["; ", ";", " ; ", ";\t", ": "]))
    text = sep.join(f"{k}={v}" if draw(st.booleans()) or not k else k for k, v in tags)
    return draw(st.sampled_from(["", "v=DKIM1; "])) + text


@st.composite
def dmarc_records(draw) -> str:
    tags = draw(st.lists(st.tuples(
        st.sampled_from(["v", "p", "sp", "pct", "adkim", "aspf", "rua", "ruf", "fo", "rf", "ri", "np", "x", "",
                         "P", "V"]),
        st.one_of(st.sampled_from(["DMARC1", "dmarc1", "DMARC1x", "none", "quarantine", "reject", "Reject",
                                   "maybe", "0", "100", "150", "-1", "r", "s", "mailto:d@example.org",
                                   "mailto:d@example.org!10m", "https://r.example", "ftp://x", "not a uri",
                                   "", "=", ","]), st.text(max_size=20), _surrogate_text)), max_size=8))
    body = "; ".join(f"{k}={v}" for k, v in tags)
    return draw(st.sampled_from(["v=DMARC1; ", "v=DMARC1;", "", "v=dmarc1; ", " v = DMARC1 ;"])) + body


@SETTINGS
@given(data=st.data())
def test_no_key_record_crashes_verify_dkim_authenticate_arc_or_dns_check(signed, data):
    record = data.draw(key_records(signed["p"]))
    zone = OverlayResolver(BASE, txt={"sel._domainkey.example.org": [record]})
    parsed = parse_key_record("sel._domainkey.example.org", record)
    assert parsed.problem is None or isinstance(parsed.problem, str)
    [outcome] = verify_dkim(signed["message"], zone)
    assert outcome.result in set(AuthResult) and outcome.reason
    if parsed.problem is not None:
        assert outcome.result is not AuthResult.PASS  # an unusable key never verifies
    r = authenticate(signed["message"], "192.0.2.1", "mx.example.org", "alice@example.org", zone)
    assert r.dkim[0].result is outcome.result
    assert verify_arc(signed["sealed"], zone).result in (AuthResult.PASS, AuthResult.FAIL, AuthResult.NONE)
    report = check_domain("example.org", zone, dkim_selectors=["sel"])
    assert {f.area for f in report.findings} >= {"dkim"}


@SETTINGS
@given(record=dmarc_records(), extra=st.lists(dmarc_records(), max_size=2), spf_ok=st.booleans())
def test_no_dmarc_record_crashes_authenticate_or_dns_check(record, extra, spf_ok):
    zone = OverlayResolver(BASE, txt={"_dmarc.example.org": [record, *extra]})
    rec = parse_dmarc_record(record, "example.org")
    assert rec.status in set(RecordStatus)
    r = authenticate(MESSAGE, "192.0.2.1" if spf_ok else "203.0.113.9", "mx.example.org", "alice@example.org", zone)
    assert r.dmarc.result in set(AuthResult)
    if r.dmarc.result is AuthResult.FAIL:
        assert r.dmarc.policy is not None  # a fail always carries the disposition to apply
    multi = evaluate_dmarc(["example.org", "sub.example.org"], "fail", None, [], zone)
    assert multi.result is AuthResult.FAIL
    report = check_domain("example.org", zone)
    for f in report.findings:
        if f.suggestion:
            # every record dns-check offers, published, leaves no error in its area
            again = check_domain("example.org", publish(zone, f.suggestion))
            assert not [g for g in again.findings if g.area == f.area and g.severity >= Severity.ERROR], (
                f.suggestion, [g.message for g in again.findings])


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(["$ORIGIN example.com.", "$ORIGIN .", "$TTL 60", "$TTL x", "$INCLUDE /etc/passwd",
                              "$GENERATE 1-3 h$ A 192.0.2.$", "@ IN SOA ns. host. 1 2 3 4 5",
                              "@ IN TXT \"v=spf1 -all\"", "@ IN TXT \"unterminated", "@ IN MX 10 mx",
                              "@ IN MX ten mx", "www IN CNAME @", "( ", ")", "; comment", "@ IN A 300.1.1.1",
                              "@ IN AAAA ::1", "\\000", "* IN TXT \"w\"", "@ CH TXT \"chaos\"", "@ IN TYPE99 \\# 0",
                              "x" * 70 + ".example.", "@ IN TXT " + '"' + "a" * 300 + '"']),
             max_size=12).map("\n".join)))
def test_any_zone_text_loads_or_gives_a_located_edrules_error(text):
    try:
        zone = ZoneResolver.from_text(text, source="fuzz.zone")
    except EdrulesError as exc:
        assert "\n" not in str(exc) and "fuzz.zone" in str(exc)
        return
    for name in list(zone.records)[:5]:
        for lookup in (zone.txt, zone.a, zone.aaaa, zone.mx):
            try:
                lookup(name)
            except Exception as exc:  # noqa: BLE001 - only the typed DNS errors are allowed
                from edrules.auth.resolver import DnsError

                assert isinstance(exc, DnsError), exc


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_any_zone_file_bytes_load_or_give_a_located_edrules_error(tmp_path, data):
    path = tmp_path / "any.zone"
    path.write_bytes(data)
    try:
        ZoneResolver.from_file(path)
    except EdrulesError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sig=st.text(max_size=120), ar=st.text(max_size=120))
def test_explain_survives_hostile_dkim_signature_and_dmarc_results(sig, ar):
    """explain reads the gateway's Authentication-Results rather than the engine; a hostile
    DKIM-Signature or dmarc= result in them must still give an explanation."""
    from edrules.backends.explain import explain_message

    clean = lambda s: s.replace("\r", " ").replace("\n", " ")  # noqa: E731 - one header line each
    message = (f"Authentication-Results: mx.example.net; dmarc={clean(ar)} header.from=example.org\r\n"
               f"DKIM-Signature: {clean(sig)}\r\n").encode("utf-8", "surrogateescape") + MESSAGE
    explanation = explain_message(message, trusted_authserv_ids=["mx.example.net"])
    assert explanation is not None


_SPF_TERMS = ["ip4:192.0.2.0/28", "ip4:198.51.100.7", "ip6:2001:db8::/32", "ip4:300.1.1.1", "ip4:", "a", "mx",
              "a:mx.example.org", "mx:gone.example.org", "a/24", "a:mx.example.org/24//64", "mx//64",
              "include:i.example.org", "include:gone.example.org", "include:loop.example.org",
              "include:example.org", "include:%{d}.example.org", "exists:%{i}.x.example.org", "ptr",
              "?include:i.example.org", "-include:i.example.org", "redirect=i.example.org",
              "redirect=example.org", "redirect=gone.example.org", "exp=explain.example.org", "foo=bar",
              "+all", "-all", "~all", "?all", "all", "bogus", "1=2", "-ip4:192.0.2.1"]


@settings(max_examples=120, deadline=None)
@given(terms=st.lists(st.sampled_from(_SPF_TERMS), max_size=14), relays=st.booleans())
def test_no_spf_record_crashes_dns_check_and_every_suggested_record_rechecks_clean(terms, relays):
    """Issue 8 item 8 as a property: whatever the SPF tree, a `publish:` record, once
    published, leaves no SPF error (loops, self-redirects, missing includes, +all included)."""
    zone = OverlayResolver(ZoneResolver.from_text(
        "$ORIGIN example.org.\n@ IN MX 10 mx.example.org.\nmx IN A 192.0.2.25\nmx IN AAAA 2001:db8::25\n"
        'i IN TXT "v=spf1 ip4:198.51.100.0/24 a:mx.example.org include:j.example.org ~all"\n'
        'j IN TXT "v=spf1 ip6:2001:db8:1::/48 -all"\n'
        'loop IN TXT "v=spf1 include:loop2.example.org -all"\n'
        'loop2 IN TXT "v=spf1 include:loop.example.org -all"\n'), txt={"example.org": ["v=spf1 " + " ".join(terms)]})
    kwargs = {"gateway_relays": ["192.0.2.0/28"]} if relays else {}
    report = check_domain("example.org", zone, **kwargs)
    for f in report.findings:
        if f.suggestion and f.area == "spf":
            again = check_domain("example.org", publish(zone, f.suggestion), **kwargs)
            assert not [g for g in again.findings if g.area == "spf" and g.severity >= Severity.ERROR], (
                f.suggestion, [g.message for g in again.findings])


_header_line = st.one_of(
    st.sampled_from(["From: a@example.org", "From: (", ") <ceo@example.org>", "From: a@example.org, b@example.net",
                     "From: <<a@b>>", "From: =?utf-8?b?YUBleGFtcGxlLm9yZw==?=", "From:", " folded continuation",
                     "DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel; h=from; bh=AAAA; b=AAAA",
                     "DKIM-Signature: v=1; a=rsa-sha1; d=example.org; s=sel; h=from; bh=; b=",
                     "ARC-Seal: i=1; a=rsa-sha256; cv=none; d=example.org; s=sel; b=AAAA",
                     "ARC-Message-Signature: i=1; a=rsa-sha256; d=example.org; s=sel; h=from; bh=AAAA; b=AAAA",
                     "ARC-Authentication-Results: i=1; example.org; spf=pass",
                     "Authentication-Results: example.org; dmarc=pass", "Subject: x", "no colon here"]),
    st.text(max_size=60).map(lambda s: s.replace("\r", "").replace("\n", "")))


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(_header_line, max_size=10), ip=st.sampled_from(["192.0.2.1", "2001:db8::1", "not-an-ip", ""]),
       sender=st.sampled_from(["alice@example.org", "", "<>", "@", "a@b@c", "x" * 300]))
@example(lines=[], ip="", sender="alice@example.org")  # pyspf raised AttributeError (no cidrmax)
def test_no_header_block_or_envelope_crashes_authenticate(lines, ip, sender):
    zone = OverlayResolver(BASE, txt={"_dmarc.example.org": ["v=DMARC1; p=reject"],
                                      "sel._domainkey.example.org": ["v=DKIM1; s=email:web; p=AAAA"]})
    message = "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\nbody\r\n"
    r = authenticate(message, ip, "mx.example.org", sender, zone)
    assert r.spf.result in set(AuthResult) and r.dmarc.result in set(AuthResult)
    assert all(o.result in set(AuthResult) for o in r.dkim)
