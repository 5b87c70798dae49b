"""Benchmark: quarantine store add and release against their durable minimum, same run.

Baselines: for add, writing the same bytes durably with nothing else (temp file, fsync, rename,
directory fsync); for release, handing the same bytes to the same SMTP sink with smtplib and no
store. Both sides of each pair see the same messages, interleaved, best of --repeat.

Run: .venv/bin/python -m benchmarks.store [--messages 300] [--repeat 3]   (needs ../shared/corpus)
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import tempfile
import time
from pathlib import Path

from edrules.runtime.release import release, release_key
from edrules.runtime.store import QuarantinedRecipient, SqliteQuarantineStore, _fsync_dir
from tests.runtime_sink import SmtpSink

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "phishing_pot"


def _messages(n: int) -> list[bytes]:
    # aiosmtpd (like RFC 5321) refuses lines over 1,000 octets; Postfix would fold them.
    out = [raw for p in sorted(CORPUS.rglob("*.eml"))
           if max(map(len, (raw := p.read_bytes()).split(b"\n")), default=0) <= 990][:n]
    if not out:
        raise SystemExit(f"no usable .eml under {CORPUS}")
    return out


def _timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def bare_durable_writes(msgs: list[bytes], d: Path) -> None:
    for i, raw in enumerate(msgs):
        tmp, final = d / f".t{i}", d / f"m{i}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, raw)
        os.fsync(fd)
        os.close(fd)
        os.replace(tmp, final)
        _fsync_dir(d)


def store_adds(msgs: list[bytes], d: Path) -> SqliteQuarantineStore:
    store = SqliteQuarantineStore(d)
    for i, raw in enumerate(msgs):
        store.add(raw, [QuarantinedRecipient("bob@corp.test", "spam", "bench", "category:spam")],
                  envelope_from="x@example.org", client_ip="192.0.2.1", helo="h", queue_id=f"Q{i}",
                  pack_name="bench", pack_version="1")
    return store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    msgs = _messages(args.messages)
    n, mb = len(msgs), sum(map(len, msgs)) / 1e6
    base = Path(tempfile.mkdtemp(prefix="edrules-bench-store-"))
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in ("bare", "add", "smtp", "release")}
    try:
        with SmtpSink() as sink:
            for r in range(args.repeat):
                d1, d2 = base / f"bare{r}", base / f"store{r}"
                d1.mkdir()
                rows["bare"].append(_timed(lambda: bare_durable_writes(msgs, d1)))
                holder = {}
                rows["add"].append(_timed(lambda: holder.setdefault("s", store_adds(msgs, d2))))
                store = holder["s"]
                key = release_key(d2)
                ids = [it.id for it in store.list(limit=None)]

                def plain_smtp():
                    with smtplib.SMTP("127.0.0.1", sink.port) as s:
                        for raw in msgs:
                            s.sendmail("x@example.org", ["bob@corp.test"], raw)

                def releases():
                    for iid in ids:
                        release(store, iid, next_hop=("127.0.0.1", sink.port), actor="bench", how="cli", key=key)

                rows["smtp"].append(_timed(plain_smtp))
                rows["release"].append(_timed(releases))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    best = {k: min(v) for k, v in rows.items()}
    print(f"{n} messages from {CORPUS.name} ({mb:.1f} MB), best of {args.repeat}, load avg {os.getloadavg()[0]:.1f}")
    print(f"{'measurement':58} {'ms/msg wall':>12} {'ms/msg CPU':>11} {'vs baseline (wall)':>19}")
    labels = {"bare": "bare durable write (tmp, fsync, rename, dir fsync)",
              "add": "SqliteQuarantineStore.add, 1 recipient",
              "smtp": "smtplib to the sink, one connection, no store",
              "release": "release(): claim, read, sign, new SMTP connection, confirm"}
    for k, ref in (("bare", "bare"), ("add", "bare"), ("smtp", "smtp"), ("release", "smtp")):
        w, c = best[k]
        ratio = w / best[ref][0]
        print(f"{labels[k]:58} {1000 * w / n:12.2f} {1000 * c / n:11.2f} {ratio:18.2f}x")


if __name__ == "__main__":
    main()
