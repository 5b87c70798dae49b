"""The sign-in pages in real headless Chromium: password + TOTP, enrolment from the text secret, e-mailed code,
OIDC, lockout, and each domain policy taking effect. Saves a screenshot of every page to docs/screenshots/."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pyotp
import pytest

from components import CHROMIUM, CHROMIUM_ARGS, missing, require_chromium, stop_pid
from web_server import PASSWORD, add_accounts, code_and_link, start_serve, start_sink, write_oidc_settings

from edrules.server.accounts import Accounts, Policy

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "screenshots"

pytestmark = [pytest.mark.browser]

ACCOUNTS = [
    ("user@a.test", "user", ()), ("admin@a.test", "domain_admin", ("a.test",)),
    ("sp@provider.test", "provider", ("a.test", "c.test")), ("totp@a.test", "user", ()),
    ("enrol@a.test", "user", ()), ("code@a.test", "user", ()), ("oidc@a.test", "user", ()),
    ("lock@a.test", "user", ()), ("mfa@m.test", "user", ()), ("nocode@n.test", "user", ()),
    ("old@e.test", "user", ()), ("admin@m.test", "domain_admin", ("m.test",)),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require_chromium()
    try:
        from oidc_provider_mock import User, run_server_in_thread
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        missing(f"needs {exc.name} (pip install -e '.[test]')")
    state = tmp_path_factory.mktemp("web-state")
    store = add_accounts(state, ACCOUNTS)
    from edrules.workbench import Workbench

    db = state / "edrules.duckdb"  # the demo tenant, so the rule editor shows real data
    Workbench(db, read_only=False).load_demo(ROOT / "data", jobs=1)
    sink = start_sink()
    with run_server_in_thread(port=0, user_claims=[User(sub="oidc-sub", claims={"email": "oidc@a.test",
                                                                                 "email_verified": True})]) as idp:
        issuer = f"http://localhost:{idp.server_port}"
        served = start_serve(state, smtp_port=sink.port, db=db, env={"EDRULES_OUT": str(state / "out")},
                             oidc_file=write_oidc_settings(state / "oidc.yaml", issuer, label="Example ID"))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                try:
                    yield {"url": served.url, "store": store, "sink": sink, "browser": browser, "state": state}
                finally:
                    browser.close()
        finally:
            stop_pid(served.proc.pid)
            sink.controller.stop()


@pytest.fixture()
def page(world):
    ctx = world["browser"].new_context(viewport={"width": 1100, "height": 760})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    ctx.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"web-{name}.png"), full_page=True)


def password_step(page, url: str, address: str, password: str = PASSWORD, target: str = "") -> None:
    page.goto(url + target)
    page.fill("#address", address)
    page.fill("#password", password)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_load_state()


def fresh_code(secret: str) -> str:
    """A code from a 30-s window no earlier code of this test used (the server refuses replays)."""
    totp = pyotp.TOTP(secret)
    return totp.at(time.time())


def wait_next_window() -> None:
    time.sleep(30.5 - (time.time() % 30))


def test_password_and_totp_sign_in_reaches_the_dashboards(world, page):
    store: Accounts = world["store"]
    secret = pyotp.random_base32()
    store.start_totp_enrolment("totp@a.test", secret)
    store.enable_totp("totp@a.test", actor="test")
    page.goto(world["url"])
    assert "/login" in page.url
    shot(page, "login")
    password_step(page, world["url"], "totp@a.test")
    assert "/login/totp" in page.url
    shot(page, "totp")
    page.fill("#code", fresh_code(secret))
    page.click("text=Verify")
    page.wait_for_url(re.compile(r"/home$"))
    assert "totp@a.test" in page.inner_text("main")
    shot(page, "home-user")
    page.click("text=Who am I")
    page.wait_for_selector("#edrules-whoami")
    assert "totp@a.test" in page.inner_text("#edrules-whoami")
    assert "user" in page.inner_text("#edrules-whoami")
    shot(page, "dashboard-whoami")


def test_enrolment_from_the_text_secret_turns_on_totp_and_shows_recovery_codes(world, page):
    password_step(page, world["url"], "enrol@a.test")
    page.goto(world["url"] + "account")
    shot(page, "account")
    page.click("text=Set up an authenticator app")
    assert page.is_visible("img.qr")
    assert not page.is_visible("#text-secret")
    page.click("text=Can't scan? Show code")
    secret = page.inner_text("#text-secret").replace(" ", "")
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    shot(page, "enrol")
    page.fill("#code", pyotp.TOTP(secret).now())
    page.click("text=Confirm")
    codes = page.locator("#recovery-codes li").all_inner_texts()
    assert len(codes) == 10
    shot(page, "recovery-codes")
    assert world["store"].get("enrol@a.test").totp_enabled


def test_passwordless_sign_in_with_the_code_from_the_mail(world, page):
    page.goto(world["url"] + "login")
    page.click("text=E-mail me a sign-in code")
    shot(page, "code-request")
    page.fill("#address", "code@a.test")
    page.click("text=Send me a code")
    assert "Check your mail" in page.inner_text("h1")
    shot(page, "code-sent")
    code, link = code_and_link(world["sink"].last_to("code@a.test"))
    page.fill("#code", code)
    page.click("form[action='/login/code/verify'] button")
    page.wait_for_url(re.compile(r"/home$"))
    assert "code@a.test" in page.inner_text("main")
    cookie = next(c for c in page.context.cookies() if c["name"] == "edrules_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Lax"
    assert 29.9 * 86400 < cookie["expires"] - time.time() <= 30 * 86400 + 60


def test_passwordless_sign_in_with_the_magic_link_needs_the_press_of_its_button(world, page):
    page.goto(world["url"] + "login/code")
    page.fill("#address", "code@a.test")
    page.click("text=Send me a code")
    _, link = code_and_link(world["sink"].last_to("code@a.test"))
    page.goto(link)
    shot(page, "magic-link")
    assert not any(c["name"] == "edrules_session" for c in page.context.cookies())
    page.click("#magic-sign-in")
    page.wait_for_url(re.compile(r"/home$"))
    ctx2 = world["browser"].new_context()
    try:
        again = ctx2.new_page()
        again.goto(link)
        again.click("#magic-sign-in")
        assert "This link no longer works" in again.inner_text("main"), "single use"
        shot(again, "magic-link-used")
    finally:
        ctx2.close()
    page.goto(world["url"] + "logout")
    shot(page, "logout")
    page.click("main button:has-text('Sign out')")
    page.wait_for_url(re.compile(r"/login$"))
    page.goto(world["url"] + "home")
    assert "/login" in page.url


def test_oidc_sign_in_through_the_providers_page(world, page):
    page.goto(world["url"] + "login")
    page.click("text=Sign in with Example ID")
    page.wait_for_selector("input[name=sub]")
    shot(page, "oidc-provider")
    page.fill("input[name=sub]", "oidc-sub")
    page.click("button:has-text('Authorize')")
    page.wait_for_url(re.compile(r"/home$"))
    assert "oidc@a.test" in page.inner_text("main")


def test_repeated_bad_totp_codes_lock_the_account_with_a_clear_message(world, page):
    store: Accounts = world["store"]
    secret = pyotp.random_base32()
    store.start_totp_enrolment("lock@a.test", secret)
    store.enable_totp("lock@a.test", actor="test")
    password_step(page, world["url"], "lock@a.test")
    good = pyotp.TOTP(secret).now()
    bad = f"{(int(good) + 1) % 1_000_000:06d}"
    for _ in range(4):
        page.fill("#code", bad)
        page.click("text=Verify")
        assert "wrong or was already used" in page.inner_text("main")
    page.fill("#code", bad)
    page.click("text=Verify")
    text = page.inner_text("main")
    assert "Account locked" in text and re.search(r"locked until \d\d:\d\d UTC", text)
    shot(page, "lockout")
    # the right password and a right code are refused while locked
    password_step(page, world["url"], "lock@a.test")
    assert "locked until" in page.inner_text("main")
    assert any(a.action == "login.lockout" for a in store.audit_log(subject="lock@a.test"))


def test_mfa_required_policy_forces_enrolment_at_the_next_sign_in(world, page):
    store: Accounts = world["store"]
    password_step(page, world["url"], "admin@m.test")
    page.goto(world["url"] + "admin")
    shot(page, "admin")
    page.check("input[name=mfa_required]")
    page.click("#domain-m\\.test button:has-text('Save policy')")
    assert "Policy for m.test saved" in page.inner_text("main")
    assert store.policy("m.test").mfa_required
    ctx2 = world["browser"].new_context()
    p2 = ctx2.new_page()
    try:
        password_step(p2, world["url"], "mfa@m.test")
        assert "/login/enroll" in p2.url
        shot(p2, "enrol-forced")
        assert "m.test requires two-step verification" in p2.inner_text("main")
        enrol_url = p2.url
        p2.goto(world["url"] + "home")
        assert "/login" in p2.url and "/home" not in p2.url.split("?")[0], "no page before enrolment"
        p2.goto(enrol_url)
        p2.click("text=Can't scan? Show code")
        secret = p2.inner_text("#text-secret").replace(" ", "")
        p2.fill("#code", pyotp.TOTP(secret).now())
        p2.click("text=Confirm")
        assert p2.locator("#recovery-codes li").count() == 10
        p2.click("text=Continue")
        p2.wait_for_url(re.compile(r"/home$"))
        assert store.get("mfa@m.test").totp_enabled
    finally:
        ctx2.close()


def test_passwordless_disabled_policy_refuses_to_send_a_code(world, page):
    store: Accounts = world["store"]
    store.set_policy(Policy("n.test", passwordless_disabled=True), actor="test")
    before = world["sink"].count_to("nocode@n.test")
    page.goto(world["url"] + "login/code")
    page.fill("#address", "nocode@n.test")
    page.click("text=Send me a code")
    assert "turned off for n.test" in page.inner_text("main")
    shot(page, "code-disabled")
    time.sleep(0.5)
    assert world["sink"].count_to("nocode@n.test") == before


def test_password_expiry_policy_forces_a_new_password_at_password_sign_in(world, page):
    store: Accounts = world["store"]
    store.set_policy(Policy("e.test", password_expiry_days=30), actor="test")
    store.backdate_password("old@e.test", 45)
    password_step(page, world["url"], "old@e.test")
    assert "/login/new-password" in page.url
    shot(page, "password-expired")
    page.fill("#password", "a brand new passphrase")
    page.fill("#again", "a brand new passphrase")
    page.click("text=Save and continue")
    page.wait_for_url(re.compile(r"/home$"))
    assert not store.password_expired(store.get("old@e.test"))


def test_provider_sees_its_customers_and_the_rule_editor_behind_login(world, page):
    password_step(page, world["url"], "sp@provider.test")
    assert "Rule editor" in page.inner_text("main")
    page.goto(world["url"] + "admin")
    text = page.inner_text("main")
    assert "a.test" in text and "c.test" in text and "m.test" not in text
    page.goto(world["url"] + "voila/render/whoami.ipynb")
    page.wait_for_selector("#edrules-whoami")
    assert "service provider" in page.inner_text("#edrules-whoami")
    page.goto(world["url"] + "home")
    shot(page, "home-provider")
    page.click("text=Rule editor")
    page.wait_for_selector(".edr-count[data-key=changed]", timeout=120_000)
    assert page.inner_text(".edr-count[data-key=changed]").strip() == "0"
    assert page.locator(".edr-entry").count() == 2  # the deployed pack's allow entries, from the demo data
    shot(page, "rule-editor")


def test_a_user_opening_a_page_outside_its_role_gets_a_readable_refusal(world, page):
    password_step(page, world["url"], "user@a.test")
    page.goto(world["url"] + "admin")
    assert "You may not do that" in page.inner_text("main")
    shot(page, "forbidden")
