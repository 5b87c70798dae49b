"""The rule-editor dashboard in a real browser: Voila serves it, headless Chromium edits a rule and compiles."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest

from components import require_chromium

from edrules.pack import load_pack
from edrules.rules.model import FromPolicy
from edrules.workbench import Workbench

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.browser]


@pytest.fixture(autouse=True)
def _chromium_present() -> None:
    require_chromium()  # skips on a developer's machine, fails in CI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory) -> Path:
    """data/ ingested by the demo's own ingest steps into a fresh database."""
    db = tmp_path_factory.mktemp("editor") / "edrules.duckdb"
    Workbench(db, read_only=False).load_demo(ROOT / "data", jobs=1)
    return db


@pytest.fixture(scope="module")
def voila(demo_db, tmp_path_factory):
    out = tmp_path_factory.mktemp("editor-out")
    port = _free_port()
    env = {**os.environ, "EDRULES_DB": str(demo_db), "EDRULES_DATA": str(ROOT / "data"), "EDRULES_OUT": str(out)}
    voila_bin = Path(sys.executable).with_name("voila")
    proc = subprocess.Popen(
        [str(voila_bin), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
         str(ROOT / "dashboards" / "rule-editor.ipynb")],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    # Ready when the port accepts connections: an HTTP GET of the page would already start
    # (and then abandon) a kernel.
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("voila exited: " + proc.stderr.read().decode(errors="replace")[-2000:])
            if time.monotonic() > deadline:
                pytest.fail("voila did not listen within 60 s")
            time.sleep(0.3)
    url = f"http://127.0.0.1:{port}/"
    try:
        yield url, out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def page(voila):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 1000})
        pg.goto(voila[0], timeout=120_000)
        pg.wait_for_selector(".edr-count[data-key=changed]", timeout=120_000)
        yield pg
        browser.close()


def count(page, key: str) -> str:
    return page.inner_text(f".edr-count[data-key={key}]").strip()


def test_rule_editor_page_opens_on_the_deployed_pack_with_no_changes(page):
    assert count(page, "changed") == "0"
    assert page.locator(".edr-entry").count() == 2  # the two user allow entries of current.yaml


def test_choosing_relaxed_in_the_browser_shows_the_forged_mail_it_lets_in(page, demo_db, voila):
    with Workbench(demo_db, dataset="demo") as wb:
        current = wb.pack(ROOT / "data" / "rules" / "current.yaml")
        expected = wb.whatif(current, replace(current, from_policy=FromPolicy.RELAXED)).counts()
    con = duckdb.connect(str(demo_db), read_only=True)
    forged_parcel = con.execute("""
        SELECT count(*) FROM recipients r JOIN messages m USING (dataset, msg_key)
        WHERE r.dataset = 'demo' AND m.category = 'phishing' AND m.header_from = 'notifikace@parcelzone.cz'
          AND r.recipient = 'eva.horakova@northwind-traders.cz'
          AND NOT coalesce(m.dmarc = 'fail' AND m.dmarc_policy IN ('quarantine', 'reject'), FALSE)""").fetchall()[0][0]
    con.close()
    page.click(".edr-from-policy button:has-text('relaxed')")
    page.wait_for_function(
        "n => document.querySelector('.edr-count[data-key=newly_delivered]').innerText.trim() === String(n)",
        arg=expected["newly_delivered"], timeout=60_000)
    assert count(page, "newly_delivered_forged") == str(expected["newly_delivered_forged"])
    assert count(page, "phishing") == str(forged_parcel) == "3"
    assert "parcelzone.cz" in page.inner_text(".edr-editor")
    assert page.locator(".edr-figure").first.is_visible()  # the what-if plot, drawn in the page
    # the drill-down lists the rows of the first (most alarming) group in full
    assert "parcelzone.cz" in page.inner_text(".edr-drill-rows")
    _screenshot(page, voila, "rule-editor.png")
    page.locator(".edr-drill-rows").scroll_into_view_if_needed()
    _screenshot(page, voila, "rule-editor-drilldown.png")


def _screenshot(page, voila, name: str) -> None:
    shot = voila[1] / name
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("EDRULES_SCREENSHOTS"):  # refresh docs/screenshots on request only
        Path(os.environ["EDRULES_SCREENSHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["EDRULES_SCREENSHOTS"]) / name)


def test_an_invalid_entry_in_the_browser_shows_the_parser_message_and_no_image(page, voila):
    before = page.locator(".edr-entry").count()
    page.click(".edr-add")
    page.wait_for_function(f"document.querySelectorAll('.edr-entry').length === {before + 1}", timeout=60_000)
    value = page.locator(".edr-entry").last.locator("input[placeholder='address, domain or CIDR']")
    value.fill("not an address")
    value.press("Enter")
    page.wait_for_selector(".edr-error", timeout=60_000)
    assert "do not compile" in page.inner_text(".edr-counts")
    assert not page.locator(".edr-figure").first.is_visible()  # hidden, not a broken image
    _screenshot(page, voila, "rule-editor-invalid.png")
    page.locator(".edr-entry").last.locator(".edr-remove").click()
    page.wait_for_selector(".edr-figure", state="visible", timeout=60_000)
    assert page.locator(".edr-entry").count() == before


def test_compile_in_the_browser_writes_a_pack_that_verifies_with_its_key(page, voila, demo_db):
    page.click(".edr-from-policy button:has-text('strict')")
    page.wait_for_function("document.querySelector('.edr-count[data-key=changed]').innerText.trim() === '0'",
                           timeout=60_000)
    page.fill(".widget-text:has-text('pack name') input", "northwind-browser")
    page.keyboard.press("Enter")
    page.click(".edr-compile")
    page.wait_for_selector(".edr-signed", timeout=60_000)
    out = voila[1]
    # signed with the demo's key: packs/keys next to the dataset
    loaded = load_pack(out / "northwind-browser.json", pubkey_path=demo_db.parent / "packs" / "keys" / "edrules-pack.pub")
    assert loaded.name == "northwind-browser" and loaded.signed_by is not None
    assert loaded.metadata["whatif"]["counts"]["changed"] == 0
