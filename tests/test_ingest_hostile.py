"""Hostile input never crashes ingest: every input message becomes a row or an error row."""

from __future__ import annotations

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edrules.errors import EdrulesError
from edrules.ingest import facts_from_bytes, ingest_paths

NAMES = st.sampled_from([
    "From", "To", "Cc", "Subject", "Received", "Return-Path", "Authentication-Results", "Received-SPF",
    "Delivered-To", "X-Original-To", "Reply-To", "Message-ID", "Date", "DKIM-Signature", "X-Spam-Status",
    "List-Unsubscribe", "X-Rspamd-Action", "from", "FROM ",
])
NASTY = st.sampled_from([
    "=?utf-8?B?###?=", "=?x-unknown?q?abc?=", "<>", "<@>", "a@b@c", "(((", "\"unterminated", "\\", ";;;;",
    "spf=pass (", "dkim=", "mx.example.org; dmarc=pass (p=", "from [1.2.3.4] by", "from x ([999.1.1.1])",
    "by (", "pass (x: y) client-ip=::ffff:1.2.3.4; helo=[", ",,,", "a@example.com, b@example.com",
    "\u00e9\u4e2d\U0001f600", "\x00", "Mon, 99 Foo 99999 99:99:99 +9999",
])
TEXT = st.one_of(NASTY, st.text(max_size=60), st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
FIELD = st.tuples(NAMES, st.lists(TEXT, min_size=1, max_size=3)).map(
    lambda t: (t[0] + ": " + "\r\n ".join(t[1])).encode("utf-8", "surrogatepass")
)
SEP = st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n", b"\n\xc2\xa0", b"\n ", b""])
MESSAGE = st.one_of(
    st.lists(st.tuples(FIELD, SEP), max_size=12).map(lambda xs: b"".join(f + s for f, s in xs)),
    st.binary(max_size=300),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGE)
def test_hostile_bytes_give_facts_or_a_located_error(raw):
    try:
        m = facts_from_bytes(raw, source="h.eml")
    except EdrulesError as exc:
        assert exc.location is not None and exc.location.file == "h.eml"
        return
    f = m.facts
    assert f.size == len(raw) and len(f.msg_key) == 64
    assert len(m.recipient_rows) >= 1
    for value in (f.spf, f.dmarc, *[d.result for d in f.dkim]):
        assert value is None or value in {"pass", "fail", "softfail", "neutral", "none", "temperror",
                                           "permerror", "policy"}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(MESSAGE, min_size=1, max_size=8))
def test_hostile_files_each_yield_a_message_row_or_an_error_row(tmp_path_factory, raws):
    folder = tmp_path_factory.mktemp("hostile")
    for n, raw in enumerate(raws):
        (folder / f"{n}.eml").write_bytes(raw)
    con = duckdb.connect()
    s = ingest_paths(con, [folder], jobs=1)
    assert s.messages + s.errors == len(raws)
    rows = con.execute("SELECT count(*) FROM messages").fetchone()[0]
    errors = con.execute("SELECT count(*) FROM ingest_errors").fetchone()[0]
    assert rows + s.duplicates == s.messages and errors == s.errors
    assert con.execute(
        "SELECT count(*) FROM messages m WHERE NOT EXISTS (SELECT 1 FROM recipients r WHERE r.msg_key = m.msg_key)"
    ).fetchone()[0] == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(MESSAGE, min_size=1, max_size=5), st.binary(max_size=200))
def test_hostile_mbox_never_crashes_and_counts_every_entry(tmp_path_factory, raws, tail):
    folder = tmp_path_factory.mktemp("mbox")
    box = b"".join(b"From x@example.net Thu Jan  1 00:00:00 2026\n" + r.replace(b"\nFrom ", b"\n>From ") + b"\n\n"
                   for r in raws) + tail
    (folder / "box.mbox").write_bytes(box)
    con = duckdb.connect()
    s = ingest_paths(con, [folder / "box.mbox"], jobs=1)
    assert s.messages + s.errors >= len(raws)  # the random tail may hold more From_ lines


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(TEXT, min_size=0, max_size=9), max_size=6))
def test_hostile_quarantine_csv_rows_each_load_or_become_an_error(tmp_path_factory, rows):
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["received_at", "recipient", "envelope_from", "client_ip", "category", "score", "quarantine_state"])
    good = ["2026-01-05T10:00:00", "a@example.org", "b@example.com", "192.0.2.1", "spam", "1", "quarantined"]
    w.writerow(good)
    for r in rows:
        w.writerow([c.replace("\x00", "") for c in r])  # csv cannot carry NUL
    path = tmp_path_factory.mktemp("csv") / "q.csv"
    path.write_text(buf.getvalue(), encoding="utf-8", errors="replace")
    con = duckdb.connect()
    s = ingest_paths(con, [path], jobs=1)
    assert s.messages >= 1
    blank = sum(1 for r in rows if not any(c.replace("\x00", "").strip() for c in r))
    assert s.messages + s.errors == 1 + len(rows) - blank
