"""Hostile header blocks under a genuine gateway top (issue 8 item 9), and the hostile-input
benchmark that also feeds every hostile file class (item 6) through ingest and explain.

The generator (benchmarks/hostile_inputs.py, shared with the benchmark that reports the
numbers in docs/benchmarks.md) writes forged Received / Authentication-Results /
Received-SPF / Return-Path fields, duplicates, folding, comments, quoting, encoded words,
lines without a colon and no-break-space folds below the fields our gateway wrote.
"""

from __future__ import annotations

import io
import os
import random
import sys

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.hostile_inputs import (
    GATEWAYS,
    TRUSTS,
    FileCase,
    explain_outcome,
    hostile_message,
    run,
    run_child,
    run_file_case,
    violations,
)
from edrules.errors import EdrulesError
from edrules.ingest import facts_from_bytes, ingest_paths


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_no_field_the_sender_writes_below_the_edge_changes_a_fact_our_side_vouches_for(r):
    h = hostile_message(r)
    assert violations(h) == [], f"[{h.gateway} / {h.trust}]\n{h.raw.decode('utf-8', 'replace')}"


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_a_hostile_header_block_gives_facts_or_a_located_error_never_an_exception(r):
    h = hostile_message(r)
    try:
        m = facts_from_bytes(h.raw, source="h.eml", trust=TRUSTS[h.trust])
    except EdrulesError as exc:
        assert exc.location is not None and exc.location.file == "h.eml"
        return
    assert m.facts.size == len(h.raw) and len(m.recipient_rows) >= 1


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.randoms(use_true_random=False), st.integers(min_value=1, max_value=12))
def test_every_hostile_file_is_a_message_row_or_an_error_row(tmp_path_factory, r, n):
    folder = tmp_path_factory.mktemp("hostile-headers")
    for i in range(n):
        (folder / f"{i}.eml").write_bytes(hostile_message(r).raw)
    con = duckdb.connect()
    s = ingest_paths(con, [folder], jobs=1)
    assert s.messages + s.errors == n
    assert con.execute("SELECT count(*) FROM messages").fetchone()[0] + s.duplicates == s.messages


def test_the_generator_writes_every_class_of_hostile_field_under_every_gateway_layout():
    r = random.Random(1)
    seen_layouts, seen = set(), set()
    marks = {
        "forged Received by the trusted id": b" by mx.acme.example", "forged A-R of the trusted id":
        b"Authentication-Results: mx.acme.example;", "Received-SPF": b"Received-SPF: ", "folding": b"\r\n\t",
        "comment": b"(nested))", "encoded word": b"=?utf-8?q?", "line without colon": b"\r\n; dmarc=pass",
        "no-break-space fold": b"\r\n\xc2\xa0", "Return-Path": b"Return-Path: <", "quoting": b'"',
    }
    for _ in range(400):
        h = hostile_message(r)
        seen_layouts.add(h.gateway)
        sender = h.raw[len("\r\n".join(GATEWAYS[h.gateway]).encode()):]
        seen |= {k for k, m in marks.items() if m in sender}
    assert seen_layouts == set(GATEWAYS)
    assert seen == set(marks)


def test_the_hostile_input_benchmark_reports_inputs_crashes_unaccounted_and_the_slowest_file():
    out = io.StringIO()
    res = run(count=40, seed=3, out=out, hyp=8)
    text = out.getvalue()
    assert ("| input class | inputs tried | crashes | unaccounted | folder ingest CPU | ingest peak RSS | slowest file alone"
            " | its CPU | its heap peak | explain exits | slowest explain CPU | its peak RSS |") in text
    assert (res["crashes"], res["unaccounted"], res["trust_violations"]) == (0, 0, 0), text
    # Every hostile file class of issue 8 ran through ingest (and explain where it is one file).
    for name in ("FIFO in the folder", "symlink to /dev/zero", "over a 1 MiB per-file limit", "csv field limit",
                 "quote never closed", "truncated last message", "binary garbage", "empty file", "10 MB header line",
                 "NUL bytes", "nested parentheses", "broken encoded words", "hostile mbox files",
                 "hostile quarantine CSVs", "not UTF-8", "symlink loop", "eml cells name a FIFO", "above the machine's memory",
                 "generated header blocks (40) + 7 extreme files"):
        assert f"| {name}" in text or f" {name}" in text, name
    assert res["classes"] == 20 and res["inputs"] > 40 + 7 + 40
    assert res["slowest_s"] > 0 and res["slowest_mib"] > 0 and "slowest class through ingest: " in text
    assert res["slowest_file_alone_ms"] > 0 and res["slowest_file_alone_mib"] > 0 and "slowest file through ingest alone: " in text
    assert res["slowest_explain_s"] > 0 and res["slowest_explain_mib"] > 0 and "slowest single file (explain): " in text


def test_the_benchmark_counts_a_hang_and_a_traceback_as_crashes_and_a_lost_row_as_unaccounted(tmp_path):
    env = dict(os.environ)
    hung = run_child([sys.executable, "-c", "import time; time.sleep(30)"], env, timeout=0.5)
    assert hung.rc is None and "hung" in explain_outcome(hung)
    boom = run_child([sys.executable, "-c", "raise ValueError('x')"], env, timeout=30)
    assert boom.rc == 1 and explain_outcome(boom) is not None
    one = run_child([sys.executable, "-c", "import sys; print('error: x', file=sys.stderr); sys.exit(2)"], env, 30)
    assert one.rc == 2 and explain_outcome(one) is None and one.cpu_s >= 0
    two = run_child([sys.executable, "-c", "import sys; print('a\\nb', file=sys.stderr); sys.exit(2)"], env, 30)
    assert explain_outcome(two) is not None
    # A folder claimed to hold 3 inputs that holds 1 message: 2 unaccounted.
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.eml").write_bytes(b"From: a@example.com\r\n\r\nhi\r\n")
    r = run_file_case(FileCase("short", 3), folder)
    assert (r.accounted, r.unaccounted, r.crashes) == (1, 2, ())
    assert r.ingest.peak_mib > 10 and r.ingest.cpu_s > 0
