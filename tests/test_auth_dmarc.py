"""DMARC: alignment tables, record parsing, discovery with org-domain fallback, policy selection."""

from __future__ import annotations

import pytest

from edrules.auth.dmarc import (
    Alignment,
    Policy,
    RecordStatus,
    aligned,
    evaluate_dmarc,
    lookup_dmarc,
    parse_dmarc_record,
)
from edrules.auth.resolver import ZoneResolver
from edrules.facts import AuthResult

R, S = Alignment.RELAXED, Alignment.STRICT


@pytest.fixture(autouse=True)
def _no_live_dns(monkeypatch):
    monkeypatch.setenv("EDRULES_DNS", "offline")


@pytest.mark.parametrize("identifier,from_domain,mode,expected", [
    ("example.com", "example.com", S, True),
    ("example.com", "example.com", R, True),
    ("mail.example.com", "example.com", R, True),
    ("mail.example.com", "example.com", S, False),
    ("example.com", "news.example.com", R, True),
    ("a.example.com", "b.example.com", R, True),
    ("a.example.com", "b.example.com", S, False),
    ("evilexample.com", "example.com", R, False),
    ("example.com.evil.net", "example.com", R, False),
    # co.uk-style public suffixes: the org domain is one label below the suffix
    ("mail.shop.co.uk", "shop.co.uk", R, True),
    ("other.co.uk", "shop.co.uk", R, False),
    ("co.uk", "shop.co.uk", R, False),
    ("a.example.com.au", "b.example.com.au", R, True),
    ("amazonses.com", "someotpsite.cz", R, False),
    ("EXAMPLE.com.", "example.com", S, True),  # case and trailing dot are normalised
    (None, "example.com", R, False),
])
def test_identifier_alignment_table(identifier, from_domain, mode, expected):
    assert aligned(identifier, from_domain, mode) is expected


@pytest.mark.parametrize("text,status,fields", [
    ("v=DMARC1; p=reject; sp=quarantine; pct=50; adkim=s; aspf=r; rua=mailto:a@x.example,mailto:b@x.example",
     RecordStatus.OK, {"p": Policy.REJECT, "sp": Policy.QUARANTINE, "pct": 50, "adkim": S, "aspf": R,
                       "rua": ("mailto:a@x.example", "mailto:b@x.example")}),
    ("v=DMARC1;p=none", RecordStatus.OK, {"p": Policy.NONE, "sp": None, "pct": 100, "adkim": R, "rua": ()}),
    ("v=DMARC1; p=Quarantine;", RecordStatus.OK, {"p": Policy.QUARANTINE}),
    # RFC 7489 6.6.3 step 6: no valid p= (or an invalid sp=) with a valid rua= acts as p=none ...
    ("v=DMARC1; rua=mailto:a@x.example", RecordStatus.OK, {"p": Policy.NONE}),
    ("v=DMARC1; p=block; rua=mailto:a@x.example", RecordStatus.OK, {"p": Policy.NONE}),
    ("v=DMARC1; p=reject; sp=maybe; rua=mailto:a@x.example", RecordStatus.OK, {"p": Policy.NONE, "sp": None}),
    # ... and without one, DMARC is not applied (result none, never permerror)
    ("v=DMARC1; pct=100", RecordStatus.NONE, {}),
    ("v=DMARC1; p=block", RecordStatus.NONE, {}),
    ("v=DMARC1; p=reject; sp=maybe", RecordStatus.NONE, {}),
    ("v=DMARC1; p=block; rua=mailto:\udcc8@x.example", RecordStatus.NONE, {}),  # a URI is ASCII (RFC 3986)
    # RFC 7489 6.3: a syntax error in any other tag is ignored in favour of its default
    ("v=DMARC1; p=reject; pct=150", RecordStatus.OK, {"p": Policy.REJECT, "pct": 100}),
    ("v=DMARC1; p=reject; pct=ten", RecordStatus.OK, {"p": Policy.REJECT, "pct": 100}),
    ("v=DMARC1; p=reject; pct=invalid", RecordStatus.OK, {"p": Policy.REJECT, "pct": 100}),
    ("v=DMARC1; p=reject; adkim=x", RecordStatus.OK, {"p": Policy.REJECT, "adkim": R}),
    ("v=DMARC1; p=reject; garbage", RecordStatus.OK, {"p": Policy.REJECT}),
    ("v=DMARC1; p=reject; tagonly", RecordStatus.OK, {"p": Policy.REJECT}),
    ("v=DMARC1; p=reject; =value", RecordStatus.OK, {"p": Policy.REJECT}),
    ("v=DMARC1; p=reject; p=none", RecordStatus.OK, {"p": Policy.REJECT}),  # the first p= applies
    # RFC 7489 6.3: v= first, value exactly DMARC1; otherwise it is no DMARC record
    ("p=reject; v=DMARC1", RecordStatus.NONE, {}),
    ("v=dmarc1; p=reject", RecordStatus.NONE, {}),
    ("v=DMARC1x; p=reject", RecordStatus.NONE, {}),
])
def test_record_parsing_table_rfc7489_6_3_and_6_6_3(text, status, fields):
    rec = parse_dmarc_record(text, "example.com")
    assert rec.status is status, rec.errors
    for name, value in fields.items():
        assert getattr(rec, name) == value, name
    assert bool(rec.errors) is (status is RecordStatus.NONE)


def test_bad_report_uris_and_unknown_tags_are_warnings_not_errors():
    rec = parse_dmarc_record("v=DMARC1; p=reject; rua=ftp://x.example; foo=bar", "example.com")
    assert rec.status is RecordStatus.OK and rec.rua == ()
    assert any("rua" in w for w in rec.warnings) and any("foo" in w for w in rec.warnings)


ZONE = """\
$ORIGIN example.com.
_dmarc          IN TXT "v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@example.com"
_dmarc.own      IN TXT "v=DMARC1; p=none"
_dmarc.twice    IN TXT "v=DMARC1; p=reject"
_dmarc.twice    IN TXT "v=DMARC1; p=none"
_dmarc.noise    IN TXT "google-site-verification=abc"
_dmarc.noise    IN TXT "v=DMARC1; p=quarantine"
$ORIGIN shop.co.uk.
_dmarc          IN TXT "v=DMARC1; p=reject"
$ORIGIN co.uk.
_dmarc          IN TXT "v=DMARC1; p=reject; rua=mailto:never-used@co.uk"
$ORIGIN half.example.
_dmarc          IN TXT "v=DMARC1; p=reject; pct=25"
$ORIGIN nosp.example.
_dmarc          IN TXT "v=DMARC1; p=quarantine"
$ORIGIN broken.example.
_dmarc          IN TXT "v=DMARC1; p=sometimes"
$ORIGIN rescued.example.
_dmarc          IN TXT "v=DMARC1; p=sometimes; rua=mailto:d@rescued.example"
$ORIGIN lower.example.
_dmarc          IN TXT "v=dmarc1; p=none"
_dmarc.sub      IN TXT "v=DMARC1x; p=none"
_dmarc.bad      IN TXT "v=DMARC1; pct=50"
_dmarc.two      IN TXT "v=DMARC1; p=none"
_dmarc.two      IN TXT "v=DMARC1; p=none; rua=mailto:x@lower.example"
$ORIGIN org.example.
_dmarc          IN TXT "v=DMARC1; p=reject"
$ORIGIN big.example.
_dmarc          IN TXT "v=DMARC1; p=quarantine"
"""


@pytest.fixture(scope="module")
def zone() -> ZoneResolver:
    return ZoneResolver.from_text(ZONE, tempfail=[("_dmarc.slow.example", "*")])


@pytest.mark.parametrize("domain,found_at,fallback,status", [
    ("example.com", "example.com", False, RecordStatus.OK),
    ("deep.sub.example.com", "example.com", True, RecordStatus.OK),
    ("own.example.com", "own.example.com", False, RecordStatus.OK),
    ("twice.example.com", "twice.example.com", False, RecordStatus.NONE),
    ("noise.example.com", "noise.example.com", False, RecordStatus.OK),
    ("www.shop.co.uk", "shop.co.uk", True, RecordStatus.OK),
    ("slow.example", "slow.example", False, RecordStatus.TEMPERROR),
])
def test_discovery_falls_back_to_the_organisational_domain(zone, domain, found_at, fallback, status):
    rec = lookup_dmarc(domain, zone)
    assert (rec.domain, rec.org_fallback, rec.status) == (found_at, fallback, status)


def test_no_record_anywhere_is_none_and_never_asks_the_public_suffix(zone):
    assert lookup_dmarc("nothing.example.net", zone) is None
    assert lookup_dmarc("other.co.uk", zone) is None


def _eval(zone, from_domain, spf=("fail", None), dkim=(), sample=0.0):
    return evaluate_dmarc([from_domain], spf[0], spf[1], dkim, zone, sample=lambda: sample)


@pytest.mark.parametrize("from_domain,spf,dkim,result,policy", [
    # aligned SPF or DKIM pass
    ("example.com", ("pass", "bounce.example.com"), [], AuthResult.PASS, Policy.NONE),
    ("example.com", ("fail", "example.com"), [("mail.example.com", "pass")], AuthResult.PASS, Policy.NONE),
    # pass but not aligned
    ("example.com", ("pass", "amazonses.com"), [("amazonses.com", "pass")], AuthResult.FAIL, Policy.REJECT),
    ("example.com", ("fail", "example.com"), [("example.com", "fail")], AuthResult.FAIL, Policy.REJECT),
    # sp= for subdomains found via the org fallback, p= for the publishing domain
    ("news.example.com", ("fail", None), [], AuthResult.FAIL, Policy.QUARANTINE),
    ("own.example.com", ("fail", None), [], AuthResult.FAIL, Policy.NONE),
    ("sub.nosp.example", ("fail", None), [], AuthResult.FAIL, Policy.QUARANTINE),  # no sp: p applies
    ("www.shop.co.uk", ("fail", None), [], AuthResult.FAIL, Policy.REJECT),
    # errors and absence
    ("nothing.example.net", ("pass", "nothing.example.net"), [], AuthResult.NONE, None),
    ("twice.example.com", ("pass", "twice.example.com"), [], AuthResult.NONE, None),
    ("broken.example", ("pass", "broken.example"), [], AuthResult.NONE, None),
    ("rescued.example", ("fail", None), [], AuthResult.FAIL, Policy.NONE),
    ("slow.example", ("pass", "slow.example"), [], AuthResult.TEMPERROR, None),
])
def test_result_and_applied_policy_table(zone, from_domain, spf, dkim, result, policy):
    outcome = _eval(zone, from_domain, spf, dkim)
    assert (outcome.result, outcome.policy) == (result, policy), outcome.reason


def test_strict_alignment_rejects_subdomain_identifiers():
    rec = parse_dmarc_record("v=DMARC1; p=reject; adkim=s; aspf=s", "example.com")
    outcome = evaluate_dmarc(["example.com"], "pass", "bounce.example.com", [("mail.example.com", "pass")],
                             ZoneResolver.from_text(""), record=rec)
    assert outcome.result is AuthResult.FAIL and not outcome.spf_aligned and not outcome.dkim_aligned


@pytest.mark.parametrize("draw,applied", [(0.10, Policy.REJECT), (0.24, Policy.REJECT), (0.25, Policy.QUARANTINE),
                                          (0.90, Policy.QUARANTINE)])
def test_pct_samples_failing_mail_and_downgrades_the_rest_one_step(zone, draw, applied):
    outcome = _eval(zone, "half.example", sample=draw)
    assert (outcome.result, outcome.published_policy, outcome.policy) == (AuthResult.FAIL, Policy.REJECT, applied)


@pytest.mark.parametrize("from_domains,reason", [
    ([], "no From"),
    (["example.com", "example.com"], "2 From"),
    (["example.com", "evil.example"], "2 From"),
    ([None], "without a domain"),
])
def test_zero_or_several_from_mailboxes_fail(zone, from_domains, reason):
    outcome = evaluate_dmarc(from_domains, "pass", "example.com", [("example.com", "pass")], zone)
    assert outcome.result is AuthResult.FAIL and reason in outcome.reason


def test_evaluate_accepts_the_dkim_outcomes_verify_dkim_returns(zone):
    from edrules.auth.dkim import DkimOutcome

    sigs = [DkimOutcome("mail.example.com", "s1", AuthResult.PASS, "signature verified")]
    assert evaluate_dmarc(["example.com"], "fail", None, sigs, zone).result is AuthResult.PASS


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_record_parsing_never_raises_on_hostile_text(text):
    rec = parse_dmarc_record("v=DMARC1; " + text, "example.com")
    assert rec.status in set(RecordStatus)
    assert parse_dmarc_record(text, "example.com").status in set(RecordStatus)


# -- RFC 7489 6.6.3 policy discovery, step by step --------------------------------------------


def test_rfc7489_6_6_3_step_2_records_not_starting_exactly_v_dmarc1_are_discarded_and_the_org_domain_asked(zone):
    # _dmarc.lower.example holds only "v=dmarc1" (wrong case): discarded, so step 3 asks the
    # organisational domain, lower.example itself here -> nothing -> DMARC none.
    assert lookup_dmarc("lower.example", zone) is None
    # sub.lower.example: "v=DMARC1x" is discarded too; the org domain's record is also discarded
    assert lookup_dmarc("sub.lower.example", zone) is None


def test_rfc7489_6_6_3_step_5_several_records_mean_dmarc_is_not_applied_without_org_fallback(zone):
    rec = lookup_dmarc("two.lower.example", zone)
    assert rec.status is RecordStatus.NONE and rec.domain == "two.lower.example" and not rec.org_fallback
    outcome = _eval(zone, "twice.example.com")  # the org domain example.com has p=reject: not used
    assert (outcome.result, outcome.policy) == (AuthResult.NONE, None), outcome.reason


def test_rfc7489_6_6_3_step_6_a_record_without_p_or_rua_is_no_dmarc_and_no_org_fallback(zone):
    rec = lookup_dmarc("bad.lower.example", zone)
    assert rec.status is RecordStatus.NONE and rec.domain == "bad.lower.example"
    assert _eval(zone, "bad.lower.example").result is AuthResult.NONE


def test_rfc7489_6_6_3_step_6_1_an_invalid_p_with_a_valid_rua_acts_as_p_none(zone):
    outcome = _eval(zone, "rescued.example")
    assert (outcome.result, outcome.policy, outcome.published_policy) == (AuthResult.FAIL, Policy.NONE, Policy.NONE)
    assert "treated as p=none" in outcome.record.as_p_none


@pytest.mark.parametrize("domains,policy", [
    (["org.example", "big.example"], Policy.REJECT),
    (["big.example", "org.example"], Policy.REJECT),
    (["big.example", "nothing.example.net"], Policy.QUARANTINE),
    (["half.example", "nosp.example"], Policy.QUARANTINE),  # pct=25 draw 0.9 -> reject downgraded
])
def test_rfc7489_6_6_1_several_authors_get_the_most_strict_policy_of_the_failing_domains(zone, domains, policy):
    outcome = evaluate_dmarc(domains, "fail", None, [], zone, sample=lambda: 0.9)
    assert outcome.result is AuthResult.FAIL and outcome.policy is policy, outcome.reason
    assert "RFC 7489 6.6.1" in outcome.reason


def test_rfc7489_6_6_1_an_author_domain_that_passes_adds_no_policy(zone):
    outcome = evaluate_dmarc(["org.example", "big.example"], "fail", None, [("org.example", "pass")], zone)
    assert (outcome.result, outcome.policy) == (AuthResult.FAIL, Policy.QUARANTINE)
    outcome = evaluate_dmarc(["org.example", "org.example"], "pass", "org.example", [], zone)
    assert (outcome.result, outcome.policy) == (AuthResult.FAIL, None)  # from_invalid stays fail
