"""Hostile input against ingest and explain: crashes, unaccounted inputs, trust violations, cost.

Header blocks, in process: every generated message is a genuine top written by our gateway
`mx.acme.example` (six gateway layouts, three trust configurations) with a block the sender
wrote below it: forged Received / Authentication-Results / Received-SPF / Return-Path fields,
duplicates, folding, comments, quoting, encoded words, lines without a colon and no-break-space
folds. The sender's block must never change a fact our side vouches for (client IP, HELO,
envelope, SPF, DKIM, DMARC, authserv-id, bulk provider): each message is compared with its
genuine top over a plain sender block. Extreme single files (50,000 nested parentheses, a 1 MB
line, 5,000 fields, 3,000 Received hops, binary data) are timed apart. The baseline is the
stdlib header parse (`BytesHeaderParser`) of the same bytes.

Hostile files (issue 8 item 6), in child processes: each class (a FIFO, a symlink to
/dev/zero, files over the per-file limit, CSV cells over the csv field limit and quotes never
closed, a truncated mbox, binary garbage, an empty file, a 10 MB header line, NUL bytes, deep
parentheses, broken encoded words, hypothesis-drawn mbox files and CSVs, and the header-block
folder above) is one folder read by the real `ingest_paths` into a scratch DuckDB file, and its
single files are run through `edrules explain`; each child has a timeout, its CPU time comes
from wait4 and its peak RSS from its own VmHWM. The ingest child then ingests each file alone
and reports the slowest with its Python heap peak (tracemalloc). A crash is an exception, a traceback, exit 70,
a hang, an `extract-failed` row, or explain exiting other than 0 or 2-with-one-line. An input
(a message of a file or mbox, a CSV row) is unaccounted when it yields neither a `messages`
row nor an `ingest_errors` row. The first class, one plain message, is the baseline for time
and memory (the interpreter, DuckDB and pyarrow).

Run: .venv/bin/python -m benchmarks.hostile_inputs [--count 3000] [--seed 8] [--hyp 200]
(hypothesis comes with the test extras: pip install -e '.[test]')
Prints a Markdown table for docs/benchmarks.md; exits 1 when anything is not 0.
tests/test_ingest_hostile_headers.py runs it small and drives the generator through hypothesis.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

from edrules.errors import EdrulesError
from edrules.ingest import TrustConfig, facts_from_bytes, ingest_paths

ID = "mx.acme.example"
DATE = "Tue, 1 Dec 2026 10:00:00 +0000"
ENV = "billing@partner.example"
AR = (f"Authentication-Results: {ID}; spf=pass smtp.mailfrom={ENV}; dkim=pass header.d=partner.example"
      " header.s=s1; dmarc=fail (p=reject dis=reject) header.from=partner.example")
RSPF = (f"Received-SPF: pass ({ID}: domain of {ENV} designates 198.51.100.7 as permitted sender)"
        f" receiver={ID}; client-ip=198.51.100.7; helo=mail.partner.example; envelope-from=<{ENV}>")
EDGE = f"Received: from mail.partner.example (mail.partner.example [198.51.100.7]) by {ID} (Postfix) with ESMTPS id Q1; {DATE}"

# The fields our side wrote, top first, in the layouts real gateways use.
GATEWAYS: dict[str, list[str]] = {
    "postfix, results above its Received": [f"Return-Path: <{ENV}>", AR, EDGE],
    "gateway Received not naming its id": [
        AR, f"Received: from mail.partner.example (mail.partner.example [198.51.100.7]) by gw.acme.example (Postfix) with ESMTPS id Q2; {DATE}"],
    "gmail-style, results below its Received": [f"Return-Path: <{ENV}>", EDGE, RSPF, AR],
    "mailbox hop above over a private relay": [
        f"Received: from gw.acme.example (gw.acme.example [10.1.2.3]) by mbox.acme.example with LMTP id L1; {DATE}", AR, EDGE],
    "exchange mailbox above, Received-SPF": [
        f"Received: from {ID} (203.0.113.1) by owa.acme.example (10.10.10.5) with Microsoft SMTP Server id 14.3.498.0; {DATE}",
        RSPF, AR, EDGE],
    "no Return-Path (captured before delivery)": [AR, EDGE],
}
TRUSTS: dict[str, TrustConfig] = {
    "configured id": TrustConfig(authserv_ids=frozenset({ID}), auto_detect=False),
    "configured id + relays 10/8": TrustConfig(authserv_ids=frozenset({ID}), relays=("10.0.0.0/8",), auto_detect=False),
    "auto-detected": TrustConfig(),
}
SENDER = ["From: CEO <ceo@partner.example>", "To: cfo@acme.example", "Subject: base", "Message-ID: <m1@partner.example>"]
BODY = "\r\n\r\npay the invoice\r\n"

# What the sender writes its forgeries with.
BYS = [ID, ID.upper(), ID + ".", "gw.acme.example", "mbox.acme.example", "owa.acme.example", "acme.example",
       "mail.partner.example", "relay.attacker.example", "[203.0.113.1]", "x.mail.acme.example"]
NAMES = [ID, "gw.acme.example", "mail.partner.example", "helo.attacker.example", "localhost", "unknown",
         "[10.1.2.3]", "mx.evil.example", "x.acme.example"]
IPS = ["198.51.100.7", "203.0.113.9", "10.1.2.3", "127.0.0.1", "192.168.0.1", "::1", "2001:db8::7",
       "::ffff:10.1.2.3", "fe80::1", "999.1.1.1"]
IDS = [ID, ID.upper(), ID + ".", f"{ID} 1", f"{ID} (forged)", "mx.evil.example", "acme.example", "gw.acme.example",
       "mail.partner.example", ""]
ADDRS = ["ceo@partner.example", ENV, "x@evil.example", "", "postmaster@acme.example", '"billing"@partner.example']
DOMS = ["partner.example", "evil.example", "acme.example", "Partner.Example."]
WORDS = ["pass", "fail", "none", "softfail", "neutral", "temperror", "permerror", "policy", "hardfail", "bestguesspass"]


def _received(r: random.Random) -> str:
    helo, ip, by = r.choice(NAMES), r.choice(IPS), r.choice(BYS)
    form = r.randrange(5)
    if form == 0:
        text = f"from {helo} ({r.choice(NAMES)} [{ip}]) by {by} (Postfix) with ESMTP id F{r.randrange(99)}"
    elif form == 1:
        text = f"from {helo} ({ip}) by {by} ({r.choice(IPS)}) with Microsoft SMTP Server id 15.20.1"
    elif form == 2:
        text = f"from {r.choice(NAMES)} ([{ip}] helo={helo}) by {by} with esmtps (Exim 4.9) id 1x"
    elif form == 3:
        text = f"by {by} with SMTP id {r.randrange(10**6)}"
    else:
        text = f"from {helo} (HELO {r.choice(NAMES)}) ({ip}) by {by} with SMTP"
    return f"Received: {text}; {DATE}"


def _auth_results(r: random.Random) -> str:
    aid, d = r.choice(IDS), r.choice(DOMS)
    parts = [f"spf={r.choice(WORDS)} smtp.mailfrom={r.choice(ADDRS) or d}",
             f"spf={r.choice(WORDS)} smtp.helo={r.choice(NAMES)}",
             f"dkim={r.choice(WORDS)} header.d={d} header.s=s{r.randrange(3)}",
             f"dmarc={r.choice(WORDS)} (p={r.choice(['none', 'reject', 'quarantine'])}) header.from={d}",
             f"arc={r.choice(WORDS)}", "x-forged=1", "none"]
    body = "; ".join(r.sample(parts, r.randrange(1, len(parts) + 1)))
    return f"Authentication-Results: {aid + '; ' if aid else ''}{body}"


def _received_spf(r: random.Random) -> str:
    return (f"Received-SPF: {r.choice(WORDS)} ({r.choice(IDS) or ID}: forged) receiver={r.choice(IDS) or ID};"
            f" client-ip={r.choice(IPS)}; helo={r.choice(NAMES)}; envelope-from=<{r.choice(ADDRS)}>")


def _other(r: random.Random) -> str:
    return r.choice([
        f"Return-Path: <{r.choice(ADDRS)}>",
        f"ARC-Authentication-Results: i=1; {ID}; dmarc=pass header.from={r.choice(DOMS)}",
        f"X-Original-Authentication-Results: {ID}; dmarc=pass",
        f"DKIM-Signature: v=1; a=rsa-sha256; d={r.choice(DOMS)}; s=s1; b=AAAA",
        f"Subject: =?utf-8?q?{r.choice(IDS) or 'x'}?= =?x-unknown?b?####?=",
        f"X-Spam-Status: No, score=-{r.randrange(99)}.0",
        "Received-SPF: ", "Authentication-Results: ", "Received: ",
        "Reply-To: \"a, b\" <x@evil.example>",
    ])


def _mangle(r: random.Random, line: str) -> str:
    """Fold, comment, quote or encode parts of one field (the field stays the sender's)."""
    name, _, value = line.partition(":")
    words = value.split(" ")
    for _ in range(r.randrange(4)):
        if len(words) < 2:
            break
        i = r.randrange(1, len(words))
        op = r.randrange(5)
        if op == 0:
            words[i] = "\r\n " + words[i]
        elif op == 1:
            words[i] = "\r\n\t" + words[i]
        elif op == 2:
            words[i] = f"({r.choice(IDS) or 'c'} (nested)) " + words[i]
        elif op == 3:
            words[i] = f'"{words[i]}"'
        else:
            words[i] = f"=?utf-8?q?{words[i].replace(' ', '_')}?="
    return name + ":" + " ".join(words)


def _raw_line(r: random.Random) -> str:
    """A line that is not a field: joined onto the field above it by the paste repair."""
    return r.choice([f"; dmarc=pass header.from={r.choice(DOMS)}", f"\u00a0; spf=pass smtp.mailfrom={ENV}",
                     f"by {ID} with ESMTP", "\u00a0(folded with a no-break space)", "no colon here"])


@dataclass(frozen=True, slots=True)
class Hostile:
    gateway: str
    trust: str
    raw: bytes  # genuine top + the sender's hostile block
    base: bytes  # genuine top + a plain sender block


def hostile_message(r: random.Random) -> Hostile:
    gateway = r.choice(sorted(GATEWAYS))
    trust = r.choice(sorted(TRUSTS))
    top = GATEWAYS[gateway]
    block = []
    for _ in range(r.randrange(1, 9)):
        kind = r.randrange(10)
        if kind < 3:
            line = _received(r)
        elif kind < 5:
            line = _auth_results(r)
        elif kind < 6:
            line = _received_spf(r)
        elif kind < 8:
            line = _other(r)
        elif kind < 9 and block:
            line = r.choice(block)  # a duplicate
        else:
            line = _raw_line(r)
        block.append(_mangle(r, line) if ":" in line and r.random() < 0.5 else line)
    # The sender's text starts with a field (a leading blank would be an MTA's business).
    sender = [SENDER[0], *block, *SENDER[1:]] if r.random() < 0.5 else [*SENDER[:2], *block, *SENDER[2:]]
    raw = ("\r\n".join(top + sender) + BODY).encode("utf-8")
    base = ("\r\n".join(top + SENDER) + BODY).encode("utf-8")
    return Hostile(gateway, trust, raw, base)


# Facts only our side's fields may decide.
VOUCHED = ("client_ip", "helo", "envelope_from", "envelope_from_domain", "spf", "spf_domain", "dkim", "dmarc",
           "dmarc_policy", "authserv_id", "bulk_provider")


def vouched(raw: bytes, trust: TrustConfig) -> dict:
    f = facts_from_bytes(raw, source="hostile.eml", trust=trust).facts
    return {k: getattr(f, k) for k in VOUCHED}


def violations(h: Hostile) -> list[str]:
    """Vouched facts the sender's block changed (empty when none)."""
    trust = TRUSTS[h.trust]
    got, want = vouched(h.raw, trust), vouched(h.base, trust)
    return [f"{k}: {want[k]!r} -> {got[k]!r}" for k in VOUCHED if got[k] != want[k]]


def extreme_files() -> dict[str, bytes]:
    """Single files that stress one limit each."""
    top = "\r\n".join(GATEWAYS["postfix, results above its Received"])
    hops = "\r\n".join(f"Received: from h{i}.example ([192.0.2.{i % 250}]) by h{i + 1}.example; {DATE}" for i in range(3000))
    return {
        "From with 50,000 nested parentheses": f"{top}\r\nFrom: {'(' * 50_000}ceo@partner.example{')' * 50_000}{BODY}".encode(),
        "one 1 MB Subject line": f"{top}\r\nFrom: ceo@partner.example\r\nSubject: {'x' * 1_000_000}{BODY}".encode(),
        "5,000 header fields": (top + "\r\n" + "\r\n".join(f"X-F{i}: v" for i in range(5000)) + BODY).encode(),
        "3,000 Received hops": f"{hops}\r\nFrom: ceo@partner.example{BODY}".encode(),
        "A-R with 20,000 results": f"Authentication-Results: {ID}; {'; '.join(['dkim=pass header.d=x.example'] * 20_000)}\r\n{EDGE}\r\nFrom: a@b.example{BODY}".encode(),
        "200 kB of lines without colons": (top + "\r\nFrom: a@b.example\r\n" + "no colon\r\n" * 20_000 + "To: x@y.example" + BODY).encode(),
        "binary data": bytes(random.Random(8).randrange(256) for _ in range(300_000)),
    }


def _one(raw: bytes, trust: TrustConfig) -> tuple[float, str | None]:
    """(seconds, crash) for one input: an EdrulesError with a location is an accounted-for
    rejection; any other exception is a crash."""
    t0 = time.process_time()
    try:
        facts_from_bytes(raw, source="hostile.eml", trust=trust)
    except EdrulesError as exc:
        if exc.location is None:
            return time.process_time() - t0, f"EdrulesError without location: {exc}"
    except Exception as exc:  # noqa: BLE001 - counting crashes is the point
        return time.process_time() - t0, f"{type(exc).__name__}: {exc}"
    return time.process_time() - t0, None


def _peak_bytes(raw: bytes, trust: TrustConfig) -> int:
    tracemalloc.start()
    try:
        _one(raw, trust)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- hostile files (issue 8 item 6): each class through the real ingest and explain ---------

ROOT = Path(__file__).resolve().parent.parent
MAIL = "From: CEO <ceo@partner.example>\r\nTo: cfo@acme.example\r\nSubject: {s}\r\nMessage-ID: <{s}@partner.example>\r\n\r\nhi\r\n"
FROM_ = b"From x@example.net Thu Jan  1 00:00:00 2026\n"
CSV_HEAD = "received_at,recipient,envelope_from,client_ip,category,score,quarantine_state,subject\n"
CSV_ROW = "2026-01-05T10:00:{n:02d},b@acme.example,a{n}@partner.example,192.0.2.1,spam,1,quarantined,{s}\n"
INGEST_TIMEOUT = 300.0  # seconds per class; a hang is a crash, never a stuck run
EXPLAIN_TIMEOUT = 60.0
# Every child writes its own peak resident set (VmHWM) at exit to the file HOSTILE_HWM names:
# wait4's ru_maxrss would report the forked parent's size whenever that is larger.
HWM = """
import atexit, os
def _hwm():
    with open("/proc/self/status") as st, open(os.environ["HOSTILE_HWM"], "w") as out:
        out.write(next((l.split()[1] for l in st if l.startswith("VmHWM:")), "0"))
atexit.register(_hwm)
"""
# `edrules explain FILE` exactly as the console script runs it.
EXPLAIN_CHILD = HWM + """
import sys
sys.argv = ["edrules", "explain", sys.argv[1]]
from edrules.cli import main
main()
"""
# Ingest one folder into a scratch DuckDB, then count both tables from the file.
INGEST_CHILD = HWM + """
import json, sys, time
import duckdb
from edrules.ingest import ingest_paths
t0 = time.process_time()
s = ingest_paths(sys.argv[2], [sys.argv[1]], jobs=1)
folder_cpu = time.process_time() - t0
con = duckdb.connect(sys.argv[2], read_only=True)
one = lambda q: con.execute(q).fetchone()[0]
codes = con.execute("SELECT error, count(*) FROM ingest_errors GROUP BY 1 ORDER BY 1").fetchall()
counts = {"messages": s.messages, "errors": s.errors, "duplicates": s.duplicates,
          "rows": one("SELECT count(*) FROM messages"), "error_rows": one("SELECT count(*) FROM ingest_errors"),
          "codes": codes, "folder_cpu": folder_cpu}
# Then each file alone (imports are warm now) into a second database: CPU per file, and the
# Python heap peak (tracemalloc) of the slowest two, re-run traced.
import tracemalloc
from pathlib import Path
mem = duckdb.connect()
timed = []
for p in sorted(Path(sys.argv[1]).iterdir()):
    t0 = time.process_time()
    ingest_paths(mem, [p], jobs=1)
    timed.append((time.process_time() - t0, p.name))
top = []
for sec, name in sorted(timed, reverse=True)[:2]:
    tracemalloc.start()
    ingest_paths(mem, [Path(sys.argv[1]) / name], jobs=1)
    top.append((sec, name, tracemalloc.get_traced_memory()[1]))
    tracemalloc.stop()
counts["slowest_file"] = top[0] if top else None
print(json.dumps(counts))
"""


def _mail(s: str) -> bytes:
    return MAIL.format(s=s).encode()


def _mbox(raws: list[bytes]) -> bytes:
    # mboxrd: a body line starting 'From ' is written '>From ', so only our From_ lines split.
    return b"".join(FROM_ + r.replace(b"\nFrom ", b"\n>From ") + b"\n\n" for r in raws)


# Hypothesis strategies for whole hostile messages, mbox files and quarantine CSVs (the same
# shapes as tests/test_ingest_hostile.py, drawn here with a fixed seed so a run is repeatable).
def _strategies():
    from hypothesis import strategies as st

    names = st.sampled_from(["From", "To", "Cc", "Subject", "Received", "Return-Path", "Authentication-Results",
                             "Received-SPF", "Reply-To", "Message-ID", "Date", "DKIM-Signature", "from", "FROM "])
    nasty = st.sampled_from(["=?utf-8?B?###?=", "=?x-unknown?q?abc?=", "<>", "<@>", "a@b@c", "(((", '"unterminated',
                             "\\", ";;;;", "spf=pass (", "mx.example.org; dmarc=pass (p=", "from x ([999.1.1.1])",
                             "pass (x: y) client-ip=::ffff:1.2.3.4; helo=[", "\u00e9\u4e2d\U0001f600", "\x00",
                             "Mon, 99 Foo 99999 99:99:99 +9999", "2001:db8::5%eth0", "=?utf-8?q?unterminated"])
    text = st.one_of(nasty, st.text(max_size=60), st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
    field = st.tuples(names, st.lists(text, min_size=1, max_size=3)).map(
        lambda t: (t[0] + ": " + "\r\n ".join(t[1])).encode("utf-8", "surrogatepass"))
    sep = st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n", b"\n\xc2\xa0", b"\n ", b""])
    message = st.one_of(st.lists(st.tuples(field, sep), max_size=12).map(lambda xs: b"".join(f + s for f, s in xs)),
                        st.binary(max_size=300))
    mbox = st.lists(message, min_size=1, max_size=6)
    csv_rows = st.lists(st.lists(text, min_size=0, max_size=9), max_size=8)
    return mbox, csv_rows


def _draw(strategy, n: int, seed: int) -> list:
    """n examples of a strategy, the same ones for the same seed."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    out: list = []

    @hseed(seed)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(x):
        out.append(x)

    collect()
    return out[:n]


def _hyp_csv(rows: list[list[str]]) -> tuple[str, int]:
    """A quarantine CSV of one good row and the drawn rows; (text, rows a reader must account
    for: blank rows are not records)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["received_at", "recipient", "envelope_from", "client_ip", "category", "score", "quarantine_state"])
    w.writerow(["2026-01-05T10:00:00", "a@acme.example", "b@partner.example", "192.0.2.1", "spam", "1", "quarantined"])
    for r in rows:
        w.writerow(r)
    blank = sum(1 for r in rows if not any(c.strip() for c in r))
    return buf.getvalue(), 1 + len(rows) - blank


@dataclass(frozen=True, slots=True)
class FileCase:
    """One class of hostile file: a folder ingest reads whole, the inputs (messages and CSV
    rows) it holds, the files `explain` is run on, and environment for both."""

    name: str
    inputs: int
    explain: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


def build_file_cases(root: Path, hyp: int, seed: int) -> list[tuple[FileCase, Path]]:
    """Write every hostile file class under root, one folder each. Each folder but the
    baseline's also holds one plain message, which must still load."""
    cases: list[tuple[FileCase, Path]] = []

    def folder(name: str, inputs: int, files: dict[str, bytes | str], explain: tuple[str, ...] = (),
               env: tuple[tuple[str, str], ...] = (), plain: bool = True) -> Path:
        d = root / f"c{len(cases):02d}"
        d.mkdir()
        if plain:
            (d / "plain.eml").write_bytes(_mail(f"plain{len(cases)}"))
        for fname, data in files.items():
            if isinstance(data, str):  # special files
                if data == "fifo":
                    os.mkfifo(d / fname)
                elif data.startswith("symlink:"):
                    (d / fname).symlink_to(data[len("symlink:"):])
                continue
            (d / fname).write_bytes(data)
        cases.append((FileCase(name, inputs + (1 if plain else 0), explain, env), d))
        return d

    folder("baseline: one plain message", 1, {"a.eml": _mail("base")}, ("a.eml",), plain=False)
    folder("FIFO in the folder", 1, {"pipe.eml": "fifo"}, ("pipe.eml",))
    folder("symlink to /dev/zero", 1, {"zero.eml": "symlink:/dev/zero"}, ("zero.eml",))
    big = _mail("big") + b"x" * 2_200_000
    folder("2 MB file and mbox over a 1 MiB per-file limit", 2,
           {"big.eml": big, "big.mbox": _mbox([big])}, ("big.eml",), env=(("EDRULES_MAX_FILE_MB", "1"),))
    folder("a per-file limit above the machine's memory (EDRULES_MAX_FILE_MB=10000000)", 3,
           {"small.eml": _mail("roomy"), "small.mbox": _mbox([_mail("roomy2")]),
            "small.csv": (CSV_HEAD + CSV_ROW.format(n=0, s="roomy3")).encode()}, ("small.eml",),
           env=(("EDRULES_MAX_FILE_MB", "10000000"),))
    huge = '"' + "z" * (131_072 + 10) + '"'
    rows = "".join(CSV_ROW.format(n=n, s=huge if n == 1 else f"s{n}") for n in range(8))
    folder("quarantine CSV: a cell over the csv field limit, then 6 good rows", 8, {"q.csv": (CSV_HEAD + rows).encode()})
    unclosed = "".join(CSV_ROW.format(n=n, s='"never closed' if n == 1 else f"s{n}") for n in range(6))
    folder("quarantine CSV: a quote never closed, then 4 good rows", 6, {"u.csv": (CSV_HEAD + unclosed).encode()})
    cut = _mail("cut3")[:40]  # the last message stops inside its header block
    folder("mbox with a truncated last message", 3, {"box.mbox": _mbox([_mail("m1"), _mail("m2")]) + FROM_ + cut})
    folder("1 MB of binary garbage", 1, {"garbage.eml": random.Random(seed).randbytes(1_000_000)}, ("garbage.eml",))
    folder("empty file", 1, {"empty.eml": b""}, ("empty.eml",))
    folder("one 10 MB header line", 1, {"line.eml": b"From: a@partner.example\r\nSubject: " + b"x" * 10_000_000
                                        + b"\r\n\r\nhi\r\n"}, ("line.eml",))
    nul = _mail("nul").replace(b"CEO", b"C\x00EO").replace(b"hi", b"\x00" * 1000) + b"\x00\r\nX-A: \x00\r\n"
    nul_csv = CSV_HEAD + CSV_ROW.format(n=0, s="a\x00b") + CSV_ROW.format(n=1, s="ok")
    folder("NUL bytes in headers, body and a CSV cell", 4,
           {"nul.eml": nul, "lead.eml": b"\x00" * 64 + _mail("lead"), "nul.csv": nul_csv.encode()}, ("nul.eml",))
    deep = b"From: " + b"(" * 100_000 + b"ceo@partner.example" + b")" * 100_000 + b"\r\n\r\nhi\r\n"
    nest = b"From: CEO " + b"(a " * 5000 + b")" * 5000 + b" <ceo@partner.example> " + b"(" * 3000 + b"\r\nTo: x@acme.example\r\n\r\n"
    folder("From with 100,000 nested parentheses / 5,000 nested comments", 2,
           {"deep.eml": deep, "nest.eml": nest}, ("deep.eml", "nest.eml"))
    words = ("From: =?utf-8?B?###?= <ceo@partner.example>\r\nSubject: =?x-unknown?q?abc?= =?utf-8?q?unterminated"
             " =?utf-8?b?" + "A" * 200_000 + "?= =?utf-16?b?2D3d?= =??= =?utf-8??x?=\r\nTo: =?utf-8?q?=FF=FE?=\r\n\r\nhi\r\n")
    folder("broken encoded words", 1, {"words.eml": words.encode()}, ("words.eml",))
    latin = os.fsdecode(b"r\xe9sum\xe9.eml")
    folder("file names that are not UTF-8", 2, {latin: _mail("latin"), os.fsdecode(b"vide\xff.eml"): b""}, (latin,))
    folder("dangling symlink, symlink loop", 2, {"gone.eml": "symlink:/nonexistent/x.eml", "loop.eml": "symlink:loop.eml"},
           ("gone.eml", "loop.eml"))
    eml_rows = "".join(CSV_ROW.format(n=n, s=f"e{n}").rstrip("\n") + f",{e}\n"
                       for n, e in enumerate(["pipe.eml", "/dev/zero", ".", "missing.eml", "ok.eml"]))
    d = folder("quarantine CSV whose eml cells name a FIFO, /dev/zero, a folder, nothing", 5,
               {"q.csv": (CSV_HEAD.rstrip("\n") + ",eml\n" + eml_rows).encode(), "pipe.eml": "fifo"})
    (d / "ok.eml").write_bytes(_mail("ok"))  # the FIFO and ok.eml are inputs of their own too
    cases[-1] = (FileCase(cases[-1][0].name, cases[-1][0].inputs + 2), d)
    if hyp:
        mbox_s, csv_s = _strategies()
        boxes = _draw(mbox_s, hyp, seed)
        folder(f"hypothesis: {len(boxes)} hostile mbox files", sum(len(b) for b in boxes),
               {f"h{i:03d}.mbox": _mbox(b) for i, b in enumerate(boxes)}, ("h000.mbox",))
        files, n = {}, 0
        for i, rows_ in enumerate(_draw(csv_s, hyp, seed)):
            text, k = _hyp_csv(rows_)
            files[f"h{i:03d}.csv"] = text.encode("utf-8", "surrogatepass")
            n += k
        folder(f"hypothesis: {len(files)} hostile quarantine CSVs", n, files)
    return cases


@dataclass(frozen=True, slots=True)
class ChildRun:
    rc: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    cpu_s: float  # user + system CPU of the child
    peak_mib: float  # the child's peak resident set (interpreter and DuckDB included; 0 if killed)


def run_child(cmd: list[str], env: dict[str, str], timeout: float) -> ChildRun:
    """Run a Python child with a timeout; its CPU time from wait4 (this one child's rusage,
    not the sum over all children), its peak memory from the VmHWM it writes at exit."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(suffix=".hwm") as hwm:
        env = {**env, "HOSTILE_HWM": hwm.name}
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=ROOT, env=env)
        deadline = time.monotonic() + timeout
        rc: int | None
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                p.kill()
                _, status, ru = os.wait4(p.pid, 0)
                rc = None
                break
            time.sleep(0.02)
        p.returncode = rc if rc is not None else -9  # reaped here; Popen must not wait again
        out.seek(0)
        err.seek(0)
        kib = Path(hwm.name).read_text().strip()
        return ChildRun(rc, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"),
                        ru.ru_utime + ru.ru_stime, int(kib) / 1024 if kib.isdigit() else 0.0)


def explain_outcome(r: ChildRun) -> str | None:
    """None when explain behaved (exit 0, or exit 2 with one line on stderr), else the crash."""
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    if r.rc is None:
        return "explain hung (killed at the timeout)"
    if "Traceback" in r.stderr or r.rc == 70:
        return f"explain exit {r.rc}: {lines[-1] if lines else ''}"
    if r.rc == 0 or (r.rc == 2 and len(lines) == 1):
        return None
    return f"explain exit {r.rc} with {len(lines)} lines on stderr: {r.stderr[:200]!r}"


@dataclass(frozen=True, slots=True)
class FileResult:
    case: FileCase
    accounted: int
    crashes: tuple[str, ...]
    unaccounted: int
    ingest: ChildRun
    explains: tuple[tuple[str, ChildRun], ...]
    codes: tuple[tuple[str, int], ...]
    slowest_file: tuple[str, float, float] = ("", 0.0, 0.0)  # name, CPU s, Python heap peak MiB
    folder_cpu: float = 0.0  # CPU of the folder's ingest_paths call (imports not included)


def _shown(name: str) -> str:
    """A file name for the report: bytes that are not UTF-8 as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def run_file_case(case: FileCase, folder: Path) -> FileResult:
    env = {**os.environ, **dict(case.env)}
    db = folder.parent / f"{folder.name}.duckdb"
    ing = run_child([sys.executable, "-c", INGEST_CHILD, str(folder), str(db)], env, INGEST_TIMEOUT)
    crashes: list[str] = []
    accounted, unaccounted, codes, slowest_file, folder_cpu = 0, case.inputs, (), ("", 0.0, 0.0), 0.0
    if ing.rc is None:
        crashes.append(f"ingest hung (killed after {INGEST_TIMEOUT:.0f} s)")
    elif ing.rc != 0:
        crashes.append(f"ingest exit {ing.rc}: {(ing.stderr.strip().splitlines() or [''])[-1]}")
    else:
        got = json.loads(ing.stdout.strip().splitlines()[-1])
        accounted = got["messages"] + got["errors"]
        # The summary must match the tables: a message counted but not stored is unaccounted.
        mismatch = abs(got["rows"] + got["duplicates"] - got["messages"]) + abs(got["error_rows"] - got["errors"])
        unaccounted = max(0, case.inputs - accounted) + mismatch
        codes = tuple((e, n) for e, n in got["codes"])
        folder_cpu = got["folder_cpu"]
        if got["slowest_file"]:
            sec, name, peak = got["slowest_file"]
            slowest_file = (_shown(name), sec, peak / 2**20)
        # extract-failed is ingest catching an exception it did not expect: a bug, so a crash.
        crashes += [f"ingest: {n} extract-failed rows" for e, n in codes if e == "extract-failed"]
    explains = []
    for name in case.explain:
        r = run_child([sys.executable, "-c", EXPLAIN_CHILD, str(folder / name)], env, EXPLAIN_TIMEOUT)
        explains.append((_shown(name), r))
        bad = explain_outcome(r)
        if bad:
            crashes.append(f"{name}: {bad}")
    return FileResult(case, accounted, tuple(crashes), unaccounted, ing, tuple(explains), codes, slowest_file, folder_cpu)


def run(count: int, seed: int, out=sys.stdout, hyp: int = 40, files: bool = True) -> dict:
    """The header-block generator in process (crashes, trust violations, cost against the
    stdlib parse), then every hostile file class through `ingest_paths` and `explain` in
    child processes (crashes, unaccounted inputs, CPU time and peak memory of each)."""
    r = random.Random(seed)
    inputs = [hostile_message(r) for _ in range(count)]
    extremes = extreme_files()
    default = TrustConfig()
    crashes: list[str] = []
    violated: list[tuple[Hostile, list[str]]] = []
    times: list[tuple[float, str, bytes]] = []
    generated_s = 0.0
    for n, h in enumerate(inputs):
        sec, crash = _one(h.raw, TRUSTS[h.trust])
        generated_s += sec
        if crash:
            crashes.append(crash)
            continue
        times.append((sec, f"generated #{n}", h.raw))
        bad = violations(h)
        if bad:
            violated.append((h, bad))
    for name, raw in extremes.items():
        sec, crash = _one(raw, default)
        if crash:
            crashes.append(f"{name}: {crash}")
        times.append((sec, name, raw))
    parser = BytesHeaderParser(policy=policy.compat32)
    b0 = time.process_time()
    for h in inputs:
        parser.parsebytes(h.raw)
    baseline_s = time.process_time() - b0
    slowest = sorted(times, key=lambda t: t[0], reverse=True)[:3]
    peaks = [(_peak_bytes(raw, default), name) for _, name, raw in slowest]
    sec_s, name_s, _ = slowest[0]
    results: list[FileResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gen = root / "generated"
        gen.mkdir()
        for n, h in enumerate(inputs):
            (gen / f"g{n:05d}.eml").write_bytes(h.raw)
        names = [f"x{n}-{re.sub(r'[^A-Za-z0-9]+', '-', k).strip('-')}.eml" for n, k in enumerate(extremes)]
        for name, raw in zip(names, extremes.values()):
            (gen / name).write_bytes(raw)
        cases = [(FileCase(f"generated header blocks ({count}) + {len(extremes)} extreme files", count + len(extremes),
                           tuple(names)), gen)]
        if files:
            cases[:0] = build_file_cases(root, hyp, seed)
        for case, folder in cases:
            results.append(run_file_case(case, folder))
    gen_res = results[-1]
    all_crashes = crashes + [f"{x.case.name}: {c}" for x in results for c in x.crashes]
    tried = sum(x.case.inputs for x in results)
    unaccounted = sum(x.unaccounted for x in results)
    base = results[0] if files else None
    hostile = [x for x in results if x is not base]
    slow = max(hostile, key=lambda x: x.folder_cpu)
    slow_f = max(hostile, key=lambda x: x.slowest_file[1])
    explains = [(x, name, e) for x in hostile for name, e in x.explains]
    slow_e = max(explains, key=lambda t: t[2].cpu_s) if explains else None
    result = {
        "inputs": tried, "crashes": len(all_crashes), "unaccounted": unaccounted, "trust_violations": len(violated),
        "classes": len(results), "generated_crashes": len(crashes), "generated_unaccounted": gen_res.unaccounted,
        "slowest": slow.case.name, "slowest_s": slow.folder_cpu, "slowest_mib": slow.ingest.peak_mib,
        "slowest_file": slow_f.slowest_file[0], "slowest_file_alone_ms": slow_f.slowest_file[1] * 1000,
        "slowest_file_alone_mib": slow_f.slowest_file[2],
        "slowest_explain": slow_e[1] if slow_e else None, "slowest_explain_s": slow_e[2].cpu_s if slow_e else 0.0,
        "slowest_explain_mib": slow_e[2].peak_mib if slow_e else 0.0,
        "slowest_file_ms": sec_s * 1000, "slowest_file_mib": peaks[0][0] / 2**20,
        "rate": count / generated_s, "baseline_rate": count / baseline_s,
        "crash_list": all_crashes,
    }
    print(f"hostile inputs: {count} generated header blocks (seed {seed}) + {len(extremes)} extreme files"
          + (f" + {len(results) - 2} hostile file classes ({hyp} hypothesis mbox files and CSVs each)" if files else ""),
          file=out)
    print("", file=out)
    print("| input class | inputs tried | crashes | unaccounted | folder ingest CPU | ingest peak RSS | slowest file alone"
          " | its CPU | its heap peak | explain exits | slowest explain CPU | its peak RSS |", file=out)
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|", file=out)
    for x in results:
        exits = ", ".join(f"{'hung' if e.rc is None else e.rc}" for _, e in x.explains) or "-"
        se = max((e for _, e in x.explains), key=lambda e: e.cpu_s, default=None)
        c = len(x.crashes) + (len(crashes) if x is gen_res else 0)
        fname, fsec, fpeak = x.slowest_file
        print(f"| {x.case.name} | {x.case.inputs} | {c} | {x.unaccounted} | {x.folder_cpu:.2f} s"
              f" | {x.ingest.peak_mib:.0f} MiB | {fname or '-'} | {fsec * 1000:.1f} ms | {fpeak:.1f} MiB"
              f" | {exits} | {f'{se.cpu_s:.2f} s' if se else '-'} | {f'{se.peak_mib:.0f} MiB' if se else '-'} |", file=out)
    print(f"| **total** | **{tried}** | **{len(all_crashes)}** | **{unaccounted}** | | | | | | | | |", file=out)
    print("", file=out)
    line = (f"slowest file through ingest alone: {slow_f.slowest_file[0]} ({slow_f.case.name}),"
            f" {slow_f.slowest_file[1] * 1000:.1f} ms CPU and {slow_f.slowest_file[2]:.1f} MiB Python heap peak; ")
    if slow_e:
        line += (f"slowest single file (explain): {slow_e[1]} ({slow_e[0].case.name}), {slow_e[2].cpu_s:.2f} s CPU and"
                 f" {slow_e[2].peak_mib:.0f} MiB peak RSS; ")
    line += (f"slowest class through ingest: {slow.case.name}, {slow.folder_cpu:.2f} s CPU and"
             f" {slow.ingest.peak_mib:.0f} MiB peak RSS")
    if base:
        be = base.explains[0][1]
        line += (f" (baseline, one plain message: ingest {base.folder_cpu:.2f} s and {base.ingest.peak_mib:.0f} MiB,"
                 f" explain {be.cpu_s:.2f} s and {be.peak_mib:.0f} MiB)")
    print(line + ".", file=out)
    print(f"header blocks in process: {len(violated)} trust violations; slowest file {name_s}, {sec_s * 1000:.1f} ms CPU and"
          f" {peaks[0][0] / 2**20:.1f} MiB (tracemalloc) in facts_from_bytes; {result['rate']:,.0f} msg/s against"
          f" {result['baseline_rate']:,.0f} msg/s for the stdlib header parse alone"
          f" ({result['baseline_rate'] / result['rate']:.1f}x).", file=out)
    for x in results:
        if x.case.inputs < x.accounted:
            print(f"NOTE {x.case.name}: {x.accounted} rows for {x.case.inputs} inputs", file=out)
    for c in all_crashes[:20]:
        print(f"CRASH {c}", file=out)
    for x in results:
        if x.unaccounted:
            print(f"UNACCOUNTED {x.case.name}: {x.unaccounted} of {x.case.inputs} (error rows {x.codes})", file=out)
    for h, bad in violated[:10]:
        print(f"TRUST VIOLATION [{h.gateway} / {h.trust}] {bad}\n{h.raw.decode('utf-8', 'replace')}", file=out)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--hyp", type=int, default=200, help="hypothesis-drawn mbox files and CSVs (each)")
    args = ap.parse_args(argv)
    res = run(args.count, args.seed, hyp=args.hyp)
    return 1 if res["crashes"] or res["unaccounted"] or res["trust_violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
