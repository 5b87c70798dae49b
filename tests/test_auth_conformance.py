"""RFC conformance vectors for the rules of issue 15, each run through edrules.auth's public API.

Every vector names the RFC section it comes from. DKIM vectors sign a message with a known
key, publish a key record and verify with verify_dkim() and authenticate(); DMARC vectors
publish records in a zone and run authenticate() on an unsigned message whose SPF passes
(aligned) or fails. dkimpy's own key-record fixtures (corpus `dkimpy_testdata`, zlib-style
licence in that folder) join as a second set. The summary test prints vectors run / agreeing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edrules.auth import authenticate
from edrules.auth.dkim import public_key_record, verify_dkim
from edrules.auth.resolver import ZoneResolver
from edrules.facts import AuthResult

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: vectors\r\n"
    b"Date: Sat, 28 Nov 2026 06:00:00 +0000\r\n"
    b"Message-ID: <v@example.org>\r\n"
    b"\r\n"
    b"Body.\r\n"
)


@pytest.fixture(autouse=True)
def _no_live_dns(monkeypatch):
    monkeypatch.setenv("EDRULES_DNS", "offline")


@pytest.fixture(scope="module")
def key() -> bytes:
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


def _txt(value: str) -> str:
    return " ".join(f'"{value[i:i + 250]}"' for i in range(0, len(value), 250))


@dataclass(frozen=True)
class DkimVector:
    id: str
    rfc: str
    record_tail: str  # appended to the v=DKIM1; k=rsa; p=... record ('' = as generated)
    want: AuthResult
    algorithm: bytes = b"rsa-sha256"
    identity: bytes | None = None
    record: str | None = None  # the whole record instead of the generated one


DKIM_VECTORS = [
    DkimVector("s-email", "RFC 6376 3.6.1 s=", "; s=email", AuthResult.PASS),
    DkimVector("s-star", "RFC 6376 3.6.1 s=", "; s=*", AuthResult.PASS),
    DkimVector("s-email-web", "RFC 6376 3.6.1 s= (unknown types ignored)", "; s=email:web", AuthResult.PASS),
    DkimVector("s-web-email", "RFC 6376 3.6.1 s= (unknown types ignored)", "; s=web : email", AuthResult.PASS),
    DkimVector("s-email-tlsrpt", "RFC 6376 3.6.1 s= / RFC 8460 3", "; s=email:tlsrpt", AuthResult.PASS),
    DkimVector("s-web", "RFC 6376 3.6.1 s= (no email or *)", "; s=web", AuthResult.PERMERROR),
    DkimVector("s-tlsrpt", "RFC 6376 3.6.1 s= / RFC 8460 3", "; s=tlsrpt", AuthResult.PERMERROR),
    DkimVector("s-empty", "RFC 6376 3.6.1 s= (key-s-tag needs a type)", "; s=", AuthResult.PERMERROR),
    DkimVector("h-sha256", "RFC 6376 3.6.1 h=", "; h=sha256", AuthResult.PASS),
    DkimVector("h-sha1-sha256", "RFC 6376 3.6.1 h=", "; h=sha1:sha256", AuthResult.PASS),
    DkimVector("h-sha1-only", "RFC 6376 3.6.1 h= (hash not allowed)", "; h=sha1", AuthResult.PERMERROR),
    DkimVector("t-y", "RFC 6376 3.6.1 t=y (testing changes no result)", "; t=y", AuthResult.PASS),
    DkimVector("t-s-same", "RFC 6376 3.6.1 t=s", "; t=s", AuthResult.PASS, identity=b"@example.org"),
    DkimVector("t-s-sub", "RFC 6376 3.6.1 t=s (i= subdomain)", "; t=s", AuthResult.PERMERROR,
               identity=b"@news.example.org"),
    DkimVector("no-t-sub", "RFC 6376 3.5 i= may be a subdomain of d=", "", AuthResult.PASS,
               identity=b"@news.example.org"),
    DkimVector("p-empty", "RFC 6376 3.6.1 p= (revoked)", "", AuthResult.PERMERROR,
               record="v=DKIM1; k=rsa; p="),
    DkimVector("v-dkim2", "RFC 6376 3.6.1 v= (other values discarded)", "", AuthResult.PERMERROR,
               record="v=DKIM2; k=rsa; p=AAAA"),
    DkimVector("k-unknown", "RFC 6376 3.6.1 k=", "", AuthResult.PERMERROR, record="v=DKIM1; k=foo; p=AAAA"),
    DkimVector("rsa-sha1", "RFC 8301 3.1 (rsa-sha1 MUST NOT be used)", "", AuthResult.PERMERROR,
               algorithm=b"rsa-sha1"),
    DkimVector("rsa-sha1-s-web", "RFC 8301 3.1 + RFC 6376 3.6.1", "; s=web", AuthResult.PERMERROR,
               algorithm=b"rsa-sha1"),
]


def _dkim_case(v: DkimVector, key: bytes) -> tuple[bytes, ZoneResolver]:
    record = v.record if v.record is not None else public_key_record(key) + v.record_tail
    zone = ZoneResolver.from_text(f"sel._domainkey.example.org. IN TXT {_txt(record)}\n"
                                  'example.org. IN TXT "v=spf1 ip4:192.0.2.1 -all"\n')
    sig = dkimpy.sign(MESSAGE, b"sel", b"example.org", key, identity=v.identity,
                      canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=v.algorithm)
    return sig + MESSAGE, zone


def _run_dkim(v: DkimVector, key: bytes) -> tuple[AuthResult, AuthResult, str]:
    message, zone = _dkim_case(v, key)
    [direct] = verify_dkim(message, zone)
    via = authenticate(message, "203.0.113.9", "mx.example.org", "alice@example.org", zone)
    return direct.result, via.dkim[0].result, direct.reason


@pytest.mark.parametrize("v", DKIM_VECTORS, ids=[v.id for v in DKIM_VECTORS])
def test_dkim_key_record_and_algorithm_vectors(v, key):
    direct, via, reason = _run_dkim(v, key)
    assert (direct, via) == (v.want, v.want), f"{v.rfc}: {reason}"


def test_rsa_sha1_keeps_its_reason_visible_rfc8301_3_1(key):
    message, zone = _dkim_case(DKIM_VECTORS[-2], key)
    [outcome] = verify_dkim(message, zone)
    assert "RFC 8301" in outcome.reason and outcome.algorithm == "rsa-sha1"
    from edrules.auth.headers import format_authentication_results

    header = format_authentication_results("mx.edrules.example", authenticate(
        message, "192.0.2.1", "mx.example.org", "alice@example.org", zone))
    assert "dkim=permerror (rsa-sha1 is not accepted, RFC 8301 3.1" in header


# dkimpy's own key-record fixtures, verified against a message signed with its test.private
DKIMPY_RECORDS = [("test.txt", AuthResult.PASS), ("badk.txt", AuthResult.PERMERROR),
                  ("badversion.txt", AuthResult.PERMERROR), ("test_tlsrpt.txt", AuthResult.PERMERROR),
                  ("test_bad.txt", AuthResult.PERMERROR)]


def _run_dkimpy_record(name: str) -> AuthResult:
    folder = CORPUS / "dkimpy_testdata"
    record = (folder / name).read_text().strip()
    key = (folder / "test.private").read_bytes()
    zone = ZoneResolver.from_text(f"test._domainkey.example.org. IN TXT {_txt(record)}\n")
    sig = dkimpy.sign(MESSAGE, b"test", b"example.org", key, canonicalize=(b"relaxed", b"relaxed"))
    [outcome] = verify_dkim(sig + MESSAGE, zone)
    return outcome.result


@pytest.mark.corpus
@pytest.mark.parametrize("name,want", DKIMPY_RECORDS)
def test_dkimpy_key_record_fixtures(corpus, name, want):
    assert _run_dkimpy_record(name) is want


# -- DMARC (RFC 7489) -------------------------------------------------------------------------


@dataclass(frozen=True)
class DmarcVector:
    id: str
    rfc: str
    records: tuple[tuple[str, str], ...]  # (owner, TXT value)
    from_domains: tuple[str, ...]
    aligned_pass: bool  # whether the client IP passes SPF for the (first) From domain
    want: tuple[AuthResult, str | None]  # (result, applied policy)


DMARC_VECTORS = [
    DmarcVector("basic-reject", "RFC 7489 6.6.2", (("_dmarc.a.example", "v=DMARC1; p=reject"),),
                ("a.example",), False, (AuthResult.FAIL, "reject")),
    DmarcVector("basic-pass", "RFC 7489 6.6.2", (("_dmarc.a.example", "v=DMARC1; p=reject"),),
                ("a.example",), True, (AuthResult.PASS, "none")),
    DmarcVector("none-published", "RFC 7489 6.6.3", (), ("a.example",), False, (AuthResult.NONE, None)),
    DmarcVector("org-fallback-sp", "RFC 7489 6.6.3 step 3", (("_dmarc.a.example", "v=DMARC1; p=reject; sp=quarantine"),),
                ("mail.a.example",), False, (AuthResult.FAIL, "quarantine")),
    DmarcVector("two-records", "RFC 7489 6.6.3 step 5",
                (("_dmarc.a.example", "v=DMARC1; p=reject"), ("_dmarc.a.example", "v=DMARC1; p=none")),
                ("a.example",), False, (AuthResult.NONE, None)),
    DmarcVector("two-records-no-fallback", "RFC 7489 6.6.3 step 5",
                (("_dmarc.mail.a.example", "v=DMARC1; p=none"), ("_dmarc.mail.a.example", "v=DMARC1; p=quarantine"),
                 ("_dmarc.a.example", "v=DMARC1; p=reject")),
                ("mail.a.example",), False, (AuthResult.NONE, None)),
    DmarcVector("lowercase-version-discarded", "RFC 7489 6.3 v= / 6.6.3 step 2",
                (("_dmarc.a.example", "v=dmarc1; p=reject"),), ("a.example",), False, (AuthResult.NONE, None)),
    DmarcVector("lowercase-version-falls-back", "RFC 7489 6.6.3 steps 2-3",
                (("_dmarc.mail.a.example", "v=dmarc1; p=none"), ("_dmarc.a.example", "v=DMARC1; p=reject")),
                ("mail.a.example",), False, (AuthResult.FAIL, "reject")),
    DmarcVector("version-suffix-discarded", "RFC 7489 6.3 v=",
                (("_dmarc.a.example", "v=DMARC1x; p=reject"),), ("a.example",), False, (AuthResult.NONE, None)),
    DmarcVector("version-not-first", "RFC 7489 6.3 v= first",
                (("_dmarc.a.example", "p=reject; v=DMARC1"),), ("a.example",), False, (AuthResult.NONE, None)),
    DmarcVector("non-dmarc-txt-ignored", "RFC 7489 6.6.3 step 2",
                (("_dmarc.a.example", "site-verification=1"), ("_dmarc.a.example", "v=DMARC1; p=quarantine")),
                ("a.example",), False, (AuthResult.FAIL, "quarantine")),
    DmarcVector("bad-pct-default", "RFC 7489 6.3 (syntax errors -> defaults)",
                (("_dmarc.a.example", "v=DMARC1; p=reject; pct=invalid"),), ("a.example",), False,
                (AuthResult.FAIL, "reject")),
    DmarcVector("bare-tag-ignored", "RFC 7489 6.3", (("_dmarc.a.example", "v=DMARC1; p=reject; tagonly"),),
                ("a.example",), False, (AuthResult.FAIL, "reject")),
    DmarcVector("empty-name-ignored", "RFC 7489 6.3", (("_dmarc.a.example", "v=DMARC1; p=reject; =value"),),
                ("a.example",), False, (AuthResult.FAIL, "reject")),
    DmarcVector("bad-adkim-default", "RFC 7489 6.3", (("_dmarc.a.example", "v=DMARC1; p=quarantine; adkim=x"),),
                ("a.example",), False, (AuthResult.FAIL, "quarantine")),
    DmarcVector("no-p-no-rua", "RFC 7489 6.6.3 step 6.2", (("_dmarc.a.example", "v=DMARC1; pct=50"),),
                ("a.example",), False, (AuthResult.NONE, None)),
    DmarcVector("no-p-rua", "RFC 7489 6.6.3 step 6.1",
                (("_dmarc.a.example", "v=DMARC1; rua=mailto:d@a.example"),), ("a.example",), False,
                (AuthResult.FAIL, "none")),
    DmarcVector("bad-p-rua", "RFC 7489 6.6.3 step 6.1",
                (("_dmarc.a.example", "v=DMARC1; p=maybe; rua=mailto:d@a.example"),), ("a.example",), False,
                (AuthResult.FAIL, "none")),
    DmarcVector("bad-sp-no-rua", "RFC 7489 6.6.3 step 6.2",
                (("_dmarc.a.example", "v=DMARC1; p=reject; sp=maybe"),), ("a.example",), False,
                (AuthResult.NONE, None)),
    DmarcVector("bad-p-bad-rua", "RFC 7489 6.6.3 step 6.2",
                (("_dmarc.a.example", "v=DMARC1; p=maybe; rua=not a uri"),), ("a.example",), False,
                (AuthResult.NONE, None)),
    DmarcVector("pct-zero-downgrades", "RFC 7489 6.6.4", (("_dmarc.a.example", "v=DMARC1; p=reject; pct=0"),),
                ("a.example",), False, (AuthResult.FAIL, "quarantine")),
    DmarcVector("multi-from-strictest", "RFC 7489 6.6.1",
                (("_dmarc.a.example", "v=DMARC1; p=quarantine"), ("_dmarc.b.example", "v=DMARC1; p=reject")),
                ("a.example", "b.example"), False, (AuthResult.FAIL, "reject")),
    DmarcVector("multi-from-one-fails", "RFC 7489 6.6.1",
                (("_dmarc.a.example", "v=DMARC1; p=reject"), ("_dmarc.b.example", "v=DMARC1; p=quarantine")),
                ("a.example", "b.example"), True, (AuthResult.FAIL, "quarantine")),
    DmarcVector("multi-from-no-records", "RFC 7489 6.6.1", (), ("a.example", "b.example"), False,
                (AuthResult.FAIL, None)),
]


def _run_dmarc(v: DmarcVector) -> tuple[AuthResult, str | None, str]:
    lines = [f'{owner}. IN TXT {_txt(value)}' for owner, value in v.records]
    lines += [f'{d}. IN TXT "v=spf1 ip4:192.0.2.1 -all"' for d in dict.fromkeys(v.from_domains)]
    zone = ZoneResolver.from_text("\n".join(lines) + "\n")
    froms = ", ".join(f"u{i}@{d}" for i, d in enumerate(v.from_domains))
    message = MESSAGE.replace(b"From: Alice <alice@example.org>", f"From: {froms}".encode())
    ip = "192.0.2.1" if v.aligned_pass else "203.0.113.9"
    r = authenticate(message, ip, "mx.sender.example", f"bounce@{v.from_domains[0]}", zone)
    return r.dmarc.result, (str(r.dmarc.policy) if r.dmarc.policy else None), r.dmarc.reason


@pytest.mark.parametrize("v", DMARC_VECTORS, ids=[v.id for v in DMARC_VECTORS])
def test_dmarc_discovery_record_and_policy_vectors(v):
    result, policy, reason = _run_dmarc(v)
    assert (result, policy) == v.want, f"{v.rfc}: {reason}"


def test_conformance_summary_counts_vectors_run_and_agreeing(key, capsys):
    dkim_ok = sum(_run_dkim(v, key)[:2] == (v.want, v.want) for v in DKIM_VECTORS)
    dmarc_ok = sum(_run_dmarc(v)[:2] == v.want for v in DMARC_VECTORS)
    extra = ""
    if (CORPUS / "dkimpy_testdata").is_dir():
        ok = sum(_run_dkimpy_record(n) is w for n, w in DKIMPY_RECORDS)
        extra = f", dkimpy key records {ok}/{len(DKIMPY_RECORDS)}"
    with capsys.disabled():
        print(f"\nRFC conformance vectors through edrules: DKIM {dkim_ok}/{len(DKIM_VECTORS)}, "
              f"DMARC {dmarc_ok}/{len(DMARC_VECTORS)}{extra}")
    assert (dkim_ok, dmarc_ok) == (len(DKIM_VECTORS), len(DMARC_VECTORS))
