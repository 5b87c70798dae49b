"""`edrules milter` behind a real Debian Postfix on 127.0.0.1, with an aiosmtpd sink as next hop.

Every test drives real SMTP: client -> postfix (smtpd_milters = our unix socket) -> sink.
"""

from __future__ import annotations

import json
import shutil
import smtplib
import subprocess
import sys
import threading
import time
import uuid
from email.utils import formatdate
from pathlib import Path

import pytest

from components import free_port
from postfix import (
    MilterProcess,
    Postfix,
    SmtpSink,
    make_keys,
    make_pack,
    require_pymilter,
    require_postfix,
    shared_tmpdir,
)

AUTHSERV = "mx.gateway.test"
RULES = """name: gateway-test
from_policy: strict
bulk_mailers:
  amazonses: block
actions:
  block: reject
  bulk: tag
  forgery: quarantine
allow:
  - sender: partner@partner.example
    scope: user:carol@corp.test
    id: carol-partner
block:
  - domain: rejected.example
    id: no-rejected
  - sender: nuisance@annoy.example
    scope: user:bob@corp.test
    id: bob-blocks-nuisance
"""
ZONE = """$ORIGIN friend.example.
@ IN TXT "v=spf1 ip4:127.0.0.1 -all"
$ORIGIN partner.example.
@ IN TXT "v=spf1 ip4:127.0.0.1 -all"
"""


def message(mail_from: str, header_from: str | None = None, subject: str = "hello", extra: str = "",
            body: str = "Hello there.\r\n") -> tuple[bytes, str]:
    mid = f"<{uuid.uuid4().hex}@client.example>"
    raw = (f"From: {header_from or mail_from}\r\nTo: bob@corp.test, carol@corp.test\r\n"
           f"Subject: {subject}\r\nDate: {formatdate()}\r\nMessage-ID: {mid}\r\n{extra}\r\n{body}")
    return raw.encode(), mid


class Rig:
    """keys + signed pack + state + milter + postfix + sink."""

    def __init__(self, root: Path, rules: str = RULES, version: str = "1"):
        require_postfix()
        require_pymilter()
        self.root = root
        self.priv, self.pub = make_keys(root / "keys")
        self.pack = make_pack(rules, root / "pack.json", self.priv, version=version)
        self.state = root / "state"
        (root / "zone.txt").write_text(ZONE)
        self.sink = SmtpSink().__enter__()
        self.metrics_port = free_port()
        self.milter = MilterProcess(self.pack, self.pub, self.state,
                                    args=("--zone", str(root / "zone.txt"), "--authserv-id", AUTHSERV,
                                          "--next-hop", "127.0.0.1:1",
                                          "--metrics", f"127.0.0.1:{self.metrics_port}")).start()
        self.postfix = Postfix(next_hop=self.sink.port, milter=self.milter.address).start()

    def close(self) -> None:
        self.postfix.__exit__(None, None, None)
        self.milter.cleanup()
        self.sink.__exit__(None, None, None)

    def send(self, raw: bytes, mail_from: str, rcpts=("bob@corp.test", "carol@corp.test")):
        return self.postfix.send(raw, mail_from, list(rcpts))

    def arrived(self, mid: str, n: int = 1, timeout: float = 20.0) -> list:
        deadline = time.monotonic() + timeout
        while True:
            got = [m for m in self.sink.messages if mid.encode() in m.data]
            if len(got) >= n or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def store(self):
        from edrules.runtime.store import SqliteQuarantineStore

        return SqliteQuarantineStore(self.state)

    def items_for(self, mid: str) -> list:
        st = self.store()
        return [i for i in st.list(state=None, limit=10000) if mid.encode() in st.raw(i.id)]

    def message_log(self, mid: str, timeout: float = 10.0) -> dict | None:
        return self.milter.wait_event(lambda e: e.get("event") == "message" and e.get("message_id") == mid,
                                      timeout)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(tmp_path_factory.mktemp("rig"))
    yield r
    r.close()


def test_clean_mail_is_delivered_with_our_authentication_results_and_the_forged_copy_removed(rig):
    forged = f"Authentication-Results: {AUTHSERV}; spf=pass smtp.mailfrom=x; dmarc=pass\r\n"
    raw, mid = message("alice@friend.example", extra=forged)
    rig.send(raw, "alice@friend.example")
    got = rig.arrived(mid)
    assert len(got) == 1 and sorted(got[0].rcpts) == ["bob@corp.test", "carol@corp.test"]
    msg = got[0].message
    ours = [v for v in msg.get_all("Authentication-Results") if v.strip().startswith(AUTHSERV)]
    assert len(ours) == 1, ours  # ours only; the client's copy under our id is gone
    assert "spf=pass smtp.mailfrom=alice@friend.example" in ours[0]
    assert "dmarc=pass" not in ours[0]
    assert msg["X-EDRules-Verdict"].startswith("deliver; category=clean; rule=default; pack=gateway-test/1")
    line = rig.message_log(mid)
    assert line["outcome"] == "accept" and line["pack"] == "gateway-test/1" and line["queue_id"]
    assert [r["action"] for r in line["recipients"]] == ["deliver", "deliver"]


def test_forgery_is_quarantined_for_bob_while_carol_whose_allow_entry_matches_gets_it(rig):
    raw, mid = message("partner@partner.example", header_from="ceo@corp.test", subject="wire transfer")
    rig.send(raw, "partner@partner.example")
    got = rig.arrived(mid)
    assert len(got) == 1 and got[0].rcpts == ["carol@corp.test"]
    items = rig.items_for(mid)
    assert [(i.recipient, i.category, i.state) for i in items] == [("bob@corp.test", "forgery", "quarantined")]
    assert items[0].pack_name == "gateway-test" and items[0].pack_version == "1" and items[0].queue_id
    line = rig.message_log(mid)
    assert {r["rcpt"]: r["action"] for r in line["recipients"]} == {"bob@corp.test": "quarantine",
                                                                     "carol@corp.test": "deliver"}
    assert {r["rcpt"]: r["rule_id"] for r in line["recipients"]}["carol@corp.test"] == "carol-partner"


def test_mail_blocked_for_every_recipient_is_refused_with_550_and_the_rule(rig):
    raw, mid = message("spam@rejected.example")
    with pytest.raises(smtplib.SMTPDataError) as exc:
        rig.send(raw, "spam@rejected.example")
    assert exc.value.smtp_code == 550
    text = exc.value.smtp_error.decode()
    assert "5.7.1" in text and "no-rejected" in text
    assert rig.arrived(mid, timeout=2) == []
    assert rig.items_for(mid) == []


def test_mixed_reject_quarantines_the_rejected_recipient_and_says_so(rig):
    raw, mid = message("nuisance@annoy.example")
    rig.send(raw, "nuisance@annoy.example")
    got = rig.arrived(mid)
    assert len(got) == 1 and got[0].rcpts == ["carol@corp.test"]
    (item,) = rig.items_for(mid)
    assert item.recipient == "bob@corp.test" and item.rule_id == "bob-blocks-nuisance"
    assert "quarantined because other recipients accepted the message" in item.reason


def test_bulk_mail_from_a_blocked_provider_is_tagged_and_delivered(rig):
    raw, mid = message("bounce@amazonses.com", header_from="news@amazonses.com")
    rig.send(raw, "bounce@amazonses.com")
    (got,) = rig.arrived(mid)
    assert got.message["X-EDRules-Verdict"].startswith("tag; category=bulk; rule=bulk:amazonses")


def test_release_reaches_the_sink_exactly_once_and_is_not_quarantined_again(rig):
    from edrules.runtime.release import release, release_key

    raw, mid = message("partner@partner.example", header_from="ceo@corp.test", subject="release me")
    rig.send(raw, "partner@partner.example")
    assert len(rig.arrived(mid)) == 1  # carol's copy
    (item,) = rig.items_for(mid)
    key = release_key(rig.state)
    hop = ("127.0.0.1", rig.postfix.port)
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        release(rig.store(), item.id, next_hop=hop, actor="support@corp.test", how="cli", key=key)))
        for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status for r in results) == ["already released", "already released", "released"]
    got = rig.arrived(mid, n=2)
    time.sleep(2)  # anything sent twice would have arrived by now
    got = rig.arrived(mid, n=3, timeout=0)
    assert [m.rcpts for m in got] == [["carol@corp.test"], ["bob@corp.test"]]
    released = got[1].message
    assert released.get("X-EDRules-Release") is None  # honoured, then removed
    assert "released" in released["X-EDRules-Verdict"]
    assert rig.store().get(item.id).state == "released"
    assert len(rig.items_for(mid)) == 1  # not quarantined a second time


def test_a_release_header_from_outside_does_not_bypass_the_policy(rig):
    from edrules.runtime.release import release_key, sign_release_header

    # A genuine header, signed for another message, replayed on a new forgery; and garbage.
    raw1, mid1 = message("partner@partner.example", header_from="ceo@corp.test", subject="first")
    rig.send(raw1, "partner@partner.example")
    rig.arrived(mid1)
    (item,) = rig.items_for(mid1)
    genuine = sign_release_header(release_key(rig.state), item, rig.store().raw(item.id))
    for header in (genuine, f"v=1; id={item.id}; r=bob@corp.test; exp=9999999999; fp=00; sig=AAAA"):
        raw2, mid2 = message("partner@partner.example", header_from="ceo@corp.test", subject="second",
                             extra=f"X-EDRules-Release: {header}\r\n")
        rig.send(raw2, "partner@partner.example")
        (got,) = rig.arrived(mid2)
        assert got.rcpts == ["carol@corp.test"]  # bob's copy still quarantined
        assert got.message.get("X-EDRules-Release") is None  # stripped from the delivered copy
        (held,) = rig.items_for(mid2)
        assert held.recipient == "bob@corp.test"
        assert b"X-EDRules-Release" not in rig.store().raw(held.id)


def test_concurrent_smtp_connections_quarantine_without_a_single_tempfail(rig):
    mids, errors = [], []

    def client() -> None:
        with smtplib.SMTP("127.0.0.1", rig.postfix.port, local_hostname="client.example", timeout=30) as s:
            for _ in range(5):
                raw, mid = message("partner@partner.example", header_from="ceo@corp.test", subject="burst")
                try:
                    s.sendmail("partner@partner.example", ["bob@corp.test", "carol@corp.test"], raw)
                    mids.append(mid)
                except smtplib.SMTPException as exc:
                    errors.append(str(exc))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(mids) == 20
    for mid in mids:
        assert [i.recipient for i in rig.items_for(mid)] == ["bob@corp.test"]


def test_status_shows_the_running_pack_and_its_signed_metadata(rig):
    out = subprocess.run([sys.executable, "-m", "edrules.cli", "milter", "status", "--state", str(rig.state),
                          "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["running"] and s["pid"] == rig.milter.pid
    assert s["pack"]["name"] == "gateway-test" and s["pack"]["version"] == "1"
    assert s["pack"]["metadata"] == {"version": "1"} and s["pack"]["signed_by"].startswith("ed25519:")


def test_prometheus_endpoint_counts_what_the_milter_did(rig):
    import urllib.request

    raw, mid = message("partner@partner.example", header_from="ceo@corp.test",
                       extra=f"Authentication-Results: {AUTHSERV}; dmarc=pass\r\n")
    rig.send(raw, "partner@partner.example")
    with pytest.raises(smtplib.SMTPDataError):
        rig.send(message("spam@rejected.example")[0], "spam@rejected.example")
    assert rig.message_log(mid)
    text = urllib.request.urlopen(f"http://127.0.0.1:{rig.metrics_port}/metrics", timeout=5).read().decode()
    counts = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("edrules_") and " " in line}
    assert counts['edrules_messages_total{outcome="accept"}'] >= 1
    assert counts['edrules_messages_total{outcome="reject"}'] >= 1
    assert counts['edrules_verdicts_total{action="quarantine",category="forgery"}'] >= 1
    assert counts['edrules_forged_headers_removed_total{header="authentication-results"}'] >= 1


def test_milter_down_means_the_client_is_told_to_retry(tmp_path):
    require_postfix()
    d = shared_tmpdir("edrules-nomilter-")
    with SmtpSink() as sink, Postfix(next_hop=sink.port, milter=f"unix:{d}/nobody.sock") as pf:
        raw, mid = message("alice@friend.example")
        with pytest.raises(smtplib.SMTPResponseException) as exc:
            pf.send(raw, "alice@friend.example", ["bob@corp.test"])
        assert 400 <= exc.value.smtp_code < 500
        assert sink.wait_for(1, timeout=2) == []
    shutil.rmtree(d, ignore_errors=True)


# -- reload and crash: their own milter, so the shared rig keeps its pack -----------------------


class Sender:
    """Sends numbered messages in a thread, retrying each on 4xx / connection errors like an MTA."""

    def __init__(self, rig: Rig, mail_from="partner@partner.example", header_from="ceo@corp.test"):
        self.rig, self.mail_from, self.header_from = rig, mail_from, header_from
        self.sent: list[str] = []
        self.retries = 0
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            raw, mid = message(self.mail_from, header_from=self.header_from, subject=f"load {len(self.sent)}")
            deadline = time.monotonic() + 60
            while True:
                try:
                    self.rig.send(raw, self.mail_from)
                    self.sent.append(mid)
                    break
                except (smtplib.SMTPResponseException, smtplib.SMTPServerDisconnected, OSError) as exc:
                    code = getattr(exc, "smtp_code", 0)
                    if code >= 500 or time.monotonic() > deadline:
                        self.errors.append(f"{mid}: {exc}")
                        break
                    self.retries += 1
                    time.sleep(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(90)


@pytest.fixture()
def own_rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def test_reload_of_a_tampered_pack_under_load_keeps_the_old_pack_serving(own_rig):
    r = own_rig
    good = r.pack.read_bytes()
    with Sender(r) as s:
        while len(s.sent) < 5:
            time.sleep(0.05)
        doc = json.loads(good)
        doc["policy"]["allow"] = []  # a change the signature does not cover
        r.pack.write_bytes(json.dumps(doc).encode())
        failed = r.milter.wait_event(lambda e: e.get("event") == "reload" and e.get("ok") is False)
        assert failed and "modified after signing" in failed["error"]
        assert failed["serving"] == "gateway-test/1"
        r.pack.write_text("{not json")
        subprocess.run([sys.executable, "-m", "edrules.cli", "milter", "reload", "--state", str(r.state)],
                       check=True, capture_output=True)
        sighup = r.milter.wait_event(lambda e: e.get("event") == "reload" and e.get("trigger") == "SIGHUP")
        assert sighup and sighup["ok"] is False and "not valid JSON" in sighup["error"]
        n_before = len(s.sent)
        while len(s.sent) < n_before + 5:
            time.sleep(0.05)
    assert s.errors == [] and s.retries == 0  # no message was refused or deferred meanwhile
    for mid in s.sent:
        line = r.message_log(mid)
        assert line["pack"] == "gateway-test/1"
        # the old pack (with carol's allow entry) decided every message
        assert {x["rcpt"]: x["action"] for x in line["recipients"]}["carol@corp.test"] == "deliver"
    status = json.loads(subprocess.run([sys.executable, "-m", "edrules.cli", "milter", "status", "--state",
                                        str(r.state), "--json"], capture_output=True, text=True).stdout)
    assert status["pack"]["version"] == "1" and status["last_reload"]["ok"] is False
    # A good, signed new pack is taken without a restart.
    make_pack(RULES.replace("gateway-test", "gateway-test-2"), r.pack, r.priv, version="2")
    ok = r.milter.wait_event(lambda e: e.get("event") == "reload" and e.get("ok") is True)
    assert ok and ok["pack"] == "gateway-test-2/2"
    raw, mid = message("alice@friend.example")
    r.send(raw, "alice@friend.example")
    assert r.message_log(mid)["pack"] == "gateway-test-2/2"


def test_kill_9_under_load_loses_and_duplicates_nothing(own_rig):
    r = own_rig
    with Sender(r) as s, Sender(r) as s2:
        for _ in range(3):  # three crashes, each while two clients are sending
            n = len(s.sent) + len(s2.sent)
            while len(s.sent) + len(s2.sent) < n + 8:
                time.sleep(0.02)
            r.milter.kill9()
            time.sleep(0.5)  # clients are told 4xx meanwhile (milter_default_action = tempfail)
            r.milter.start()
        n = len(s.sent) + len(s2.sent)
        while len(s.sent) + len(s2.sent) < n + 8:
            time.sleep(0.05)
    s.sent += s2.sent
    s.errors += s2.errors
    s.retries += s2.retries
    assert s.errors == []
    assert s.retries >= 1, "the kill should have deferred at least one message"
    assert r.postfix.wait_queue_empty(30)
    store = r.store()
    items = store.list(state=None, limit=100000)
    held: dict[str, list] = {}
    for i in items:
        raw = store.raw(i.id)
        mid = next(m for m in s.sent if m.encode() in raw) if any(m.encode() in raw for m in s.sent) else None
        held.setdefault(mid, []).append(i.recipient)
    delivered: dict[str, list] = {}
    for m in r.sink.messages:
        for mid in s.sent:
            if mid.encode() in m.data:
                delivered.setdefault(mid, []).extend(m.rcpts)
    for mid in s.sent:
        # every accepted message: carol got it once, bob's copy is in the store once
        assert delivered.get(mid) == ["carol@corp.test"], (mid, delivered.get(mid))
        assert held.get(mid) == ["bob@corp.test"], (mid, held.get(mid))
    assert None not in held  # nothing in the store that no client sent successfully
