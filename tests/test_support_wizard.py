"""Default Security Policy wizard: loads the domain's settings, measures with the workbench, applies a signed pack."""

from __future__ import annotations

from dataclasses import replace

import pytest

from support_env import TENANT, demo_db, make_site

from edrules.errors import EdrulesError
from edrules.pack import load_pack
from edrules.rules.model import FromPolicy
from edrules.support import wizard
from edrules.workbench import Workbench


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return demo_db(tmp_path_factory.getbasetemp())


@pytest.fixture
def site(tmp_path, db):
    return make_site(tmp_path / "state", db)


def test_the_wizard_loads_the_domains_current_pack_settings(site):
    s = wizard.load_settings(site, TENANT)
    assert s.from_policy == "strict"
    assert s.actions["malware"] == "quarantine" and s.retention_days["spam"] == 30
    assert s.bulk_mailers["amazonses"] == "scan"
    assert not s.configured and wizard.needs_wizard(site, TENANT)


def test_the_wizard_what_if_equals_the_workbench_what_if_for_the_same_change(site, db):
    current = site.current_policy(TENANT)
    s = wizard.load_settings(site, TENANT).with_(from_policy="aligned")
    proposed, text = wizard.proposed_policy(current, s)
    with Workbench(db, dataset="demo") as wb:
        numbers = wizard.whatif_numbers(wb, current, proposed)
        expected = wb.whatif(current, replace(current, from_policy=FromPolicy.ALIGNED)).counts()
    assert numbers.as_dict() == expected
    assert numbers.newly_delivered == 59 and numbers.newly_delivered_forged == 0  # README's what-if
    assert "otp-codes" in text  # the domain's entries are kept


def test_a_bad_relay_or_a_delivered_malware_action_is_refused_with_the_field(site):
    current = site.current_policy(TENANT)
    s = wizard.load_settings(site, TENANT)
    with pytest.raises(EdrulesError, match=r"not an IP address or CIDR: '10.0.0.300' in wizard \(inbound.relays\[0\]\)"):
        wizard.proposed_policy(current, s.with_(inbound_relays=("10.0.0.300",)))
    with pytest.raises(EdrulesError, match="malware is never delivered"):
        wizard.proposed_policy(current, s.with_(actions={**s.actions, "malware": "deliver"}))
    with pytest.raises(EdrulesError, match="every message would be rejected"):
        wizard.proposed_policy(current, s.with_(inbound_enforce=True))


def test_applying_writes_the_rules_and_a_pack_signed_by_the_gateways_key_and_audits_it(site, db):
    audit = []
    s = wizard.load_settings(site, TENANT).with_(
        from_policy="aligned", retention_days={**wizard.load_settings(site, TENANT).retention_days, "spam": 14},
        report=wizard.ReportSchedule("weekly", 7, "friday"))
    current = site.current_policy(TENANT)
    proposed, _ = wizard.proposed_policy(current, s)
    with Workbench(db, dataset="demo") as wb:
        numbers = wizard.whatif_numbers(wb, current, proposed)
    applied = wizard.apply_settings(site, TENANT, s, actor="admin@northwind-traders.cz", numbers=numbers,
                                    audit=lambda *a, **k: audit.append((a, k)))
    loaded = load_pack(site.pack_path(TENANT), pubkey_path=site.pubkey)
    assert loaded.policy.from_policy is FromPolicy.ALIGNED and loaded.policy.retention_days["spam"] == 14
    assert loaded.metadata["applied_by"] == "admin@northwind-traders.cz"
    assert loaded.metadata["whatif"]["counts"]["newly_delivered"] == 59
    assert applied.rules_path.read_text().startswith("name: northwind-current")
    assert audit and audit[0][0][:3] == ("admin@northwind-traders.cz", "policy.apply", "wizard")
    again = wizard.load_settings(site, TENANT)
    assert again.from_policy == "aligned" and again.report.frequency == "weekly" and again.configured
    assert not wizard.needs_wizard(site, TENANT)


def test_the_dns_step_reports_the_spf_record_to_publish_for_the_gateway_relays(site):
    report = wizard.dns_report(site, TENANT)
    spf = [f for f in report.findings if str(f.area) == "spf" and f.suggestion]
    assert spf and "ip4:203.0.113.0/28" in spf[0].suggestion
