"""`edrules dns-check`: a correct domain and one domain per problem, from tests/zones/dnscheck.zone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edrules.auth.dnscheck import Severity, check_domain
from edrules.auth.resolver import ZoneResolver
from edrules.cli import cli
from edrules.errors import EdrulesError

ZONE = Path(__file__).parent / "zones" / "dnscheck.zone"
GATEWAY = {"gateway_mx": ["mx.gateway.example"], "gateway_relays": ["192.0.2.0/28"], "dkim_selectors": ["sel1"]}


@pytest.fixture(autouse=True)
def _no_live_dns(monkeypatch):
    monkeypatch.setenv("EDRULES_DNS", "offline")


@pytest.fixture(scope="module")
def zone() -> ZoneResolver:
    return ZoneResolver.from_file(ZONE)


# domain -> every finding of severity info or worse (each domain has exactly its one problem)
TABLE = {
    "good.example": set(),
    "edkey.example": set(),
    "nomx.example": {("error", "mx.missing")},
    "nullmx.example": {("info", "mx.null")},
    "bypass.example": {("warning", "mx.bypasses-gateway")},
    "elsewhere.example": {("error", "mx.not-gateway")},
    "deadmx.example": {("error", "mx.host-unresolvable"), ("warning", "mx.bypasses-gateway")},
    "nospf.example": {("error", "spf.missing")},
    "twospf.example": {("error", "spf.multiple")},
    "plusall.example": {("error", "spf.plus-all")},
    "neutral.example": {("warning", "spf.neutral-all")},
    "noall.example": {("warning", "spf.no-all")},
    "ptr.example": {("warning", "spf.ptr")},
    # a syntax error makes the whole record permerror, so the relays are not authorised either
    "syntax.example": {("error", "spf.syntax"), ("error", "spf.relay-not-authorised")},
    "badmech.example": {("error", "spf.syntax"), ("error", "spf.relay-not-authorised")},
    "brokeninclude.example": {("error", "spf.include-broken"), ("warning", "spf.void-lookup")},
    "lookups.example": {("error", "spf.too-many-lookups")},
    "void.example": {("error", "spf.void-lookups")},
    "relayless.example": {("error", "spf.relay-not-authorised")},
    "nodkim.example": {("error", "dkim.missing")},
    "weakkey.example": {("error", "dkim.weak-key")},
    "shortkey.example": {("info", "dkim.short-key")},
    "revoked.example": {("warning", "dkim.revoked")},
    "badkey.example": {("error", "dkim.bad-key")},
    "nodmarc.example": {("error", "dmarc.missing")},
    "monitor.example": {("warning", "dmarc.monitor-only")},
    "pct.example": {("warning", "dmarc.partial-pct")},
    "norua.example": {("warning", "dmarc.no-rua")},
    "baddmarc.example": {("error", "dmarc.invalid")},
    "twodmarc.example": {("error", "dmarc.multiple")},
    "weaksub.example": {("warning", "dmarc.weak-subdomains")},
    "strict.example": {("info", "dmarc.strict-alignment")},
    "sub.good.example": {("info", "dmarc.org-fallback")},
}


@pytest.mark.parametrize("domain,expected", sorted(TABLE.items()))
def test_each_domain_reports_exactly_its_problem(zone, domain, expected):
    report = check_domain(domain, zone, **GATEWAY)
    got = {(str(f.severity), f.code) for f in report.findings if f.severity >= Severity.INFO}
    assert got == expected, [f.message for f in report.findings]


def test_the_correct_domain_is_all_ok_with_its_lookup_counts(zone):
    report = check_domain("good.example", zone, **GATEWAY)
    assert report.worst is Severity.OK
    assert report.codes() == {"mx.ok", "spf.ok", "dkim.ok", "dmarc.ok"}
    assert (report.spf_lookups, report.spf_void_lookups) == (1, 0)


def test_lookup_and_void_counts_are_measured(zone):
    assert check_domain("lookups.example", zone, **GATEWAY).spf_lookups == 12
    assert check_domain("void.example", zone, **GATEWAY).spf_void_lookups == 3


@pytest.mark.parametrize("domain,code,fragment", [
    ("nomx.example", "mx.missing", "nomx.example. IN MX 10 mx.gateway.example."),
    ("nospf.example", "spf.missing", '"v=spf1 mx ip4:192.0.2.0/28 -all"'),
    ("relayless.example", "spf.relay-not-authorised",
     'relayless.example. IN TXT "v=spf1 ip4:203.0.113.0/24 ip4:192.0.2.0/28 -all"'),
    ("plusall.example", "spf.plus-all", 'plusall.example. IN TXT "v=spf1 ip4:192.0.2.0/28 -all"'),
    ("neutral.example", "spf.neutral-all", 'neutral.example. IN TXT "v=spf1 ip4:192.0.2.0/28 -all"'),
    ("noall.example", "spf.no-all", 'noall.example. IN TXT "v=spf1 ip4:192.0.2.0/28 -all"'),
    ("nodmarc.example", "dmarc.missing", '_dmarc.nodmarc.example. IN TXT "v=DMARC1; p=none; rua=mailto:'),
    ("nodkim.example", "dkim.missing", "sel1._domainkey.nodkim.example. IN TXT"),
    ("weakkey.example", "dkim.weak-key", "2048-bit"),
])
def test_problems_come_with_a_suggested_record_to_publish(zone, domain, code, fragment):
    [finding] = [f for f in check_domain(domain, zone, **GATEWAY).findings if f.code == code]
    assert fragment in (finding.suggestion or "")


def test_without_selectors_dkim_is_reported_as_not_checked(zone):
    report = check_domain("good.example", zone, gateway_relays=["192.0.2.0/28"])
    assert "dkim.not-checked" in report.codes(Severity.INFO)


def test_dns_timeouts_are_findings_not_exceptions():
    zone = ZoneResolver.from_text("", tempfail=[("slow.example", "*"), ("_dmarc.slow.example", "*")])
    report = check_domain("slow.example", zone)
    assert {"mx.dns-error", "spf.dns-error", "dmarc.dns-error"} <= report.codes(Severity.ERROR)


@pytest.mark.parametrize("kwargs,field", [
    ({"gateway_relays": ["192.0.2.0/33"]}, "--gateway-relays"),
    ({"gateway_relays": ["not-an-ip"]}, "--gateway-relays"),
])
def test_bad_arguments_are_edrules_errors_naming_the_option(zone, kwargs, field):
    with pytest.raises(EdrulesError) as err:
        check_domain("good.example", zone, **kwargs)
    assert err.value.location.field == field


def test_a_bare_word_is_not_a_domain(zone):
    with pytest.raises(EdrulesError, match="not a domain"):
        check_domain("localhost", zone)


# -- the command ---------------------------------------------------------------------------


def _run(*args: str):
    return CliRunner().invoke(cli, ["dns-check", *args], catch_exceptions=False)


def test_cli_prints_a_table_and_exits_zero_for_the_correct_domain():
    result = _run("good.example", "--zone", str(ZONE), "--gateway-mx", "mx.gateway.example",
                  "--gateway-relays", "192.0.2.0/28", "--dkim-selector", "sel1")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "good.example: ok"
    assert "spf" in result.output and "dmarc" in result.output


def test_cli_exits_one_and_shows_the_record_to_publish_when_something_is_wrong():
    result = _run("nodmarc.example", "--zone", str(ZONE))
    assert result.exit_code == 1
    assert "ERROR dmarc" in result.output and "publish: _dmarc.nodmarc.example." in result.output


def test_cli_json_output_lists_findings_with_severity_and_suggestion():
    result = _run("relayless.example", "--zone", str(ZONE), "--gateway-relays", "192.0.2.0/28,2001:db8::/64",
                  "--json")
    data = json.loads(result.output)
    assert data["domain"] == "relayless.example" and data["worst"] == "error"
    relays = [f for f in data["findings"] if f["code"] == "spf.relay-not-authorised"]
    assert len(relays) == 2 and {f["severity"] for f in relays} == {"error"}
    # one corrected record authorises both relays
    assert {f["suggestion"] for f in relays} == {
        'relayless.example. IN TXT "v=spf1 ip4:203.0.113.0/24 ip4:192.0.2.0/28 ip6:2001:db8::/64 -all"'}


def test_cli_reports_a_bad_zone_file_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.zone"
    bad.write_text("$ORIGIN x.example.\n@ IN MX ten mx.x.example.\n")
    with pytest.raises(EdrulesError) as err:
        _run("x.example", "--zone", str(bad))
    assert str(err.value).endswith(f"{bad}:2")


def test_cli_without_a_zone_uses_live_dns_which_tests_forbid():
    with pytest.raises(EdrulesError, match="EDRULES_DNS=offline"):
        _run("good.example")


def test_the_installed_edrules_command_returns_the_exit_codes(tmp_path):
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "edrules.cli", "dns-check", *args],
                              capture_output=True, text=True, timeout=60)

    assert run("good.example", "--zone", str(ZONE), "--gateway-relays", "192.0.2.0/28").returncode == 0
    assert run("nospf.example", "--zone", str(ZONE)).returncode == 1
    bad = run("good.example", "--zone", str(tmp_path / "absent.zone"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: cannot read zone file")
    assert "Traceback" not in bad.stderr


def _publish(zone_text: str, domain: str, suggestion: str) -> str:
    """The zone file after the admin publishes `suggestion` (replacing that record type)."""
    owner, _in, _txt, value = suggestion.split(" ", 3)
    label = "_dmarc" if owner.startswith("_dmarc.") else "@"
    prefix = '"v=DMARC1' if label == "_dmarc" else '"v=spf1'
    blocks = zone_text.split("$ORIGIN ")
    for i, block in enumerate(blocks):
        if block.startswith(f"{domain}.\n"):
            lines = [ln for ln in block.splitlines() if not (ln.startswith(f"{label} IN TXT {prefix}"))]
            blocks[i] = "\n".join(lines + [f"{label} IN TXT {value}"]) + "\n"
    return "$ORIGIN ".join(blocks)


FIXABLE = [d for d, codes in sorted(TABLE.items())
           if any(c.startswith(("spf.", "dmarc.")) and c not in ("spf.too-many-lookups", "dmarc.org-fallback",
                                                                  "dmarc.strict-alignment") for _s, c in codes)]


@pytest.mark.parametrize("domain", FIXABLE)
def test_publishing_the_suggested_record_clears_the_finding(domain):
    text = ZONE.read_text()
    for _round in range(2):  # SPF and DMARC suggestions are independent records
        report = check_domain(domain, ZoneResolver.from_text(text), **GATEWAY)
        todo = {f.suggestion for f in report.findings
                if f.area in ("spf", "dmarc") and f.severity >= Severity.WARNING and f.suggestion}
        for suggestion in todo:
            text = _publish(text, domain, suggestion.split(" (monitor")[0])
    after = check_domain(domain, ZoneResolver.from_text(text), **GATEWAY)
    left = {f.code for f in after.findings if f.area in ("spf", "dmarc") and f.severity >= Severity.WARNING}
    assert left == set(), [f.message for f in after.findings]


def test_every_dns_check_option_and_auth_entry_point_is_documented():
    from edrules.auth.cli import dns_check

    doc = (Path(__file__).resolve().parent.parent / "docs" / "auth.md").read_text()
    options = [opt for p in dns_check.params for opt in p.opts if opt.startswith("--")]
    assert options and all(f"`{o}" in doc or f" {o} " in doc or f"[{o}" in doc for o in options), options
    entry_points = ["authenticate(", "check_spf(", "verify_dkim(", "sign_dkim(", "lookup_dmarc(", "evaluate_dmarc(",
                    "verify_arc(", "seal_arc(", "format_authentication_results(", "check_domain(",
                    "ZoneResolver.from_file(", "ZoneResolver.from_text(", "DnsPythonResolver(", "EDRULES_DNS"]
    assert [e for e in entry_points if e not in doc] == []
    import re

    import edrules.auth.dnscheck as dnscheck_module
    import edrules.auth.spfcheck as spfcheck_module

    source = Path(dnscheck_module.__file__).read_text() + Path(spfcheck_module.__file__).read_text()
    codes = set(re.findall(r'"((?:mx|spf|dkim|dmarc)\.[a-z-]+)"', source))
    assert len(codes) > 30
    assert [c for c in sorted(codes) if f"`{c}`" not in doc] == []
