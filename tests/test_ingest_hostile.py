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


# -- hostile files: FIFOs, devices, endless files, oversized CSV cells ----------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MAIL = b"From: a@example.com\nTo: b@example.org\nSubject: x\n\nhi\n"


def _edrules(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edrules.cli", *args], capture_output=True, cwd=ROOT,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _errors(con) -> dict[str, tuple[str, str]]:
    return {Path(s).name: (e, d) for s, e, d in con.execute("SELECT source, error, detail FROM ingest_errors").fetchall()}


def test_a_fifo_and_a_symlink_to_dev_zero_in_a_folder_become_error_rows_and_the_rest_loads(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.eml").write_bytes(MAIL)
    os.mkfifo(folder / "pipe.eml")
    (folder / "zero.eml").symlink_to("/dev/zero")
    (folder / "z.eml").write_bytes(MAIL.replace(b"Subject: x", b"Subject: y"))
    con = duckdb.connect()
    s = ingest_paths(con, [folder], jobs=1)  # would hang on the FIFO / run out of memory on /dev/zero
    assert (s.messages, s.errors) == (2, 2)
    errs = _errors(con)
    assert errs["pipe.eml"] == ("not-a-regular-file", "a FIFO (named pipe) is not read; only regular files are")
    assert errs["zero.eml"][0] == "not-a-regular-file" and "character device" in errs["zero.eml"][1]
    # Named on the command line, the same (not 'no such file').
    s = ingest_paths(con, [folder / "pipe.eml", folder / "zero.eml"], dataset="named", jobs=1)
    assert (s.messages, s.errors) == (0, 2)


def test_ingest_and_explain_on_a_fifo_return_at_once_with_a_located_error(tmp_path):
    fifo = tmp_path / "pipe.eml"
    os.mkfifo(fifo)
    r = _edrules("explain", str(fifo), timeout=30)
    err = r.stderr.decode()
    assert r.returncode == 2 and "internal error" not in err and len(err.strip().splitlines()) == 1, err
    assert "FIFO" in err and str(fifo) in err
    r = _edrules("explain", "/dev/zero", timeout=30)
    assert r.returncode == 2 and "character device" in r.stderr.decode()
    r = _edrules("ingest", "--db", str(tmp_path / "d.duckdb"), str(tmp_path), timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert "not-a-regular-file" in r.stderr.decode() and "1 errors" in r.stdout.decode()


def test_a_file_over_the_per_file_limit_is_an_error_row_never_read_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("EDRULES_MAX_FILE_MB", "0.01")  # 10,485 bytes
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "small.eml").write_bytes(MAIL)
    (folder / "big.eml").write_bytes(MAIL + b"x" * 20_000)
    (folder / "big.mbox").write_bytes(b"From x@example.net Thu Jan  1 00:00:00 2026\n" + MAIL + b"y" * 20_000)
    con = duckdb.connect()
    s = ingest_paths(con, [folder], jobs=1)
    assert (s.messages, s.errors) == (1, 2)
    errs = _errors(con)
    for name in ("big.eml", "big.mbox"):
        assert errs[name][0] == "file-too-large" and "EDRULES_MAX_FILE_MB" in errs[name][1]
    big = folder / "big.eml"
    r = subprocess.run([sys.executable, "-m", "edrules.cli", "explain", str(big)], capture_output=True, cwd=ROOT,
                       timeout=60, env={**os.environ, "EDRULES_MAX_FILE_MB": "0.01"})
    assert r.returncode == 2 and "per-file limit" in r.stderr.decode()


def test_a_quarantine_csv_row_naming_a_fifo_or_dev_zero_as_its_eml_is_an_error_row(tmp_path):
    os.mkfifo(tmp_path / "pipe.eml")
    (tmp_path / "ok.eml").write_bytes(MAIL)
    path = tmp_path / "q.csv"
    head = "received_at,recipient,envelope_from,client_ip,category,score,quarantine_state,eml\n"
    row = "2026-01-05T10:00:00,b@example.org,a@example.com,192.0.2.1,spam,1,quarantined,"
    path.write_text(head + row + "pipe.eml\n" + row + "/dev/zero\n" + row + "ok.eml\n")
    con = duckdb.connect()
    s = ingest_paths(con, [path], jobs=1)
    assert (s.messages, s.errors) == (1, 2)
    got = sorted(con.execute("SELECT position, error FROM ingest_errors").fetchall())
    assert got == [("line 2", "not-a-regular-file"), ("line 3", "not-a-regular-file")]


def test_a_csv_cell_over_the_csv_field_limit_costs_only_its_own_row(tmp_path):
    path = tmp_path / "q.csv"
    head = "received_at,recipient,envelope_from,client_ip,category,score,quarantine_state,subject\n"
    row = "2026-01-05T10:00:0{n},b@example.org,a{n}@example.com,192.0.2.1,spam,1,quarantined,{subject}\n"
    huge = '"' + "z" * (131_072 + 10) + '"'  # Python's csv.field_size_limit() default, plus 10
    rows = [row.format(n=n, subject=huge if n == 2 else f"s{n}") for n in range(6)]
    path.write_text(head + "".join(rows))
    con = duckdb.connect()
    s = ingest_paths(con, [path], jobs=1)
    assert (s.messages, s.errors) == (5, 1)  # every row accounted for, the rows after it too
    assert con.execute("SELECT position, error FROM ingest_errors").fetchall() == [("line 4", "csv-cell-too-large")]
    assert con.execute("SELECT count(*) FROM messages WHERE subject IN ('s3', 's4', 's5')").fetchone()[0] == 3


def test_a_csv_quote_never_closed_costs_its_own_row_and_the_rows_after_it_still_load(tmp_path):
    # Found by benchmarks/hostile_inputs.py: the csv reader takes an unclosed quote to the end of
    # the file, so the rows after it vanished into one subject with no error row at all.
    path = tmp_path / "q.csv"
    head = "received_at,recipient,envelope_from,client_ip,category,score,quarantine_state,subject\n"
    row = "2026-01-05T10:00:0{n},b@example.org,a{n}@example.com,192.0.2.1,spam,1,quarantined,{s}\n"
    path.write_text(head + row.format(n=0, s="ok") + row.format(n=1, s='"unclosed')
                    + "".join(row.format(n=n, s=f"s{n}") for n in range(2, 6)))
    con = duckdb.connect()
    s = ingest_paths(con, [path], jobs=1)
    assert (s.messages, s.errors) == (5, 1)
    (pos, err, detail), = con.execute("SELECT position, error, detail FROM ingest_errors").fetchall()
    assert (pos, err) == ("line 3", "csv-syntax") and "never closed" in detail
    assert sorted(r for r, in con.execute("SELECT subject FROM messages").fetchall()) == ["ok", "s2", "s3", "s4", "s5"]
    # A quoted cell that does span lines (and closes) is still one row.
    path.write_text(head + row.format(n=0, s='"two\nlines"') + row.format(n=1, s="s1"))
    s = ingest_paths(duckdb.connect(), [path], jobs=1)
    assert (s.messages, s.errors) == (2, 0)


def test_a_file_whose_name_is_not_utf8_loads_instead_of_stopping_the_whole_run(tmp_path):
    # Found by benchmarks/hostile_inputs.py: a Latin-1 file name (an old maildir copy) made the
    # Arrow conversion raise, so `edrules ingest` exited 70 and nothing of the run loaded.
    folder = tmp_path / "in"
    folder.mkdir()
    raw = os.fsencode(folder)
    with open(os.path.join(raw, b"r\xe9sum\xe9.eml"), "wb") as fh:
        fh.write(MAIL)
    with open(os.path.join(raw, b"vide\xff.eml"), "wb") as fh:
        fh.write(b"")
    (folder / "z.eml").write_bytes(MAIL.replace(b"Subject: x", b"Subject: y"))
    con = duckdb.connect()
    s = ingest_paths(con, [folder], jobs=1)
    assert (s.messages, s.errors) == (2, 1)
    names = sorted(Path(x).name for x, in con.execute("SELECT source FROM messages").fetchall())
    assert names == ["r?sum?.eml", "z.eml"]  # cleaned as error rows clean theirs
    assert Path(con.execute("SELECT source FROM ingest_errors").fetchone()[0]).name == "vide?.eml"
    r = _edrules("ingest", "--db", str(tmp_path / "d.duckdb"), str(folder))
    assert r.returncode == 0 and "internal error" not in r.stderr.decode(), r.stderr.decode()


def test_a_per_file_limit_larger_than_memory_reads_small_files_without_allocating_the_limit(tmp_path, monkeypatch):
    # Found by benchmarks/hostile_inputs.py (a 512 MiB heap peak for a CSV under 1 kB): each capped
    # read asked for limit + 1 bytes at once, so a limit above the machine's memory made
    # ingest and explain exit 70 with MemoryError on any file.
    monkeypatch.setenv("EDRULES_MAX_FILE_MB", "10000000")  # about 9.5 TiB
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.eml").write_bytes(MAIL)
    (folder / "b.mbox").write_bytes(b"From x@example.net Thu Jan  1 00:00:00 2026\n" + MAIL + b"z" * 1_100_000)
    (folder / "q.csv").write_text("received_at,recipient,envelope_from,client_ip,category,score,quarantine_state\n"
                                  "2026-01-05T10:00:00,b@example.org,a@example.com,192.0.2.1,spam,1,quarantined\n")
    s = ingest_paths(duckdb.connect(), [folder], jobs=1)
    assert (s.messages, s.errors) == (3, 0)
    r = subprocess.run([sys.executable, "-m", "edrules.cli", "explain", str(folder / "a.eml")], capture_output=True,
                       cwd=ROOT, timeout=60, env={**os.environ, "EDRULES_MAX_FILE_MB": "10000000"})
    assert r.returncode == 0, r.stderr.decode()
    r = subprocess.run([sys.executable, "-m", "edrules.cli", "explain", "-"], input=MAIL, capture_output=True,
                       cwd=ROOT, timeout=60, env={**os.environ, "EDRULES_MAX_FILE_MB": "10000000"})
    assert r.returncode == 0, r.stderr.decode()


def test_an_ipv6_zone_id_from_a_quarantine_csv_is_an_invalid_client_ip_error_row(tmp_path):
    path = tmp_path / "q.csv"
    head = "received_at,recipient,envelope_from,client_ip,category,score,quarantine_state\n"
    path.write_text(head + "2026-01-05T10:00:00,b@example.org,a@example.com,2001:db8::5%eth0,spam,1,quarantined\n"
                    "2026-01-05T10:00:01,b@example.org,a@example.com,2001:db8::5,spam,1,quarantined\n")
    con = duckdb.connect()
    s = ingest_paths(con, [path], jobs=1)
    assert (s.messages, s.errors) == (1, 1)
    (pos, err, detail), = con.execute("SELECT position, error, detail FROM ingest_errors").fetchall()
    assert (pos, err) == ("line 2", "invalid-client_ip")
    assert "2001:db8::5%eth0" in detail and "zone id" in detail
    assert con.execute("SELECT client_ip FROM messages").fetchall() == [("2001:db8::5",)]


def test_an_ipv6_zone_id_in_an_smtp_transcript_is_an_error_row(tmp_path):
    t = tmp_path / "s.txt"
    t.write_bytes(b"EHLO mail.example.com\r\nXFORWARD ADDR=2001:db8::5%eth0\r\nMAIL FROM:<a@example.com>\r\n"
                  b"RCPT TO:<b@example.org>\r\nDATA\r\n" + MAIL.replace(b"\n", b"\r\n") + b".\r\nQUIT\r\n")
    con = duckdb.connect()
    s = ingest_paths(con, [t], jobs=1)
    assert (s.messages, s.errors) == (0, 1)
    assert con.execute("SELECT error FROM ingest_errors").fetchone()[0] == "invalid-client_ip"
