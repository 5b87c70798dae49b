"""Quarantine store: content-addressed files, SQLite index, idempotent add, purge, crash safety."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from edrules.runtime.store import QuarantinedRecipient, SqliteQuarantineStore, item_id_for

RAW = (b"From: Alice <alice@brand.example>\r\nTo: bob@corp.test, carol@corp.test\r\n"
       b"Subject: Invoice 100% due\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
       b"Message-ID: <m1@brand.example>\r\n\r\nPlease pay.\r\n")
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def _add(store, raw=RAW, rcpts=(("bob@corp.test", "spam"),), queue_id="Q1", at=T0):
    return store.add(raw, [QuarantinedRecipient(r, c, f"{c} reason", f"category:{c}") for r, c in rcpts],
                     envelope_from="bounce@brand.example", client_ip="192.0.2.10", helo="mx.brand.example",
                     queue_id=queue_id, pack_name="acme", pack_version="7", received_at=at)


def test_a_message_for_two_recipients_is_stored_once_under_its_sha256_with_one_item_each(tmp_path):
    store = SqliteQuarantineStore(tmp_path)
    items = _add(store, rcpts=(("Bob@Corp.test", "spam"), ("carol@corp.test", "phishing")))
    sha = hashlib.sha256(RAW).hexdigest()
    files = [p for p in (tmp_path / "messages").rglob("*") if p.is_file()]
    assert files == [tmp_path / "messages" / sha[:2] / sha[2:]]
    assert files[0].read_bytes() == RAW
    assert [i.recipient for i in items] == ["bob@corp.test", "carol@corp.test"]
    bob = items[0]
    assert (bob.message_sha256, bob.category, bob.reason, bob.rule_id) == (sha, "spam", "spam reason", "category:spam")
    assert (bob.pack_name, bob.pack_version, bob.queue_id, bob.state) == ("acme", "7", "Q1", "quarantined")
    assert (bob.header_from, bob.subject, bob.size) == ("alice@brand.example", "Invoice 100% due", len(RAW))
    assert bob.date == datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc) and bob.quarantined_at == T0
    assert store.raw(bob.id) == RAW
    assert store.db_path.exists()
    assert store._db().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_adding_the_same_message_recipient_and_queue_id_again_does_not_duplicate(tmp_path):
    store = SqliteQuarantineStore(tmp_path)
    first = _add(store)
    again = _add(store, at=T0 + timedelta(minutes=5))
    assert [i.id for i in again] == [i.id for i in first] == [item_id_for(first[0].message_sha256, "bob@corp.test", "Q1")]
    assert store.count() == 1 and again[0].quarantined_at == T0
    other_queue = _add(store, queue_id="Q2")
    assert other_queue[0].id != first[0].id and store.count() == 2


def test_list_filters_by_recipient_domain_state_category_and_search_with_bound_values(tmp_path):
    store = SqliteQuarantineStore(tmp_path)
    _add(store, rcpts=(("bob@corp.test", "spam"), ("carol@corp.test", "phishing")))
    _add(store, raw=RAW.replace(b"Invoice 100%", b"Hello"), rcpts=(("dave@other.test", "spam"),))
    assert store.count() == 3
    assert [i.recipient for i in store.list(recipients=["BOB@corp.test"])] == ["bob@corp.test"]
    assert {i.recipient for i in store.list(domains=["corp.test"])} == {"bob@corp.test", "carol@corp.test"}
    assert [i.recipient for i in store.list(category="spam", domains=["other.test"])] == ["dave@other.test"]
    assert store.count(search="100%") == 2 and store.count(search="0%_") == 0  # wildcards are literal
    assert store.count(search="x' OR 1=1 --") == 0
    assert store.list(recipients=[]) == []
    store.mark_released(store.list(recipients=["bob@corp.test"])[0].id, "support", "cli")
    assert store.count(state="released") == 1 and store.count(state="quarantined") == 2
    assert store.recipients() == ["carol@corp.test", "dave@other.test"]


def test_purge_drops_only_items_past_their_categorys_retention_and_their_unshared_files(tmp_path):
    store = SqliteQuarantineStore(tmp_path)
    old_spam = _add(store, raw=RAW + b"1", rcpts=(("bob@corp.test", "spam"),), at=T0 - timedelta(days=10))[0]
    old_phish = _add(store, raw=RAW + b"2", rcpts=(("bob@corp.test", "phishing"),), at=T0 - timedelta(days=10))[0]
    new_spam = _add(store, raw=RAW + b"3", rcpts=(("bob@corp.test", "spam"),), at=T0 - timedelta(days=2))[0]
    unlisted = _add(store, raw=RAW + b"4", rcpts=(("bob@corp.test", "bulk"),), at=T0 - timedelta(days=400))[0]
    # shared file: one old spam item for carol, one fresh phishing item for dave
    shared = _add(store, raw=RAW + b"5", rcpts=(("carol@corp.test", "spam"),), at=T0 - timedelta(days=10))[0]
    _add(store, raw=RAW + b"5", rcpts=(("dave@corp.test", "phishing"),), queue_id="Q9", at=T0)
    n = store.purge(T0, {"spam": 7, "phishing": 30})
    assert n == 2
    assert store.get(old_spam.id) is None and store.get(shared.id) is None
    assert store.get(old_phish.id) and store.get(new_spam.id) and store.get(unlisted.id)
    assert not store.message_path(old_spam.message_sha256).exists()
    assert store.message_path(shared.message_sha256).exists()  # dave's item still needs it
    assert [a.action for a in store.audit_log(item_id=old_spam.id)] == ["quarantine", "purge"]


def test_delete_marks_the_item_deleted_and_audits_who_and_how(tmp_path):
    store = SqliteQuarantineStore(tmp_path)
    item = _add(store)[0]
    assert store.delete(item.id, "support@gw", "cli") is True
    assert store.delete(item.id, "support@gw", "cli") is False
    assert store.get(item.id).state == "deleted"
    assert not store.message_path(item.message_sha256).exists()
    last = store.audit_log(item_id=item.id)[-1]
    assert (last.actor, last.action, last.how) == ("support@gw", "delete", "cli")


def test_a_crash_before_the_rename_leaves_no_message_file_and_no_index_row(tmp_path, monkeypatch):
    store = SqliteQuarantineStore(tmp_path)

    def crash(*a, **k):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        _add(store)
    monkeypatch.undo()
    finals = [p for p in (tmp_path / "messages").rglob("*") if p.is_file() and not p.name.startswith(".tmp-")]
    assert finals == [] and store.count() == 0
    assert store.sweep_temp_files(older_than_seconds=-1) == 1


_WRITER = r"""
import sys, os
from edrules.runtime.store import SqliteQuarantineStore, QuarantinedRecipient
store = SqliteQuarantineStore(sys.argv[1])
i = 0
print("ready", flush=True)
while True:
    raw = (b"From: x@brand.example\r\nSubject: m%d\r\n\r\n" % i) + os.urandom(200_000)
    store.add(raw, [QuarantinedRecipient("bob@corp.test", "spam", "r")], envelope_from="x@brand.example",
              client_ip="192.0.2.1", helo="h", queue_id="Q%d" % i, pack_name="p", pack_version="1")
    i += 1
"""


def test_kill_9_during_adds_never_leaves_a_half_written_file_or_a_row_without_its_file(tmp_path):
    for round_ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                                cwd=Path(__file__).resolve().parents[1])
        try:
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(0.4 + 0.17 * round_)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    store = SqliteQuarantineStore(tmp_path)
    items = list(store.iter_items())
    assert len(items) > 4, "the writer should have stored some messages"
    for item in items:  # every row's file exists, whole
        data = store.message_path(item.message_sha256).read_bytes()
        assert hashlib.sha256(data).hexdigest() == item.message_sha256
    for p in (tmp_path / "messages").rglob("*"):
        if p.is_file() and not p.name.startswith(".tmp-"):  # every final file is whole
            assert hashlib.sha256(p.read_bytes()).hexdigest() == p.parent.name + p.name


def test_no_module_of_the_runtime_package_imports_pandas_duckdb_or_pyarrow():
    # Every module under edrules/runtime/, found on disk, so a module added later is covered too.
    code = ("import sys, pkgutil, importlib, edrules.runtime as r\n"
            "mods = [m.name for m in pkgutil.walk_packages(r.__path__, 'edrules.runtime.')]\n"
            "[importlib.import_module(m) for m in mods]\n"
            "print(len(mods), sorted(m for m in ('pandas', 'duckdb', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n, _, heavy = out.stdout.strip().partition(" ")
    assert int(n) >= 6 and heavy == "[]", out.stdout


def _edrules(*args):
    return subprocess.run([sys.executable, "-m", "edrules.cli", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)


def test_the_quarantine_cli_lists_shows_deletes_and_purges_per_category(tmp_path):
    store = SqliteQuarantineStore(tmp_path)
    now = datetime.now(timezone.utc)
    spam = _add(store, raw=RAW + b"1", rcpts=(("bob@corp.test", "spam"),), at=now - timedelta(days=10))[0]
    phish = _add(store, raw=RAW + b"2", rcpts=(("carol@corp.test", "phishing"),), at=now - timedelta(days=10))[0]
    listed = _edrules("quarantine", "list", "--state", str(tmp_path), "--domain", "corp.test")
    assert listed.returncode == 0, listed.stderr
    assert spam.id in listed.stdout and phish.id in listed.stdout and "2 of 2 items" in listed.stdout
    js = _edrules("quarantine", "list", "--state", str(tmp_path), "--recipient", "bob@corp.test", "--json")
    assert [json.loads(line)["id"] for line in js.stdout.splitlines()] == [spam.id]
    shown = _edrules("quarantine", "show", "--state", str(tmp_path), spam.id)
    assert "reason:         spam reason" in shown.stdout and "gateway quarantine (milter)" in shown.stdout
    raw = subprocess.run([sys.executable, "-m", "edrules.cli", "quarantine", "show", "--state", str(tmp_path),
                          "--raw", spam.id], capture_output=True, cwd=Path(__file__).resolve().parents[1])
    assert raw.stdout == RAW + b"1"
    purged = _edrules("quarantine", "purge", "--state", str(tmp_path), "--retention", "spam=7",
                      "--retention", "phishing=30")
    assert purged.returncode == 0 and "purged 1 item " in purged.stdout
    assert store.get(spam.id) is None and store.get(phish.id) is not None
    deleted = _edrules("quarantine", "delete", "--state", str(tmp_path), "--actor", "ops", phish.id)
    assert f"{phish.id}: deleted" in deleted.stdout and store.get(phish.id).state == "deleted"


def test_the_quarantine_cli_reports_bad_input_in_one_line_with_exit_2(tmp_path):
    SqliteQuarantineStore(tmp_path)
    for args, needle in (
        (("quarantine", "show", "--state", str(tmp_path), "qnope"), "no quarantined item 'qnope'"),
        (("quarantine", "purge", "--state", str(tmp_path)), "give --pack PACK --pubkey PUB"),
        (("quarantine", "purge", "--state", str(tmp_path), "--retention", "spam"), "CATEGORY=DAYS"),
        (("quarantine", "list", "--state", str(tmp_path / "nope")), "state directory does not exist"),
        (("quarantine", "release", "--state", str(tmp_path), "--next-hop", "localhost", "q1"), "HOST:PORT"),
    ):
        r = _edrules(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_purge_takes_each_categorys_retention_from_a_signed_pack_and_refuses_a_tampered_one(tmp_path):
    from edrules.pack import build_pack, generate_keypair, write_pack
    from edrules.rules.parse import parse_rules

    text = "name: acme\nretention_days:\n  spam: 3\n  forgery: 60\n"
    priv, pub = generate_keypair(tmp_path / "keys")
    pack = tmp_path / "acme.json"
    write_pack(build_pack(parse_rules(text), source_bytes=text.encode(), private_key_path=priv), pack)
    state = tmp_path / "state"
    store = SqliteQuarantineStore(state)
    now = datetime.now(timezone.utc)
    spam = _add(store, raw=RAW + b"s", rcpts=(("bob@corp.test", "spam"),), at=now - timedelta(days=5))[0]
    forgery = _add(store, raw=RAW + b"f", rcpts=(("bob@corp.test", "forgery"),), at=now - timedelta(days=50))[0]
    r = _edrules("quarantine", "purge", "--state", str(state), "--pack", str(pack), "--pubkey", str(pub))
    assert r.returncode == 0, r.stderr
    assert "purged 1 item" in r.stdout and "spam 3d" in r.stdout and "forgery 60d" in r.stdout
    assert store.get(spam.id) is None and store.get(forgery.id) is not None
    assert '"forgery":60' in pack.read_text()
    pack.write_text(pack.read_text().replace('"forgery":60', '"forgery":1'))
    bad = _edrules("quarantine", "purge", "--state", str(state), "--pack", str(pack), "--pubkey", str(pub))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert store.get(forgery.id) is not None


def test_a_postgresql_location_is_refused_until_that_index_exists(tmp_path):
    from edrules.errors import EdrulesError
    from edrules.runtime.store import QuarantineStore, open_store

    assert isinstance(open_store(tmp_path), SqliteQuarantineStore)
    with pytest.raises(EdrulesError, match="PostgreSQL quarantine index is not available yet"):
        open_store("postgresql://gw@127.0.0.1/edrules")
    assert {"add", "get", "raw", "list", "count", "mark_released", "delete", "purge", "audit",
            "audit_log"} <= set(dir(QuarantineStore))


def test_quarantined_mail_and_its_index_are_readable_by_the_owner_only(tmp_path):
    store = SqliteQuarantineStore(tmp_path / "state")
    item = _add(store)[0]
    assert (tmp_path / "state" / "messages").stat().st_mode & 0o777 == 0o700
    assert store.message_path(item.message_sha256).stat().st_mode & 0o777 == 0o600
    for name in ("quarantine.sqlite", "quarantine.sqlite-wal"):
        assert (tmp_path / "state" / name).stat().st_mode & 0o077 == 0, name


def test_eight_threads_adding_the_same_message_at_once_store_one_file_and_one_item(tmp_path):
    import threading

    store = SqliteQuarantineStore(tmp_path)
    barrier, got = threading.Barrier(8), []

    def go():
        barrier.wait()
        got.append(_add(store)[0].id)

    ts = [threading.Thread(target=go) for _ in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert len(set(got)) == 1 and store.count() == 1
    assert [a.action for a in store.audit_log()] == ["quarantine"]
    assert [p.name for p in (tmp_path / "messages").rglob("*") if p.is_file()] == [hashlib.sha256(RAW).hexdigest()[2:]]
