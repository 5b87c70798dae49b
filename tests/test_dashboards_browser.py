"""Support dashboards in real headless Chromium against `edrules serve`, the real gateway store and a real SMTP sink.

One server per module over a state dir whose quarantine was filled by running the demo
tenant's mail through the runtime evaluator under the tenant's pack. Screenshots of every page
go to the test's temp dir; EDRULES_SCREENSHOTS=docs/screenshots refreshes the committed ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pyotp
import pytest

from components import CHROMIUM_ARGS, free_port, require_chromium, stop_pid, wait_for_port
from support_env import OTHER, SEED, TENANT, SmtpSink, add_for, copy_state, demo_db, populated_state

from edrules.pack import load_pack
from edrules.rules.model import FromPolicy
from edrules.runtime.tokens import make_token
from edrules.server.accounts import Accounts, Policy as SignInPolicy
from edrules.workbench import Workbench

pytestmark = [pytest.mark.browser]

MARTIN, EVA = "martin.kral@northwind-traders.cz", "eva.horakova@northwind-traders.cz"
ADMIN, OTHER_ADMIN, OPS = "admin@northwind-traders.cz", "admin@other-customer.test", "ops@provider.test"
PASSWORDS = {MARTIN: "martin-password-1", EVA: "eva-password-12", ADMIN: "admin-password-1",
             OTHER_ADMIN: "other-password-1", OPS: "ops-password-12"}
EVA_TOTP = pyotp.random_base32()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    require_chromium()
    base = tmp_path_factory.getbasetemp()
    db = demo_db(base)
    template = populated_state(base, db)
    tmp = tmp_path_factory.mktemp("dashboards")
    with SmtpSink() as sink:
        site = copy_state(template, tmp / "state", next_hop=f"127.0.0.1:{sink.port}")
        store = site.store()
        some = store.list(domains=[TENANT], limit=1)[0]
        bob = add_for(site, store.raw(some.id), "bob@other-customer.test")
        acc = Accounts(site.state_dir)
        acc.add(MARTIN, "user", (TENANT,), PASSWORDS[MARTIN])
        acc.add(EVA, "user", (TENANT,), PASSWORDS[EVA])
        acc.start_totp_enrolment(EVA, EVA_TOTP)
        acc.enable_totp(EVA, actor="test")
        acc.add(ADMIN, "domain_admin", (TENANT,), PASSWORDS[ADMIN])
        acc.add(OTHER_ADMIN, "domain_admin", ("other-customer.test",), PASSWORDS[OTHER_ADMIN])
        acc.add(OPS, "provider", (TENANT, OTHER, "other-customer.test"), PASSWORDS[OPS])
        port = free_port()
        log = open(tmp / "serve.log", "wb")
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("edrules")), "serve", "--state", str(site.state_dir),
             "--port", str(port), "--db", str(db)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "EDRULES_STATE": str(site.state_dir)})
        try:
            wait_for_port(port, 60)
            shots = tmp / "screenshots"
            shots.mkdir()
            yield {"site": site, "store": store, "sink": sink, "base": f"http://127.0.0.1:{port}/", "db": db,
                   "shots": shots, "accounts": acc, "bob": bob, "log": tmp / "serve.log"}
        finally:
            stop_pid(proc.pid)
            log.close()


@pytest.fixture(scope="module")
def browser(env):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield b
        b.close()


def shot(env, page, name: str) -> None:
    path = env["shots"] / name
    # Voila scrolls inside its own container, so a "full page" shot stops at the viewport: grow
    # the viewport to the content for the picture, then put it back.
    size = page.viewport_size
    height = page.evaluate("Math.max(document.body.scrollHeight, ...Array.from("
                           "document.querySelectorAll('.edr-page, .jp-OutputArea, main')).map(e => e.scrollHeight + 120))")
    page.set_viewport_size({"width": size["width"], "height": min(max(height, size["height"]), 6000)})
    page.wait_for_timeout(300)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)
    if os.environ.get("EDRULES_SCREENSHOTS"):
        dest = Path(os.environ["EDRULES_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / name)


def signed_in(browser, env, address: str, *, next_path: str | None = None):
    ctx = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = ctx.new_page()
    page.goto(env["base"] + "login" + (f"?next={next_path}" if next_path else ""))
    page.fill("#address", address)
    page.fill("#password", PASSWORDS[address])
    page.click("button[type=submit]")
    if address == EVA:
        page.wait_for_selector("#code")
        page.fill("#code", pyotp.TOTP(EVA_TOTP).now())
        page.click("button:has-text('Verify')")
    page.wait_for_function("!location.pathname.startsWith('/login')", timeout=30_000)
    return page


def open_dashboard(page, env, name: str, ready: str):
    page.goto(env["base"] + f"voila/render/{name}.ipynb", timeout=120_000)
    page.wait_for_selector(ready, timeout=120_000)
    return page


def link(env, item, purpose: str = "release", ttl: int = 3600) -> str:
    token = make_token(env["site"].release_key(), purpose, item.id, item.recipient, ttl)
    return env["base"] + f"quarantine/{purpose}?token={token}"


def items_of(env, recipient: str, category: str | None = None, state: str = "quarantined"):
    return env["store"].list(recipients=[recipient], category=category, state=state, limit=None)


# -- quarantine report ---------------------------------------------------------------------------


def test_release_from_the_quarantine_report_reaches_the_smtp_sink_exactly_once(browser, env):
    page = open_dashboard(signed_in(browser, env, MARTIN), env, "quarantine", ".edr-row")
    shot(env, page, "support-quarantine.png")
    first = page.locator(".edr-row").first
    item_id = first.locator("[data-id]").get_attribute("data-id")
    item = env["store"].get(item_id)
    assert item.recipient == MARTIN
    first.locator(".edr-open").click()
    page.wait_for_selector(".edr-detail .edr-trace")
    assert "Verdict today under northwind-current" in page.inner_text(".edr-detail")
    page.click(".edr-detail .edr-release")
    page.wait_for_selector(".edr-detail-outcome .edr-ok")
    assert f"released to {MARTIN}" in page.inner_text(".edr-detail-outcome")
    assert page.locator(".edr-detail .edr-release").is_disabled()
    shot(env, page, "support-quarantine-detail.png")
    delivered = [m for m in env["sink"].messages if MARTIN in m[1]]
    assert len(delivered) == 1 and delivered[0][2].startswith(b"X-EDRules-Release: ")
    assert env["store"].get(item_id).state == "released"
    assert env["store"].get(item_id).released_by == MARTIN


def test_a_user_sees_only_their_own_mail_in_the_report_and_filters_search_and_paging_work(browser, env):
    page = open_dashboard(signed_in(browser, env, MARTIN), env, "quarantine", ".edr-row")
    total = int(page.inner_text(".edr-pageinfo [data-key=total]"))
    assert total == len(items_of(env, MARTIN))
    for text in page.locator(".edr-row").all_inner_texts():
        assert MARTIN in text and EVA not in text
    page.click(".edr-next")
    page.wait_for_function("document.querySelector('.edr-pageinfo [data-key=page]').innerText === '2'")
    hits = env["store"].count(recipients=[MARTIN], state="quarantined", search="someotpsite")
    page.fill(".edr-search input", "someotpsite")
    page.press(".edr-search input", "Enter")
    page.wait_for_function(f"document.querySelector('.edr-pageinfo [data-key=total]').innerText === '{hits}'"
                           " && document.querySelector('.edr-pageinfo [data-key=page]').innerText === '1'")
    page.wait_for_timeout(300)
    rows = page.locator(".edr-row").all_inner_texts()
    assert rows and all("someotpsite" in r.lower() for r in rows)
    shot(env, page, "support-quarantine-search.png")


def test_another_domains_admin_sees_nothing_of_the_tenant_and_a_provider_sees_both(browser, env):
    page = open_dashboard(signed_in(browser, env, OTHER_ADMIN), env, "quarantine", ".edr-rows")
    page.wait_for_selector(".edr-row")
    assert page.inner_text(".edr-pageinfo [data-key=total]") == "1"
    assert "bob@other-customer.test" in page.inner_text(".edr-rows") and MARTIN not in page.inner_text(".edr-rows")
    page = open_dashboard(signed_in(browser, env, OPS), env, "quarantine", ".edr-row")
    assert int(page.inner_text(".edr-pageinfo [data-key=total]")) == len(
        env["store"].list(domains=[TENANT, "other-customer.test"], state="quarantined", limit=None))


def test_a_user_cannot_open_the_admin_pages_by_direct_url(browser, env):
    page = signed_in(browser, env, MARTIN)
    for name in ("wizard", "traffic"):
        r = page.goto(env["base"] + f"voila/render/{name}.ipynb")
        assert r.status == 403, name
    assert page.locator(".edr-row").count() == 0


def test_malware_cannot_be_self_released_from_the_report(browser, env):
    some = env["store"].list(domains=[TENANT], category="malware", limit=1)[0]
    owner = add_for(env["site"], env["store"].raw(some.id), MARTIN, "malware")
    page = open_dashboard(signed_in(browser, env, MARTIN), env, "quarantine", ".edr-row")
    page.select_option(".widget-dropdown:has-text('category') select", "malware")
    page.wait_for_selector(f".edr-item-{owner.id}")
    page.click(f".edr-item-{owner.id} .edr-open")
    page.wait_for_selector(".edr-detail .edr-trace")
    assert page.locator(".edr-detail .edr-release").is_disabled()
    assert "malware is never self-released" in page.inner_text(".edr-detail")
    assert env["store"].get(owner.id).state == "quarantined"


def test_trust_sender_from_the_report_shows_what_the_entry_lets_through_before_adding_it(browser, env):
    otp = next(i for i in items_of(env, MARTIN, "forgery") if (i.header_from or "").endswith("@someotpsite.cz"))
    page = open_dashboard(signed_in(browser, env, MARTIN), env, "quarantine", ".edr-row")
    page.fill(".edr-search input", "someotpsite")
    page.press(".edr-search input", "Enter")
    page.wait_for_selector(f".edr-item-{otp.id}")
    page.click(f".edr-item-{otp.id} .edr-open")
    page.wait_for_selector(".edr-detail .edr-trust")
    page.click(".edr-detail .edr-trust")
    page.wait_for_selector(".edr-trust-preview")
    text = page.inner_text(".edr-trust-preview")
    assert "allow sender donotreply@someotpsite.cz via amazonses [user:martin.kral@northwind-traders.cz]" in text
    assert "Lets through" in text and "Still checked" in text
    assert page.inner_text(".edr-trust-preview [data-key=trust-newly-delivered]") == "15"
    assert page.inner_text(".edr-trust-preview [data-key=trust-forged]") == "0"
    assert env["site"].overrides().entries() == ()  # nothing added before the confirmation
    shot(env, page, "support-trust-preview.png")
    page.click(".edr-trust-confirm")
    page.wait_for_selector(".edr-detail-outcome .edr-ok")
    [entry] = env["site"].overrides().entries()
    assert entry.value == "donotreply@someotpsite.cz" and entry.via.value == "amazonses"


# -- release links ---------------------------------------------------------------------------------


def test_a_get_of_a_release_link_releases_nothing_and_the_post_from_its_page_releases_once(browser, env):
    item = items_of(env, EVA, "spam")[0]
    url = link(env, item)
    for _ in range(3):  # a link scanner, a preview bot, a crawler
        r = httpx.get(url, follow_redirects=True)
        assert r.status_code == 200 and "Release this message?" in r.text
    page = browser.new_context(viewport={"width": 1000, "height": 800}).new_page()
    page.goto(url)
    page.wait_for_selector(".edr-confirm-page")
    shot(env, page, "support-release-confirm.png")
    assert env["sink"].to(EVA) == [] and env["store"].get(item.id).state == "quarantined"
    page.click("button.edr-confirm")
    page.wait_for_selector(".edr-released")
    shot(env, page, "support-release-done.png")
    assert len(env["sink"].to(EVA)) == 1 and env["store"].get(item.id).state == "released"
    page.go_back()  # the same form posted again: the link is used up
    page.wait_for_selector("button.edr-confirm, .edr-refused")
    if page.locator("button.edr-confirm").count():
        page.click("button.edr-confirm")
    page.wait_for_selector(".edr-refused[data-reason=used]")
    assert "This link was already used" in page.inner_text("body")
    shot(env, page, "support-link-used.png")
    assert len(env["sink"].to(EVA)) == 1


def test_an_expired_or_altered_release_link_is_refused_with_a_clear_page(browser, env):
    item = items_of(env, EVA, "spam")[1]
    page = browser.new_context(viewport={"width": 1000, "height": 700}).new_page()
    r = page.goto(link(env, item, ttl=-60))
    assert r.status == 410 and "This link has expired" in page.inner_text("body")
    shot(env, page, "support-link-expired.png")
    good = link(env, item)
    r = page.goto(good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB"))
    assert r.status == 400 and "This link is not valid" in page.inner_text("body")
    other = items_of(env, MARTIN, "spam")[0]  # a valid token of one item cannot act on another
    tok = good.split("token=")[1]
    r = httpx.post(env["base"] + "quarantine/release", data={"token": tok, "item": other.id})
    assert r.status_code in (400, 403)
    shot(env, page, "support-link-altered.png")
    assert env["store"].get(item.id).state == "quarantined" and env["store"].get(other.id).state == "quarantined"


def test_secure_release_demands_sign_in_with_mfa_and_the_recipients_own_account(browser, env):
    acc: Accounts = env["accounts"]
    acc.set_policy(SignInPolicy(TENANT, secure_release=True), actor="test")
    try:
        item = items_of(env, EVA, "spam")[2]
        url = link(env, item)
        anon = browser.new_context(viewport={"width": 1000, "height": 800}).new_page()
        anon.goto(url)
        anon.wait_for_selector("#password")
        assert "/login" in anon.url
        shot(env, anon, "support-secure-release-login.png")
        r = httpx.post(env["base"] + "quarantine/release", data={"token": url.split("token=")[1]})
        assert r.status_code == 403 and env["store"].get(item.id).state == "quarantined"
        # Signed in, but as another mailbox: refused.
        martin = signed_in(browser, env, MARTIN)
        martin.goto(url)
        assert "Not your message" in martin.inner_text("body")
        shot(env, martin, "support-secure-release-not-yours.png")
        # The password alone is not a sign-in for an account with TOTP: still the login.
        half = browser.new_context(viewport={"width": 1000, "height": 800}).new_page()
        half.goto(env["base"] + "login")
        half.fill("#address", EVA)
        half.fill("#password", PASSWORDS[EVA])
        half.click("button[type=submit]")
        half.wait_for_selector("#code")
        half.goto(url)
        assert half.locator(".edr-confirm-page").count() == 0
        # The recipient, with the second factor: the confirmation page, then the release.
        eva = signed_in(browser, env, EVA, next_path=url.replace(env["base"], "/"))
        eva.goto(url)
        eva.wait_for_selector(".edr-confirm-page")
        eva.click("button.edr-confirm")
        eva.wait_for_selector(".edr-released")
        assert env["store"].get(item.id).state == "released"
        assert any(a.how == "secure-release" and a.actor == EVA for a in env["store"].audit_log(item_id=item.id))
    finally:
        acc.set_policy(SignInPolicy(TENANT, secure_release=False), actor="test")


def test_a_trust_link_shows_the_entry_and_adds_it_only_on_post(browser, env):
    parcel = next(i for i in items_of(env, EVA, "forgery") if (i.header_from or "").endswith("@parcelzone.cz"))
    url = link(env, parcel, "trust")
    httpx.get(url)
    before = env["site"].overrides().entries()
    page = browser.new_context(viewport={"width": 1000, "height": 900}).new_page()
    page.goto(url)
    page.wait_for_selector(".edr-confirm-page")
    assert "This lets through" in page.inner_text("body") and "via" in page.inner_text(".edr-entry")
    assert env["site"].overrides().entries() == before
    shot(env, page, "support-trust-confirm.png")
    page.click("button.edr-confirm")
    page.wait_for_selector(".edr-trusted")
    after = env["site"].overrides().entries()
    assert len(after) == len(before) + 1 and after[-1].value == "notifikace@parcelzone.cz"
    assert str(after[-1].scope) == f"user:{EVA}" and after[-1].via is not None


# -- header analyzer -------------------------------------------------------------------------------


def test_the_header_analyzer_explains_the_seed_otp_example(browser, env):
    if not SEED.exists():
        pytest.skip("seed example missing")
    page = open_dashboard(signed_in(browser, env, OPS), env, "analyzer", ".edr-paste")
    page.select_option(".widget-dropdown:has-text('domain') select", OTHER)
    page.fill(".edr-paste textarea", SEED.read_text(encoding="utf-8"))
    page.click(".edr-analyze")
    page.wait_for_selector(".edr-explanation", timeout=60_000)
    text = page.inner_text(".edr-answer")
    assert ("The envelope sender is amazonses.com while the From says someotpsite.cz, and your From-policy is "
            "strict, so the gateway treats the From as forged and quarantines the message for "
            "demo@exchangedefenderdemo.com.") in text
    facts = page.inner_text(".edr-facts")
    assert "donotreply@someotpsite.cz" in facts and "54.240.77.69" in facts and "amazonses" in facts
    shot(env, page, "support-analyzer-seed.png")


def test_the_analyzer_ranks_safe_fixes_on_the_tenants_history_and_refuses_hostile_input(browser, env):
    ticket = (SEED.read_text(encoding="utf-8").replace("demo@exchangedefenderdemo.com", MARTIN)
              .replace("inbound10.exchangedefender.com", "mx1.northwind-traders.cz"))
    page = open_dashboard(signed_in(browser, env, ADMIN), env, "analyzer", ".edr-paste")
    page.fill(".edr-paste textarea", ticket)
    page.click(".edr-analyze")
    page.wait_for_selector(".edr-recommended", timeout=120_000)
    assert "allow sender donotreply@someotpsite.cz via amazonses" in page.inner_text(".edr-recommended")
    page.wait_for_selector(".edr-suggestions + .edr-figure img, .edr-figure img", timeout=60_000)
    shot(env, page, "support-analyzer-suggestions.png")
    with page.expect_file_chooser() as chooser:
        page.click(".edr-upload")
    chooser.value.set_files(files=[
        {"name": "attachment.eml", "mimeType": "message/rfc822", "buffer": bytes(range(256)) * 64}])
    page.wait_for_selector(".edr-status .edr-err", timeout=60_000)
    assert "binary data" in page.inner_text(".edr-status")
    page.fill(".edr-paste textarea", "Hi, my codes never arrive. Please help!\nMartin")
    page.click(".edr-analyze")
    page.wait_for_function("document.querySelector('.edr-status').innerText.includes('no header lines found')")
    shot(env, page, "support-analyzer-hostile.png")


# -- wizard and traffic ----------------------------------------------------------------------------


def test_the_traffic_report_charts_the_domain_and_adds_up_to_the_workbench(browser, env):
    site = env["site"]
    with Workbench(env["db"], dataset="demo") as wb:
        counts = wb.action_counts(site.current_policy(TENANT))
    page = open_dashboard(signed_in(browser, env, ADMIN), env, "traffic", ".edr-traffic .edr-figure img")
    assert page.inner_text(".edr-traffic [data-key=recipients]") == str(counts["recipients"])
    assert page.locator(".edr-traffic .edr-figure img").count() == 5
    assert "donotreply@someotpsite.cz" in page.inner_text(".edr-traffic")
    shot(env, page, "support-traffic.png")
    page = open_dashboard(signed_in(browser, env, OPS), env, "traffic", ".edr-traffic .edr-figure img")
    assert "all my domains" in page.inner_text(".widget-dropdown").replace("\xa0", " ")
    shot(env, page, "support-traffic-provider.png")


def test_every_page_links_the_account_and_mfa_settings(browser, env):
    page = signed_in(browser, env, ADMIN)
    for name in ("quarantine", "analyzer", "wizard", "traffic"):
        open_dashboard(page, env, name, ".edr-account")
        href = page.get_attribute(".edr-account", "href")
        assert href == "../../account", name
    with page.expect_navigation():
        page.click(".edr-account")
    assert page.url.endswith("/account") and ADMIN in page.inner_text("body")


def test_the_wizard_opens_at_first_login_and_its_what_if_equals_the_workbench_then_applies_a_signed_pack(browser, env):
    site = env["site"]
    page = signed_in(browser, env, ADMIN, next_path="/support")
    page.goto(env["base"] + "support")
    page.wait_for_selector(".edr-steps", timeout=120_000)
    assert "/voila/render/wizard.ipynb" in page.url
    assert "has not been set up yet" in page.inner_text(".edr-first-login")
    shot(env, page, "support-wizard-1-actions.png")
    page.click(".lm-TabBar-tab:has-text('From-policy')")
    page.click(".edr-from-policy button:has-text('aligned')")
    shot(env, page, "support-wizard-4-from-policy.png")
    page.click(".lm-TabBar-tab:has-text('DNS check')")
    page.click(".edr-dns-check")
    page.wait_for_selector(".edr-dns table")
    assert "ip4:203.0.113.0/28" in page.inner_text(".edr-dns")
    shot(env, page, "support-wizard-7-dns.png")
    page.click(".lm-TabBar-tab:has-text('review and apply')")
    page.click(".edr-measure")
    page.wait_for_selector(".edr-whatif [data-key=newly_delivered]", timeout=120_000)
    current = site.current_policy(TENANT)
    with Workbench(env["db"], dataset="demo") as wb:
        expected = wb.whatif(current, replace(current, from_policy=FromPolicy.ALIGNED)).counts()
    for key in ("total", "changed", "newly_delivered", "newly_delivered_forged", "newly_stopped"):
        assert page.inner_text(f".edr-whatif [data-key={key}]") == str(expected[key]), key
    shot(env, page, "support-wizard-8-whatif.png")
    page.click(".edr-apply")
    page.wait_for_selector(".edr-applied", timeout=60_000)
    loaded = load_pack(site.pack_path(TENANT), pubkey_path=site.pubkey)
    assert loaded.policy.from_policy is FromPolicy.ALIGNED and loaded.metadata["applied_by"] == ADMIN
    assert loaded.metadata["whatif"]["counts"]["newly_delivered"] == expected["newly_delivered"]
    assert any(a.action == "policy.apply" and a.how == "wizard" for a in env["store"].audit_log(actor=ADMIN))
    shot(env, page, "support-wizard-applied.png")
    page.goto(env["base"] + "support")  # configured now: the landing is the quarantine report
    page.wait_for_selector(".edr-rows", timeout=120_000)
    assert "/voila/render/quarantine.ipynb" in page.url


def test_bulk_delete_from_the_report_acts_on_the_selected_rows_only(browser, env):
    page = open_dashboard(signed_in(browser, env, MARTIN), env, "quarantine", ".edr-row")
    page.select_option(".widget-dropdown:has-text('category') select", "spam")
    page.wait_for_function("document.querySelectorAll('.edr-row').length > 3 && "
                           "[...document.querySelectorAll('.edr-row')].every(r => r.innerText.includes('spam'))")
    rows = page.locator(".edr-row")
    chosen = [rows.nth(i).locator("[data-id]").get_attribute("data-id") for i in (0, 1)]
    untouched = rows.nth(2).locator("[data-id]").get_attribute("data-id")
    for i in (0, 1):
        rows.nth(i).locator("input[type=checkbox]").check()
    page.select_option(".widget-dropdown:has(option[value=delete]) select", "delete")
    page.click(".edr-bulk")
    page.wait_for_selector(".edr-bulk-result")
    assert "delete: 2 of 2 done" in page.inner_text(".edr-bulk-result")
    shot(env, page, "support-quarantine-bulk.png")
    assert [env["store"].get(i).state for i in chosen] == ["deleted", "deleted"]
    assert env["store"].get(untouched).state == "quarantined"
