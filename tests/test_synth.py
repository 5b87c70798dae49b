"""edrules synth: a reproducible, labelled demo tenant whose authentication verifies offline."""

from __future__ import annotations

import csv
import re
from datetime import date
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from pathlib import Path

import authres
import dkim
import dns.name
import dns.zone
import pytest
from click.testing import CliRunner

from edrules.auth import authenticate
from edrules.auth.resolver import ZoneResolver
from edrules.domains import org_domain
from edrules.errors import EdrulesError
from edrules.ingest.quarantine import REQUIRED, csv_fields
from edrules.ingest.readers import Unit
from edrules.synth import keys, synth_command, synthesize
from edrules.synth.world import GATEWAY, OTP_FROM

ROOT = Path(__file__).resolve().parent.parent
LABELS = ("ham", "spam", "phishing", "malware")
_parser = BytesHeaderParser(policy=compat32)
_RECEIVED = re.compile(r"from (\S+) \((\S+) \[(?:IPv6:)?([^\]]+)\]\)")


@pytest.fixture(scope="module")
def tenant(tmp_path_factory):
    """The default tenant (what `make demo` generates), written once for the module."""
    out = tmp_path_factory.mktemp("tenant")
    return synthesize(out)


def _messages(out: Path) -> list[Path]:
    return sorted(out.glob("*/*.eml"))


def _headers(path: Path):
    return _parser.parsebytes(path.read_bytes())


def _gateway_session(h) -> tuple[str, str, str, str]:
    """(envelope sender, HELO, client IP, A-R value) as the gateway recorded them."""
    received = re.sub(r"\s+", " ", h.get_all("Received")[0])
    helo, _rdns, ip = _RECEIVED.match(received).groups()
    return h["Return-Path"].strip("<>"), helo, ip, re.sub(r"\s+", " ", h["Authentication-Results"])


def _ar_results(ar: str) -> list[tuple[str, str, str | None]]:
    parsed = authres.AuthenticationResultsHeader.parse_value(ar)
    assert parsed.authserv_id == GATEWAY
    return sorted((r.method, r.result, getattr(r, "header_d", None)) for r in parsed.results)


def test_the_same_seed_writes_byte_identical_files(tmp_path):
    a = synthesize(tmp_path / "a", seed=11, users=3, days=3)
    b = synthesize(tmp_path / "b", seed=11, users=3, days=3)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(a.messages) > 20
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_a_different_seed_writes_different_messages(tmp_path):
    a = synthesize(tmp_path / "a", seed=1, users=3, days=3)
    b = synthesize(tmp_path / "b", seed=2, users=3, days=3)
    assert [m.path for m in a.messages] != [m.path for m in b.messages]


def test_a_rerun_into_the_same_folder_replaces_the_earlier_messages(tmp_path):
    synthesize(tmp_path, seed=1, users=3, days=3)
    second = synthesize(tmp_path, seed=2, users=3, days=2)
    assert len(_messages(tmp_path)) == len(second.messages)


def test_the_otp_case_arrives_through_amazon_ses_signed_by_the_brand_and_ses(tenant):
    otp = [p for p in _messages(tenant.out) if p.name.endswith("-ses_otp.eml")]
    assert len(otp) >= 5, "several OTP mails over the month"
    for path in otp:
        h = _headers(path)
        envelope, helo, ip, ar = _gateway_session(h)
        assert path.parent.name == "ham"
        assert getaddresses([h["From"]])[0][1] == OTP_FROM
        assert h["Delivered-To"] == tenant.ctx.otp_user.address
        assert re.fullmatch(r"01000[0-9a-f]{11}-[0-9a-f-]{36}-000000@amazonses\.com", envelope)
        assert re.fullmatch(r"a\d+-\d+\.smtp-out\.amazonses\.com", helo) and ip.startswith("54.240.")
        assert _ar_results(ar) == [("dkim", "pass", "amazonses.com"), ("dkim", "pass", "someotpsite.cz"),
                                   ("dmarc", "pass", None), ("spf", "pass", None)]
        assert "(p=quarantine dis=none)" in ar


def test_the_otp_mails_are_quarantined_as_forgeries_despite_the_allow_entry(tenant):
    otp = [m for m in tenant.messages if m.draft.scenario == "ses_otp"]
    assert {str(d.reason) for m in otp for _r, d in m.decisions} == {"forgery"}


def test_the_forged_someotpsite_mail_is_signed_only_by_amazonses_and_fails_dmarc(tenant):
    forged = [p for p in _messages(tenant.out) if p.name.endswith("-ses_forged_brand.eml")]
    assert forged
    for path in forged:
        h = _headers(path)
        envelope, _helo, _ip, ar = _gateway_session(h)
        assert path.parent.name == "phishing" and envelope.endswith("@amazonses.com")
        assert _ar_results(ar) == [("dkim", "pass", "amazonses.com"), ("dmarc", "fail", None), ("spf", "pass", None)]


def test_ceo_fraud_spoofs_the_ceo_address_or_borrows_her_name_on_a_passing_freemail_account(tenant):
    shapes = set()
    for path in (p for p in _messages(tenant.out) if p.name.endswith("-ceo_fraud.eml")):
        h = _headers(path)
        envelope, _helo, _ip, ar = _gateway_session(h)
        (name, address), = getaddresses([h["From"]])
        if address == tenant.ctx.ceo.address:
            shapes.add("spoofed address")
            assert org_domain(envelope.rpartition("@")[2]) != "northwind-traders.cz"
            assert "dmarc=fail (p=quarantine)" in ar and h["Reply-To"]
        else:
            shapes.add("display name")
            assert str(make_header(decode_header(name))) == tenant.ctx.ceo.user.name
            assert address == envelope
            assert "dmarc=pass" in ar
    assert shapes == {"spoofed address", "display name"}


def test_every_message_authenticates_through_the_auth_engine_as_its_headers_say(tenant):
    resolver = ZoneResolver.from_file(tenant.out / "zone.txt")
    for path in _messages(tenant.out):
        raw = path.read_bytes()
        envelope, helo, ip, ar = _gateway_session(_parser.parsebytes(raw))
        got = authenticate(raw, ip, helo, envelope, resolver)
        want = _ar_results(ar)
        computed = [("spf", str(got.spf.result), None)]
        computed += [("dkim", str(o.result), o.d) for o in got.dkim] or [("dkim", "none", None)]
        if any(method == "dmarc" for method, _r, _d in want):
            computed.append(("dmarc", str(got.dmarc.result), None))
        assert sorted(computed) == want, path.name


def test_dkim_signatures_verify_with_dkimpy_against_the_zone_file_parsed_by_dnspython(tenant):
    zone = dns.zone.from_text((tenant.out / "zone.txt").read_text(), origin=dns.name.root,
                              relativize=False, check_origin=False)

    def dnsfunc(name, timeout=5):
        node = zone.get_node(dns.name.from_text(name.decode()))
        rdataset = node and node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.TXT)
        return b"".join(rdataset[0].strings) if rdataset else None

    verified = 0
    for path in _messages(tenant.out):
        raw = path.read_bytes()
        ar = _gateway_session(_parser.parsebytes(raw))[3]
        # header.b (first 8 characters of b=) tells two signatures of one domain apart
        expected = {b: result for result, b in re.findall(r'dkim=(\w+)[^;]*? header\.b="([^"]+)"', ar)}
        d = dkim.DKIM(raw)
        for idx in range(sum(1 for k, _v in d.headers if k.lower() == b"dkim-signature")):
            try:
                ok = d.verify(idx=idx, dnsfunc=dnsfunc)
            except dkim.ValidationError:  # a mailing-list footer broke the author's body hash
                ok = False
            b8 = re.sub(rb"\s+", b"", d.signature_fields[b"b"])[:8].decode()
            assert ok == (expected[b8] == "pass"), (path.name, d.domain)
            verified += ok
    assert verified > 300


def test_the_zone_file_has_an_origin_block_per_domain_and_split_long_key_records(tenant):
    text = (tenant.out / "zone.txt").read_text()
    origins = re.findall(r"^\$ORIGIN (\S+)$", text, re.M)
    assert {"someotpsite.cz.", "amazonses.com.", "northwind-traders.cz.", "mcsv.net."} <= set(origins)
    assert len(origins) == len(set(origins)) > 10
    resolver = ZoneResolver.from_file(tenant.out / "zone.txt")
    (key,) = resolver.txt("nw2025._domainkey.northwind-traders.cz")
    assert key.startswith("v=DKIM1; k=rsa; p=") and len(key) > 255  # 2048-bit: several strings joined
    assert resolver.txt("_dmarc.someotpsite.cz") == ["v=DMARC1; p=quarantine; rua=mailto:dmarc@someotpsite.cz"]


def _readme_table(readme: str, heading: str) -> dict[str, list[str]]:
    section = readme.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_label_folder_counts_match_the_readme(tenant):
    table = _readme_table((tenant.out / "README.md").read_text(), "Label folders")
    assert set(table) == set(LABELS)
    for label in LABELS:
        assert int(table[label][0]) == len(list((tenant.out / label).glob("*.eml"))), label
    scenarios = _readme_table((tenant.out / "README.md").read_text(), "Scenarios")
    assert sum(int(row[1]) for row in scenarios.values()) == len(_messages(tenant.out))
    assert all(int(row[1]) > 0 for row in scenarios.values()), "every scenario occurs in the default month"


def test_the_committed_demo_tenant_is_byte_identical_to_a_fresh_default_generation(tenant):
    committed = ROOT / "data" / "demo-tenant"
    fresh = sorted(p.relative_to(tenant.out) for p in tenant.out.rglob("*") if p.is_file())
    on_disk = sorted(p.relative_to(committed) for p in committed.rglob("*")
                     if p.is_file() and p.parent.name != "keys")
    assert fresh == on_disk, "run `edrules synth` and commit data/demo-tenant"
    for rel in fresh:
        assert (committed / rel).read_bytes() == (tenant.out / rel).read_bytes(), rel


def test_the_demo_tenant_stays_small(tenant):
    total = sum(p.stat().st_size for p in tenant.out.rglob("*") if p.is_file())
    assert 300 <= len(tenant.messages) <= 1500 and total < 10_000_000


def test_the_quarantine_csv_parses_with_the_ingest_reader_and_names_existing_files(tenant):
    path = tenant.out / "quarantine.csv"
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert set(REQUIRED) <= set(rows[0])
    for line, row in enumerate(rows, 2):
        fields = csv_fields(Unit("csv", f"{path}:{line}", str(path), row=tuple(row.items()), line=line))
        assert fields["quarantine_state"] == "quarantined" and fields["recipients"]
        assert (tenant.out / row["eml"]).is_file()
        assert row["category"] == Path(row["eml"]).parent.name
    held = sum(1 for m in tenant.messages if any(str(d.action) == "quarantine" for _r, d in m.decisions))
    assert len(rows) == held
    reasons = {row["reason"] for row in rows}
    assert reasons == {"forgery", "spam", "phishing", "malware"}


def test_no_colleague_mail_is_quarantined(tenant):
    with (tenant.out / "quarantine.csv").open(newline="", encoding="utf-8") as f:
        assert not [r for r in csv.DictReader(f) if r["eml"].endswith("-colleague.eml")]


def test_too_few_users_is_refused_with_a_clear_error(tmp_path):
    with pytest.raises(EdrulesError, match="--users must be between 3 and 12"):
        synthesize(tmp_path, users=2)


def test_a_period_ending_in_the_future_is_refused(tmp_path):
    with pytest.raises(EdrulesError, match="must end before today"):
        synthesize(tmp_path, start=date.today(), days=2)


def test_the_synth_command_writes_the_tenant_and_prints_its_counts(tmp_path):
    result = CliRunner().invoke(synth_command, ["--out", str(tmp_path), "--users", "3", "--days", "2",
                                                "--start", "2025-10-06"])
    assert result.exit_code == 0, result.output
    n = len(_messages(tmp_path))
    assert result.output.startswith(f"{n} messages (ham ")
    assert "--start 2025-10-06" in (tmp_path / "README.md").read_text()


def test_a_missing_demo_key_is_created_once_and_then_reused(tmp_path):
    first = keys.load_or_create(tmp_path, "example.cz", "s1", 1024)
    assert keys.load_or_create(tmp_path, "example.cz", "s1", 1024) == first
    assert keys.key_bits(first) == 1024 and keys.public_txt(first).startswith("v=DKIM1; k=rsa; p=")
