"""Release to a real aiosmtpd next hop: exactly once, audited; release header; link tokens."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest

from edrules.runtime.release import (
    RELEASE_HEADER,
    message_fingerprint,
    release,
    release_key,
    sign_release_header,
    strip_release_headers,
    verify_release_header,
)
from edrules.runtime.store import QuarantinedRecipient, SqliteQuarantineStore
from edrules.runtime.tokens import TokenError, check_token, consume, make_token
from tests.components import free_port
from tests.runtime_sink import SmtpSink

RAW = (b"From: Alice <alice@brand.example>\r\nTo: bob@corp.test, carol@corp.test\r\n"
       b"Subject: Invoice\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nPlease pay.\r\n")


@pytest.fixture()
def store(tmp_path):
    return SqliteQuarantineStore(tmp_path / "state")


@pytest.fixture()
def sink():
    with SmtpSink() as s:
        yield s


def _two(store):
    return store.add(RAW, [QuarantinedRecipient("bob@corp.test", "spam", "spam", "category:spam"),
                           QuarantinedRecipient("carol@corp.test", "spam", "spam", "category:spam")],
                     envelope_from="bounce@brand.example", client_ip="192.0.2.10", helo="mx.brand.example",
                     queue_id="Q1", pack_name="acme", pack_version="7")


def test_release_delivers_to_the_next_hop_once_for_exactly_that_recipient_with_a_valid_header(store, sink):
    bob, carol = _two(store)
    key = release_key(store.state_dir)
    out = release(store, bob.id, next_hop=("127.0.0.1", sink.port), actor="support@gw", how="cli", key=key)
    assert out.ok, out
    [got] = sink.messages
    assert got.rcpt_tos == ["bob@corp.test"] and got.mail_from == "bounce@brand.example"
    values, rest = strip_release_headers(got.data)
    assert len(values) == 1 and got.data.startswith(RELEASE_HEADER.encode() + b": ")
    assert verify_release_header(key, values[0], rest, "bob@corp.test")
    assert not verify_release_header(key, values[0], rest, "carol@corp.test")
    assert store.get(bob.id).state == "released" and store.get(carol.id).state == "quarantined"
    assert store.get(bob.id).released_by == "support@gw"


def test_a_second_release_reports_already_released_and_sends_nothing(store, sink):
    bob, _ = _two(store)
    key = release_key(store.state_dir)
    assert release(store, bob.id, next_hop=("127.0.0.1", sink.port), actor="a", how="cli", key=key).ok
    again = release(store, bob.id, next_hop=("127.0.0.1", sink.port), actor="b", how="link", key=key)
    assert again.status == "already released"
    assert len(sink.messages) == 1


def test_sixteen_threads_releasing_the_same_item_at_once_deliver_it_exactly_once(store, sink):
    bob, _ = _two(store)
    key = release_key(store.state_dir)
    barrier = threading.Barrier(16)
    outcomes = []

    def go(n):
        barrier.wait()
        outcomes.append(release(store, bob.id, next_hop=("127.0.0.1", sink.port), actor=f"t{n}", how="page", key=key))

    threads = [threading.Thread(target=go, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.status for o in outcomes) == ["already released"] * 15 + ["released"]
    time.sleep(0.2)
    assert len(sink.messages) == 1


def test_release_is_audited_with_who_when_and_how(store, sink):
    bob, _ = _two(store)
    before = datetime.now(timezone.utc)
    release(store, bob.id, next_hop=("127.0.0.1", sink.port), actor="alice@support", how="link",
            key=release_key(store.state_dir))
    rows = [r for r in store.audit_log(item_id=bob.id) if r.action.startswith("release")]
    assert [(r.actor, r.action, r.how) for r in rows] == [("alice@support", "release", "link"),
                                                           ("alice@support", "released", "link")]
    assert all(r.at >= before for r in rows) and "127.0.0.1" in rows[-1].detail


def test_a_next_hop_that_is_down_fails_the_release_and_leaves_the_item_releasable(store, sink):
    bob, _ = _two(store)
    key = release_key(store.state_dir)
    down = release(store, bob.id, next_hop=("127.0.0.1", free_port()), actor="a", how="cli", key=key)
    assert down.status == "failed" and store.get(bob.id).state == "quarantined"
    assert store.audit_log(item_id=bob.id)[-1].action == "release-failed"
    assert release(store, bob.id, next_hop=("127.0.0.1", sink.port), actor="a", how="cli", key=key).ok
    assert len(sink.messages) == 1


def test_the_release_header_survives_added_received_headers_and_line_ending_changes_only(store):
    bob, _ = _two(store)
    key = release_key(store.state_dir)
    value = sign_release_header(key, bob, RAW)
    relayed = b"Received: from gw by mx; Tue, 1 Dec 2026\r\n" + RAW.replace(b"\r\n", b"\n")
    assert verify_release_header(key, value, relayed, "<bob@corp.test>")
    assert not verify_release_header(key, value, RAW.replace(b"pay", b"wire money to me"), "bob@corp.test")
    assert not verify_release_header(key, value, RAW.replace(b"Subject: Invoice", b"Subject: Urgent"), "bob@corp.test")
    assert not verify_release_header(b"k" * 32, value, RAW, "bob@corp.test")
    assert not verify_release_header(key, value.replace("r=bob@", "r=eve@"), RAW, "eve@corp.test")
    expired = sign_release_header(key, bob, RAW, ttl_seconds=-1)
    assert not verify_release_header(key, expired, RAW, "bob@corp.test")
    assert not verify_release_header(key, "garbage", RAW, "bob@corp.test")
    assert message_fingerprint(RAW) == message_fingerprint(RAW + b"\r\n\r\n")


def test_the_release_key_is_created_once_with_mode_0600(tmp_path):
    k1 = release_key(tmp_path)
    assert release_key(tmp_path) == k1 and len(k1) == 32
    assert (tmp_path / "release.key").stat().st_mode & 0o777 == 0o600


def test_a_link_token_is_refused_when_expired_altered_for_another_purpose_or_replayed(store):
    bob, _ = _two(store)
    key = release_key(store.state_dir)
    tok = make_token(key, "release", bob.id, bob.recipient, ttl_seconds=3600)
    claims = check_token(key, tok, "release", store=store)
    assert (claims.item_id, claims.recipient, claims.purpose) == (bob.id, "bob@corp.test", "release")
    with pytest.raises(TokenError) as e:
        check_token(key, make_token(key, "release", bob.id, bob.recipient, ttl_seconds=-5), "release")
    assert e.value.reason == "expired"
    payload, mac = tok.split(".")
    forged = make_token(key, "release", "qother", bob.recipient, 3600).split(".")[0] + "." + mac
    for bad in (forged, tok[:-2] + ("AA" if not tok.endswith("AA") else "BB"), "nonsense", ""):
        with pytest.raises(TokenError) as e:
            check_token(key, bad, "release")
        assert e.value.reason == "altered"
    with pytest.raises(TokenError) as e:
        check_token(key, tok, "trust")
    assert e.value.reason == "wrong purpose"
    with pytest.raises(TokenError):
        check_token(b"x" * 32, tok, "release")
    consume(store, claims)
    with pytest.raises(TokenError) as e:
        consume(store, claims)
    assert e.value.reason == "used"
    with pytest.raises(TokenError) as e:
        check_token(key, tok, "release", store=store)
    assert e.value.reason == "used"


def test_concurrent_consumers_of_one_token_let_exactly_one_through(store):
    bob, _ = _two(store)
    key = release_key(store.state_dir)
    claims = check_token(key, make_token(key, "trust", bob.id, bob.recipient, 600), "trust")
    wins, barrier = [], threading.Barrier(8)

    def go():
        barrier.wait()
        try:
            consume(store, claims)
            wins.append(1)
        except TokenError:
            pass

    ts = [threading.Thread(target=go) for _ in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert wins == [1]


def test_the_cli_releases_to_the_next_hop_once_and_says_already_released_the_second_time(store, sink):
    import subprocess
    import sys
    from pathlib import Path

    bob, _ = _two(store)
    cmd = [sys.executable, "-m", "edrules.cli", "quarantine", "release", "--state", str(store.state_dir),
           "--next-hop", f"127.0.0.1:{sink.port}", "--actor", "support@gw", bob.id]
    root = Path(__file__).resolve().parents[1]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert first.returncode == 0 and f"{bob.id}: released to bob@corp.test" in first.stdout, first.stderr
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert second.returncode == 1 and "already released" in second.stdout
    assert len(sink.messages) == 1 and sink.messages[0].rcpt_tos == ["bob@corp.test"]
    assert store.audit_log(item_id=bob.id)[-1].how == "cli"


def test_a_release_link_redeemed_twice_releases_once_and_refuses_the_replay(store, sink):
    from edrules.runtime.release import redeem_token

    bob, carol = _two(store)
    key = release_key(store.state_dir)
    tok = make_token(key, "release", bob.id, bob.recipient, 600)
    out = redeem_token(store, key, tok, "release", actor="bob@corp.test", next_hop=("127.0.0.1", sink.port))
    assert out.ok and store.audit_log(item_id=bob.id)[-1].how == "link"
    with pytest.raises(TokenError) as e:
        redeem_token(store, key, tok, "release", actor="bob@corp.test", next_hop=("127.0.0.1", sink.port))
    assert e.value.reason == "used"
    # a token for bob's recipient cannot be pointed at carol's item
    wrong = make_token(key, "release", carol.id, "bob@corp.test", 600)
    with pytest.raises(TokenError):
        redeem_token(store, key, wrong, "release", actor="bob", next_hop=("127.0.0.1", sink.port))
    assert len(sink.messages) == 1 and store.get(carol.id).state == "quarantined"


_RELEASER = r"""
import sys
from edrules.runtime.release import release, release_key
from edrules.runtime.store import SqliteQuarantineStore
store = SqliteQuarantineStore(sys.argv[1])
print("go", flush=True)
release(store, sys.argv[2], next_hop=("127.0.0.1", int(sys.argv[3])), actor="cron", how="cli",
        key=release_key(sys.argv[1]))
"""


def test_a_releaser_killed_mid_send_leaves_an_unconfirmed_release_that_only_an_explicit_retry_resends(store, sink):
    import os
    import signal
    import socket
    import subprocess
    import sys
    from datetime import timedelta
    from pathlib import Path

    bob, _ = _two(store)
    key = release_key(store.state_dir)
    with socket.socket() as hang:  # a next hop that accepts the connection and never greets
        hang.bind(("127.0.0.1", 0))
        hang.listen(1)
        proc = subprocess.Popen([sys.executable, "-c", _RELEASER, str(store.state_dir), bob.id,
                                 str(hang.getsockname()[1])], stdout=subprocess.PIPE,
                                cwd=Path(__file__).resolve().parents[1])
        assert proc.stdout.readline().strip() == b"go"
        deadline = time.monotonic() + 20
        while store.get(bob.id).state != "released" and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    item = store.get(bob.id)
    assert item.state == "released" and item.release_confirmed is False
    hop = ("127.0.0.1", sink.port)
    plain = release(store, bob.id, next_hop=hop, actor="ops", how="cli", key=key)
    assert plain.status == "already released" and "unconfirmed" in plain.detail
    too_soon = release(store, bob.id, next_hop=hop, actor="ops", how="cli", key=key, retry_unconfirmed=True)
    assert too_soon.status == "already released" and sink.messages == []
    retried = release(store, bob.id, next_hop=hop, actor="ops", how="cli", key=key, retry_unconfirmed=True,
                      unconfirmed_after=timedelta(0))
    assert retried.ok and len(sink.messages) == 1 and store.get(bob.id).release_confirmed is True
    assert release(store, bob.id, next_hop=hop, actor="ops", how="cli", key=key, retry_unconfirmed=True,
                   unconfirmed_after=timedelta(0)).status == "already released"
    assert len(sink.messages) == 1


def test_the_milter_helper_honours_only_our_header_for_its_recipient_and_strips_every_copy(store, sink):
    from edrules.runtime.release import released_for

    bob, _ = _two(store)
    key = release_key(store.state_dir)
    release(store, bob.id, next_hop=("127.0.0.1", sink.port), actor="a", how="cli", key=key)
    data = b"Received: from gw by mx\r\n" + sink.messages[0].data
    ok, rest = released_for(key, data, ["bob@corp.test", "carol@corp.test"])
    assert ok == {"bob@corp.test"} and RELEASE_HEADER.encode() not in rest
    forged = f"{RELEASE_HEADER}: v=1; id={bob.id}; r=bob@corp.test; exp=9999999999; fp=00; sig=AAAA\r\n".encode() + RAW
    ok, rest = released_for(key, forged, ["bob@corp.test"])
    assert ok == set() and RELEASE_HEADER.encode() not in rest and rest.endswith(b"Please pay.\r\n")


from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=st.text(max_size=300), raw=st.binary(max_size=600), value=st.text(max_size=200))
def test_hostile_tokens_headers_and_messages_are_refused_never_crash(token, raw, value):
    key = b"k" * 32
    with pytest.raises(TokenError):
        check_token(key, token, "release")
    assert verify_release_header(key, value, raw, "bob@corp.test") is False
    values, rest = strip_release_headers(raw)
    assert isinstance(values, list) and isinstance(rest, bytes)
    message_fingerprint(raw)


@settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=800) | st.text(max_size=400).map(lambda t: ("Subject: =?utf-8?q?" + t + "\r\nFrom: " + t
                                                                         + "\r\nDate: " + t + "\r\n\r\n").encode("utf-8", "surrogatepass")))
def test_storing_any_bytes_never_crashes_and_gives_them_back_unchanged(tmp_path_factory, raw):
    store = SqliteQuarantineStore(tmp_path_factory.mktemp("h"))
    [item] = store.add(raw, [QuarantinedRecipient("bob@corp.test", "spam", "r")], envelope_from=None, client_ip=None,
                       helo=None, queue_id=None, pack_name=None, pack_version=None)
    assert store.raw(item.id) == raw


def test_a_message_stored_with_bare_lf_line_ends_is_released_as_crlf_lines_and_still_verifies(store, sink):
    """SMTP carries CRLF lines: bare LF reached the next hop as one over-long line and was refused."""
    body = b"".join(b"line %d of a long body\n" % i for i in range(400))
    raw = b"From: news@brand.example\nTo: bob@corp.test\nSubject: lf\n\n" + body
    [item] = store.add(raw, [QuarantinedRecipient("bob@corp.test", "spam", "spam", "category:spam")],
                       envelope_from="bounce@brand.example", client_ip="192.0.2.10", helo="mx.brand.example",
                       queue_id="LF1", pack_name="acme", pack_version="7")
    key = release_key(store.state_dir)
    out = release(store, item.id, next_hop=("127.0.0.1", sink.port), actor="a", how="cli", key=key)
    assert out.ok, out
    [got] = sink.messages
    assert b"line 399 of a long body" in got.data
    values, rest = strip_release_headers(got.data)
    assert verify_release_header(key, values[0], rest, "bob@corp.test")
