"""Traffic report: per-domain volumes by verdict, category and provider that add up to the workbench's verdicts."""

from __future__ import annotations

import pytest

from support_env import TENANT, demo_db, make_site

from edrules.support.traffic import site_report
from edrules.workbench import Workbench


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return make_site(tmp_path_factory.mktemp("traffic-state"), demo_db(tmp_path_factory.getbasetemp()))


def test_volume_by_verdict_adds_up_to_the_workbench_action_counts_of_the_domain(site):
    report = site_report(site, [TENANT])
    with Workbench(site.dataset_db, dataset="demo") as wb:
        counts = wb.action_counts(site.current_policy(TENANT))
    by_action = report.volume("action").groupby("key")["recipients"].sum().to_dict()
    assert by_action == {k: v for k, v in counts.items() if k != "recipients"}
    assert report.totals()["recipients"] == counts["recipients"]
    assert set(report.volume("label")["key"]) >= {"ham", "spam", "phishing", "malware"}
    assert "amazonses" in set(report.volume("provider")["key"])


def test_top_quarantined_senders_lead_with_the_otp_sender_held_as_forgery(site):
    report = site_report(site, [TENANT])
    top = report.top_quarantined(20)
    row = top[top["sender"] == "donotreply@someotpsite.cz"].iloc[0]
    assert row["held"] > 0 and row["main_reason"] == "forgery"
    assert report.top_senders(5)["recipients"].is_monotonic_decreasing


def test_forgery_and_dmarc_over_time_count_every_recipient_row_once(site):
    report = site_report(site, [TENANT], unit="week")
    auth = report.auth_over_time()
    assert int(auth["recipients"].sum()) == len(report.rows)
    assert (auth["dmarc_pass"] + auth["dmarc_fail"] + auth["dmarc_other"] == auth["recipients"]).all()


def test_a_domain_without_history_gives_an_empty_report_not_an_error(site):
    report = site_report(site, ["exchangedefenderdemo.com"])
    assert report.empty and report.volume().empty and report.top_quarantined().empty
    for fig in (report.plot_volume(), report.plot_top(), report.plot_auth()):
        assert fig is not None
