"""Digests sent through a real aiosmtpd server: content, signed links, schedules, never twice."""

from __future__ import annotations

import email
import re
from datetime import datetime, timedelta, timezone
from email import policy as email_policy

import pytest

from edrules.errors import EdrulesError
from edrules.runtime.digest import RELEASE_PATH, TRUST_PATH, send_digests, set_schedule
from edrules.runtime.release import release_key
from edrules.runtime.store import QuarantinedRecipient, SqliteQuarantineStore
from edrules.runtime.tokens import check_token
from tests.components import free_port
from tests.runtime_sink import SmtpSink

T0 = datetime(2026, 12, 1, 6, 0, tzinfo=timezone.utc)
BASE = "https://gw.corp.test/edrules"


def _raw(n: int, subject: str) -> bytes:
    return (f"From: Sender {n} <s{n}@brand.example>\r\nSubject: {subject}\r\n"
            f"Date: Mon, 30 Nov 2026 0{n % 10}:00:00 +0000\r\n\r\nbody {n}\r\n").encode()


def _hold(store, n, rcpt, subject="Offer", at=T0, category="spam"):
    return store.add(_raw(n, subject), [QuarantinedRecipient(rcpt, category, f"{category}: scanner said so", None)],
                     envelope_from=f"s{n}@brand.example", client_ip="192.0.2.1", helo="h", queue_id=f"Q{n}",
                     pack_name="acme", pack_version="1", received_at=at)[0]


@pytest.fixture()
def sink():
    with SmtpSink() as s:
        yield s


def _parts(data: bytes):
    msg = email.message_from_bytes(data, policy=email_policy.default)
    return (msg, msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content())


def test_a_digest_lists_sender_subject_date_reason_with_signed_links_to_confirmation_pages(tmp_path, sink):
    store = SqliteQuarantineStore(tmp_path)
    a = _hold(store, 1, "bob@corp.test", "Cheap <pills> & more")
    b = _hold(store, 2, "bob@corp.test", "Invoice")
    _hold(store, 3, "carol@corp.test", "Hello carol")
    key = release_key(tmp_path)
    reports = send_digests(store, smtp=("127.0.0.1", sink.port), base_url=BASE, key=key,
                           sender="quarantine@gw.corp.test", user="bob@corp.test", now=T0)
    assert [(r.recipient, r.status, set(r.item_ids)) for r in reports] == [("bob@corp.test", "sent", {a.id, b.id})]
    [got] = sink.messages
    assert got.rcpt_tos == ["bob@corp.test"]
    msg, text, htm = _parts(got.data)
    assert msg["To"] == "bob@corp.test" and "2 new messages" in msg["Subject"]
    for needle in ("s1@brand.example", "Cheap <pills> & more", "2026-11-30 01:00 UTC", "spam: scanner said so"):
        assert needle in text
    assert "Cheap &lt;pills&gt; &amp; more" in htm and "<pills>" not in htm
    links = re.findall(r"https://gw\.corp\.test/edrules(/quarantine/\w+)\?token=([A-Za-z0-9_.%-]+)", text)
    assert sorted({p for p, _ in links}) == [RELEASE_PATH, TRUST_PATH] and len(links) == 4
    claims = {(c.purpose, c.item_id, c.recipient) for c in
              (check_token(key, t, "release" if p == RELEASE_PATH else "trust") for p, t in links)}
    assert claims == {(p, i, "bob@corp.test") for p in ("release", "trust") for i in (a.id, b.id)}
    assert all(href in htm for href in (f"{BASE}{p}?token={t}" for p, t in links))


def test_a_daily_schedule_sends_each_item_once_and_waits_a_day_between_digests(tmp_path, sink):
    store = SqliteQuarantineStore(tmp_path)
    key = release_key(tmp_path)
    first = _hold(store, 1, "bob@corp.test")
    run = lambda now, force=False: {r.recipient: r for r in send_digests(
        store, smtp=("127.0.0.1", sink.port), base_url=BASE, key=key, now=now, force=force)}
    assert run(T0)["bob@corp.test"].item_ids == (first.id,)
    assert run(T0 + timedelta(minutes=5))["bob@corp.test"].status == "not due"
    # even forced (an operator re-running it by hand) an item already listed is not listed again
    assert run(T0 + timedelta(minutes=6), force=True)["bob@corp.test"].status == "nothing new"
    second = _hold(store, 2, "bob@corp.test", at=T0 + timedelta(hours=2))
    assert run(T0 + timedelta(hours=3))["bob@corp.test"].status == "not due"
    day2 = run(T0 + timedelta(days=1, seconds=-30))["bob@corp.test"]  # cron a little early is fine
    assert day2.status == "sent" and day2.item_ids == (second.id,)
    assert len(sink.messages) == 2
    assert first.id not in _parts(sink.messages[1].data)[1]


def test_weekly_and_off_schedules_per_user_and_domain(tmp_path, sink):
    store = SqliteQuarantineStore(tmp_path)
    key = release_key(tmp_path)
    _hold(store, 1, "bob@corp.test")
    _hold(store, 2, "carol@corp.test")
    _hold(store, 3, "dave@other.test")
    set_schedule(store, "weekly", domain="corp.test")
    set_schedule(store, "off", user="carol@corp.test")
    run = lambda now: {r.recipient: r.status for r in send_digests(store, smtp=("127.0.0.1", sink.port),
                                                                    base_url=BASE, key=key, now=now)}
    assert run(T0) == {"bob@corp.test": "sent", "carol@corp.test": "off", "dave@other.test": "sent"}
    _hold(store, 4, "bob@corp.test", at=T0 + timedelta(days=1))
    _hold(store, 5, "dave@other.test", at=T0 + timedelta(days=1))
    assert run(T0 + timedelta(days=2)) == {"bob@corp.test": "not due", "carol@corp.test": "off",
                                           "dave@other.test": "sent"}
    assert run(T0 + timedelta(days=7))["bob@corp.test"] == "sent"
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == ["bob@corp.test"] * 2 + ["dave@other.test"] * 2
    with pytest.raises(EdrulesError, match="schedule must be one of"):
        set_schedule(store, "hourly", user="bob@corp.test")


def test_a_failed_send_lists_the_items_again_next_time_and_released_items_are_not_listed(tmp_path, sink):
    store = SqliteQuarantineStore(tmp_path)
    key = release_key(tmp_path)
    a = _hold(store, 1, "bob@corp.test")
    b = _hold(store, 2, "bob@corp.test")
    [down] = send_digests(store, smtp=("127.0.0.1", free_port()), base_url=BASE, key=key, now=T0)
    assert down.status == "failed"
    store.mark_released(b.id, "bob", "page")
    [ok] = send_digests(store, smtp=("127.0.0.1", sink.port), base_url=BASE, key=key, now=T0 + timedelta(minutes=1))
    assert ok.status == "sent" and ok.item_ids == (a.id,)


def test_the_digest_cli_sends_once_per_schedule_and_sets_schedules(tmp_path, sink):
    import subprocess
    import sys
    from pathlib import Path

    store = SqliteQuarantineStore(tmp_path)
    _hold(store, 1, "bob@corp.test", at=datetime.now(timezone.utc))
    _hold(store, 2, "carol@corp.test", at=datetime.now(timezone.utc))
    root = Path(__file__).resolve().parents[1]
    run = lambda *a: subprocess.run([sys.executable, "-m", "edrules.cli", "digest", *a], capture_output=True,
                                    text=True, cwd=root)
    s = run("schedule", "--state", str(tmp_path), "--user", "carol@corp.test", "off")
    assert s.returncode == 0 and "digest schedule for carol@corp.test: off" in s.stdout
    args = ("--state", str(tmp_path), "--smtp", f"127.0.0.1:{sink.port}", "--base-url", BASE,
            "--from", "quarantine@gw.corp.test")
    first = run(*args)
    assert first.returncode == 0, first.stderr
    assert "bob@corp.test: 1 item" in first.stdout and "carol@corp.test: off" in first.stdout
    second = run(*args)
    assert "bob@corp.test: not due" in second.stdout and "0 digests sent" in second.stdout
    assert [m.rcpt_tos for m in sink.messages] == [["bob@corp.test"]]
    bad = run("--state", str(tmp_path))
    assert bad.returncode == 2 and "needs --smtp, --base-url" in bad.stderr


def test_malware_is_listed_in_the_digest_without_release_or_trust_links(tmp_path, sink):
    store = SqliteQuarantineStore(tmp_path)
    key = release_key(tmp_path)
    bad = _hold(store, 1, "bob@corp.test", "Your parcel", category="malware")
    ok = _hold(store, 2, "bob@corp.test", "Newsletter")
    [r] = send_digests(store, smtp=("127.0.0.1", sink.port), base_url=BASE, key=key, now=T0)
    assert set(r.item_ids) == {bad.id, ok.id}
    _, text, htm = _parts(sink.messages[0].data)
    tokens = re.findall(r"token=([A-Za-z0-9_.%-]+)", text)
    ids = {check_token(key, t.replace("%2E", "."), p).item_id for t in tokens for p in ("release", "trust")
           if _ok(key, t, p)}
    assert ids == {ok.id} and len(tokens) == 2
    assert "Your parcel" in text and "never released from a link" in text and "never released from a link" in htm


def _ok(key, token, purpose):
    from edrules.runtime.tokens import TokenError

    try:
        check_token(key, token, purpose)
        return True
    except TokenError:
        return False
