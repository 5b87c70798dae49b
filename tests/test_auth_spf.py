"""SPF: the official OpenSPF RFC 7208 / RFC 4408 suites through edrules' SPF layer and zone resolver."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import dns.name
import pytest
import yaml

from edrules.auth.resolver import ZoneResolver
from edrules.auth.spf import check_spf, spf_query
from edrules.facts import AuthResult

SUITE_DIR = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "spf_rfc7208_testsuite"
SUITES = ("rfc7208-tests.yml", "rfc4408-tests.yml")
TYPES = ("A", "AAAA", "MX", "PTR", "TXT", "CNAME")

# Known deviations of pyspf (through edrules) from the suites: test id -> why. Empty: every
# case of both suites passes (203 + 191). A new pyspf release that regresses fails loudly.
KNOWN_DEVIATIONS: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _no_live_dns(monkeypatch):
    monkeypatch.setenv("EDRULES_DNS", "offline")


# -- suite zonedata -> master-file text --------------------------------------------------


def _escape_txt(value: str) -> str:
    # The YAML writes raw octets as \xNN escapes (latin-1 code points): keep them as bytes.
    raw = value.encode("latin-1") if all(ord(c) < 256 for c in value) else value.encode("utf-8")
    body = "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\{b:03d}" for b in raw)
    return f'"{body}"'


def _owner(name: str) -> str | None:
    text = "".join(c if c.isalnum() or c in "-._*" else f"\\{ord(c):03d}" for c in name.rstrip("."))
    try:
        dns.name.from_text(text + ".")
    except dns.name.NameTooLong:
        return None  # a name DNS cannot hold; pyspf never queries it either
    return text + "."


def zone_text(zonedata: dict) -> tuple[str, list[tuple[str, str]]]:
    """The suite's zonedata as a zone file plus simulated timeouts.

    Driver conventions of the suite (README, pyspf's testspf.py): type SPF records are
    served as TXT when a name has no TXT entry (RFC 7208 dropped type SPF); `NONE` lists a
    type with no data; a bare `TIMEOUT` makes every type not listed before it time out.
    """
    lines, tempfail = [], []
    for name, rrs in zonedata.items():
        owner = _owner(name)
        if owner is None:
            continue
        has_txt = any(isinstance(r, dict) and "TXT" in r for r in rrs)
        listed: set[str] = set()
        for rr in rrs:
            if rr == "TIMEOUT":
                tempfail += [(name, t) for t in TYPES if t not in listed]
                continue
            ((rtype, value),) = rr.items()
            if rtype == "SPF":
                if has_txt:
                    continue
                rtype = "TXT"
            if value == "NONE":
                continue
            listed.add(rtype)
            if rtype == "TXT":
                parts = value if isinstance(value, list) else [value]
                lines.append(f"{owner} IN TXT " + (" ".join(_escape_txt(p) for p in parts) or '""'))
            elif rtype == "MX":
                lines.append(f"{owner} IN MX {value[0]} {value[1].rstrip('.')}.")
            elif rtype in ("PTR", "CNAME"):
                lines.append(f"{owner} IN {rtype} {value.rstrip('.')}.")
            else:
                lines.append(f"{owner} IN {rtype} {value}")
    return "\n".join(lines) + "\n", tempfail


@lru_cache(maxsize=None)
def _scenarios(suite: str) -> list[dict]:
    with open(SUITE_DIR / suite, "rb") as fh:
        return list(yaml.safe_load_all(fh))


@lru_cache(maxsize=None)
def _resolver(suite: str, index: int) -> ZoneResolver:
    text, tempfail = zone_text(_scenarios(suite)[index]["zonedata"])
    return ZoneResolver.from_text(text, tempfail=tempfail)


def _cases() -> list:
    if not SUITE_DIR.is_dir():
        return [pytest.param(None, None, None, marks=pytest.mark.skip(reason=f"corpus not present at {SUITE_DIR}"))]
    out = []
    for suite in SUITES:
        for i, scenario in enumerate(_scenarios(suite)):
            for tid in scenario["tests"]:
                marks = [pytest.mark.xfail(reason=KNOWN_DEVIATIONS[tid], strict=True)] if tid in KNOWN_DEVIATIONS else []
                out.append(pytest.param(suite, i, tid, id=f"{suite.split('-')[0]}:{tid}", marks=marks))
    return out


def _run(suite: str, index: int, tid: str) -> tuple[bool, str]:
    case = _scenarios(suite)[index]["tests"][tid]
    q = spf_query(case["host"], case["helo"], case["mailfrom"], _resolver(suite, index))
    q.set_default_explanation("DEFAULT")  # the suite's convention for the default text
    result, _code, explanation = q.check()
    want = case["result"] if isinstance(case["result"], list) else [case["result"]]
    ok = result in want and case.get("explanation") in (None, explanation)
    return ok, f"got {result} ({explanation!r}), want {want} ({case.get('explanation')!r})"


@pytest.mark.corpus
@pytest.mark.parametrize("suite,index,tid", _cases())
def test_openspf_suite_case_gives_the_expected_result_and_explanation(suite, index, tid):
    ok, detail = _run(suite, index, tid)
    assert ok, detail


@pytest.mark.corpus
def test_openspf_suites_pass_count_is_reported_and_complete(corpus, capsys):
    counts = {}
    for suite in SUITES:
        total = passed = 0
        for i, scenario in enumerate(_scenarios(suite)):
            for tid in scenario["tests"]:
                total += 1
                passed += _run(suite, i, tid)[0]
        counts[suite] = (passed, total)
    with capsys.disabled():
        print("\nOpenSPF suites through edrules:", ", ".join(f"{s} {p}/{t}" for s, (p, t) in counts.items()))
    assert counts["rfc7208-tests.yml"] == (203, 203)
    assert sum(p for p, _ in counts.values()) == sum(t for _, t in counts.values()) - len(KNOWN_DEVIATIONS)


# -- edrules' own API ----------------------------------------------------------------------

ZONE = """\
$ORIGIN example.com.
@        IN TXT "v=spf1 ip4:192.0.2.0/24 include:_spf.partner.example.net ~all"
mail     IN TXT "v=spf1 a -all"
mail     IN A   198.51.100.7
loose    IN TXT "v=spf1 ?all"
broken   IN TXT "v=spf1 ip4:192.0.2.300 -all"
$ORIGIN partner.example.net.
_spf     IN TXT "v=spf1 ip6:2001:db8::/32 -all"
"""


@pytest.fixture(scope="module")
def zone() -> ZoneResolver:
    return ZoneResolver.from_text(ZONE, tempfail=[("slow.example.com", "*")])


@pytest.mark.parametrize(
    "ip,sender,result",
    [
        ("192.0.2.25", "alice@example.com", AuthResult.PASS),
        ("2001:db8::25", "alice@example.com", AuthResult.PASS),  # via include
        ("203.0.113.9", "alice@example.com", AuthResult.SOFTFAIL),
        ("203.0.113.9", "bob@loose.example.com", AuthResult.NEUTRAL),
        ("203.0.113.9", "bob@broken.example.com", AuthResult.PERMERROR),
        ("203.0.113.9", "bob@nospf.example.org", AuthResult.NONE),
        ("203.0.113.9", "bob@slow.example.com", AuthResult.TEMPERROR),
    ],
)
def test_check_spf_returns_rfc8601_words_for_the_mail_from_domain(zone, ip, sender, result):
    outcome = check_spf(ip, "client.example", sender, zone)
    assert outcome.result is result
    assert outcome.domain == sender.rpartition("@")[2]
    assert outcome.identity == "mailfrom"


def test_null_sender_is_checked_against_the_helo_identity(zone):
    outcome = check_spf("198.51.100.7", "mail.example.com", "<>", zone)
    assert (outcome.result, outcome.domain, outcome.identity) == (AuthResult.PASS, "mail.example.com", "helo")
    assert check_spf("203.0.113.1", "mail.example.com", "", zone).result is AuthResult.FAIL


def test_an_unparsable_client_ip_is_a_permerror_not_a_traceback(zone):
    assert check_spf("not-an-ip", "h", "a@example.com", zone).result is AuthResult.PERMERROR


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sender=st.text(max_size=80), helo=st.text(max_size=80), ip=st.sampled_from(["192.0.2.1", "2001:db8::1", "300.1.1.1", ""]))
def test_check_spf_never_raises_on_hostile_identities(zone, sender, helo, ip):
    assert check_spf(ip, helo, sender, zone).result in set(AuthResult)


def test_a_check_that_runs_out_of_its_dns_time_budget_is_a_temperror(zone, monkeypatch):
    import edrules.auth.spf as spf_module

    monkeypatch.setattr(spf_module, "QUERY_TIME", -1.0)  # the budget is already spent
    assert check_spf("192.0.2.25", "h", "alice@example.com", zone).result is AuthResult.TEMPERROR
