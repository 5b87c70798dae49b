"""`edrules dns-check`: a correct domain and one domain per problem, from tests/zones/dnscheck.zone."""

from __future__ import annotations

import json
import re
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
    # issue 8 item 8: problems whose first advice used to keep the permerror
    "plusall11.example": {("error", "spf.plus-all"), ("error", "spf.too-many-lookups"),
                          ("error", "spf.relay-not-authorised")},
    "includeloop.example": {("error", "spf.loop")},
    "selfredirect.example": {("error", "spf.loop")},
    "nestedmissing.example": {("error", "spf.include-broken"), ("warning", "spf.void-lookup")},
    "missinginclude.example": {("error", "spf.include-broken"), ("warning", "spf.void-lookup")},
    "lowerdmarc.example": {("error", "dmarc.invalid")},
    "unflattenable.example": {("warning", "spf.ptr"), ("error", "spf.too-many-lookups")},
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
])
def test_problems_come_with_a_suggested_record_to_publish(zone, domain, code, fragment):
    [finding] = [f for f in check_domain(domain, zone, **GATEWAY).findings if f.code == code]
    assert fragment in (finding.suggestion or "")


@pytest.mark.parametrize("domain,code,fragment", [
    ("nodkim.example", "dkim.missing", "sel1._domainkey.nodkim.example. IN TXT"),
    ("weakkey.example", "dkim.weak-key", "2048-bit"),
    ("bypass.example", "mx.bypasses-gateway", "remove the MX records for backup.bypass.example"),
    ("unflattenable.example", "spf.too-many-lookups", "cannot be flattened"),
])
def test_templates_and_manual_steps_are_advice_never_a_record_to_publish(zone, domain, code, fragment):
    [finding] = [f for f in check_domain(domain, zone, **GATEWAY).findings if f.code == code]
    assert finding.suggestion is None and fragment in finding.advice


def test_without_a_gateway_mx_a_missing_mx_gets_advice_not_a_template_record(zone):
    [finding] = check_domain("nomx.example", zone).findings[:1]
    assert finding.code == "mx.missing" and finding.suggestion is None and "IN MX 10 HOST" in finding.advice


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
    assert all(set(f) == {"area", "severity", "code", "message", "suggestion", "advice"} for f in data["findings"])
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


def _publish(zone_text: str, suggestion: str) -> str:
    """The zone file after an admin publishes `suggestion` ("owner. IN TYPE rdata"): the
    record replaces the owner's MX set, or its TXT records of the same kind, as text edits
    of the file (not through edrules' own overlay, so the check is independent)."""
    owner, _in, rtype, value = suggestion.split(" ", 3)
    owner = owner.rstrip(".")
    kind = None if rtype == "MX" else re.match(r'"(v=\w+)', value).group(1).lower()
    blocks = zone_text.split("$ORIGIN ")
    origins = [b.split("\n", 1)[0].rstrip(".") for b in blocks]
    # the block whose $ORIGIN is the longest suffix of the owner
    i = max((j for j, o in enumerate(origins) if o and (owner == o or owner.endswith("." + o))),
            key=lambda j: len(origins[j]))
    label = "@" if owner == origins[i] else owner[: -len(origins[i]) - 1]

    def same(line: str) -> bool:
        parts = line.split(None, 3)
        if len(parts) < 4 or parts[0] != label or parts[2] != rtype:
            return False
        return kind is None or parts[3].lstrip('"').lower().startswith(kind)

    lines = [ln for ln in blocks[i].splitlines() if not same(ln)]
    blocks[i] = "\n".join(lines + [f"{label} IN {rtype} {value}"]) + "\n"
    return "$ORIGIN ".join(blocks)


@pytest.mark.parametrize("domain", sorted(TABLE))
def test_every_published_suggestion_passes_a_rerun_of_dns_check_with_no_error(domain):
    """Issue 8 item 8: each `publish:` record, published into a copy of the zone, leaves no
    error from any check; what only a person can fix carries advice and no record."""
    text = ZONE.read_text()
    first = check_domain(domain, ZoneResolver.from_text(text), **GATEWAY)
    manual = {f.code for f in first.findings if f.severity >= Severity.ERROR and not f.suggestion}
    for _round in range(3):  # a DMARC p=none suggestion is followed by an enforcing one
        report = check_domain(domain, ZoneResolver.from_text(text), **GATEWAY)
        todo = sorted({f.suggestion for f in report.findings if f.suggestion})
        if not todo:
            break
        for suggestion in todo:
            text = _publish(text, suggestion)
    after = check_domain(domain, ZoneResolver.from_text(text), **GATEWAY)
    errors = {f.code for f in after.findings if f.severity >= Severity.ERROR}
    assert errors <= manual, [f.message for f in after.findings if f.severity >= Severity.ERROR]
    fixed_areas = {f.area for f in first.findings if f.suggestion}
    assert not [f for f in after.findings if f.area in fixed_areas and f.severity >= Severity.WARNING
                and f.code not in ("spf.ptr", "dmarc.org-fallback")], [f.message for f in after.findings]
    for f in after.findings:
        assert f.suggestion is None or f.severity < Severity.ERROR, f


def test_every_suggested_spf_record_is_within_the_lookup_limit_and_fits_txt_strings(zone):
    for domain in ("plusall11.example", "lookups.example"):
        report = check_domain(domain, zone, **GATEWAY)
        for f in report.findings:
            if f.suggestion:
                assert all(len(s) <= 255 for s in re.findall(r'"([^"]*)"', f.suggestion))
                published = ZoneResolver.from_text(_publish(ZONE.read_text(), f.suggestion))
                assert check_domain(domain, published, **GATEWAY).spf_lookups <= 10


def test_a_flattened_record_authorises_exactly_the_hosts_the_includes_did(zone):
    """RFC 7208 5.2: include matches when the included record gives pass; the flattened
    record must give the same result for addresses the includes authorised."""
    from edrules.auth.spf import check_spf

    report = check_domain("lookups.example", zone, **GATEWAY)
    [suggestion] = {f.suggestion for f in report.findings if f.suggestion}
    published = ZoneResolver.from_text(_publish(ZONE.read_text(), suggestion))
    for ip, want in (("192.0.2.40", "pass"), ("192.0.2.25", "pass"), ("192.0.2.1", "pass"),
                     ("203.0.113.9", "fail")):
        assert check_spf(ip, "h", "x@lookups.example", published).result == want, ip


def test_every_dns_check_option_and_auth_entry_point_is_documented():
    from edrules.auth.cli import dns_check

    doc = (Path(__file__).resolve().parent.parent / "docs" / "auth.md").read_text()
    options = [opt for p in dns_check.params for opt in p.opts if opt.startswith("--")]
    assert options and all(f"`{o}" in doc or f" {o} " in doc or f"[{o}" in doc for o in options), options
    entry_points = ["authenticate(", "check_spf(", "verify_dkim(", "sign_dkim(", "lookup_dmarc(", "evaluate_dmarc(",
                    "verify_arc(", "seal_arc(", "format_authentication_results(", "check_domain(",
                    "ZoneResolver.from_file(", "ZoneResolver.from_text(", "DnsPythonResolver(", "EDRULES_DNS"]
    assert [e for e in entry_points if e not in doc] == []

    import edrules.auth.dnscheck as dnscheck_module
    import edrules.auth.spfcheck as spfcheck_module

    source = Path(dnscheck_module.__file__).read_text() + Path(spfcheck_module.__file__).read_text()
    codes = set(re.findall(r'"((?:mx|spf|dkim|dmarc)\.[a-z-]+)"', source))
    assert len(codes) > 30
    assert [c for c in sorted(codes) if f"`{c}`" not in doc] == []


def test_cli_dns_check_on_binary_and_bind_zone_files_exits_two_or_works(tmp_path):
    """Issue 8 item 7: both printed "internal error" and exited 70."""
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "edrules.cli", "dns-check", *args],
                              capture_output=True, text=True, timeout=60)

    binary = tmp_path / "binary.zone"
    binary.write_bytes(bytes(range(256)) * 4)
    bad = run("example.com", "--zone", str(binary))
    assert bad.returncode == 2 and bad.stderr.startswith("error: bad zone file: not UTF-8 text")
    assert len(bad.stderr.strip().splitlines()) == 1 and f"{binary}:" in bad.stderr
    bind = tmp_path / "example.com.zone"
    bind.write_text("$ORIGIN example.com.\n$TTL 3600\n"
                    "@ IN SOA ns1.example.com. hostmaster.example.com. ( 1 7200 3600 1209600 3600 )\n"
                    "@ IN NS ns1\n@ IN MX 10 mx.gateway.example.\nns1 IN A 192.0.2.1\n"
                    '@ IN TXT "v=spf1 ip4:192.0.2.0/28 -all"\n'
                    '_dmarc IN TXT "v=DMARC1; p=reject; rua=mailto:d@example.com"\n'
                    "$ORIGIN gateway.example.\nmx IN A 192.0.2.25\n")
    ok = run("example.com", "--zone", str(bind), "--gateway-mx", "mx.gateway.example")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0] == "example.com: info"  # only dkim.not-checked
