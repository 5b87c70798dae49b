"""Ingest throughput on the corpus against the stdlib headers-only parse of the same messages.

Run: .venv/bin/python -m benchmarks.ingest [--corpus ../shared/corpus] [--repeat 3]
Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

from edrules.ingest import ingest_paths
from edrules.ingest.pipeline import discover
from edrules.ingest.readers import read_unit_bytes

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def stdlib_ceiling(units) -> tuple[float, float, int]:
    """(wall s, CPU s, bytes) to read every message and parse its header block with
    BytesHeaderParser(policy=compat32): the practical ceiling for a header-facts pipeline."""
    parser = BytesHeaderParser(policy=policy.compat32)
    t0, c0 = time.perf_counter(), time.process_time()
    size = 0
    for u in units:
        if u.kind == "csv":
            continue
        raw = read_unit_bytes(u)
        size += len(raw)
        parser.parsebytes(raw)
    return time.perf_counter() - t0, time.process_time() - c0, size


def _cpu() -> tuple[float, float]:
    """CPU seconds of this process, and of its reaped children (the forked workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def run_ingest(folders, jobs: int) -> tuple[float, float, object, float]:
    """(wall s, CPU s including workers, summary, CPU s of the parent process alone) of a full
    ingest into a fresh database file."""
    with tempfile.TemporaryDirectory() as tmp:
        t0, (p0, k0) = time.perf_counter(), _cpu()
        summary = ingest_paths(Path(tmp) / "bench.duckdb", folders, dataset="bench", jobs=jobs)
        wall, (p1, k1) = time.perf_counter() - t0, _cpu()
        return wall, (p1 - p0) + (k1 - k0), summary, p1 - p0


def _burn(n: int) -> None:
    x = 0
    for i in range(n):
        x += i * i


def cores_available(jobs: int, n: int = 5_000_000) -> float:
    """Throughput of `jobs` busy processes relative to one: how many cores this run really got
    (a shared or throttled machine gives less than os.cpu_count())."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    _burn(n)
    one = time.perf_counter() - t0
    with mp.get_context("fork").Pool(jobs) as pool:
        t0 = time.perf_counter()
        pool.map(_burn, [n] * jobs)
        many = time.perf_counter() - t0
    return jobs * one / many


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--repeat", type=int, default=3, help="best of N interleaved runs")
    ap.add_argument("--jobs", type=int, default=None, help="parallel worker count [all cores]")
    args = ap.parse_args()
    folders = sorted(p for p in args.corpus.iterdir() if p.is_dir())
    units, _, _ = discover(folders)
    n = sum(1 for u in units if u.kind != "csv")
    cores = os.cpu_count() or 1
    jobs = args.jobs or cores
    load_before = os.getloadavg()[0]
    best: dict[str, tuple] = {}
    for _ in range(args.repeat):
        # Interleaved, so a burst of load from other processes hits every measurement alike.
        for name, fn in (("stdlib", lambda: stdlib_ceiling(units)), ("j1", lambda: run_ingest(folders, 1)),
                         ("jN", lambda: run_ingest(folders, jobs))):
            r = fn()
            if name not in best or r[0] < best[name][0]:
                best[name] = r
    sw, sc, size = best["stdlib"]
    w1, c1, s1, _ = best["j1"]
    wn, cn, sn, pn = best["jN"]
    got = cores_available(jobs)
    print(f"corpus: {args.corpus} ({n:,} messages, {size / 1e6:.1f} MB); {cores} cores; best of "
          f"{args.repeat}; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print()
    print("| measurement | wall s | msg/s (wall) | MB/s (wall) | CPU s | msg/CPU-s | vs ceiling (CPU) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| stdlib `BytesHeaderParser` compat32: read + headers-only parse, 1 core | {sw:.2f} | {n / sw:,.0f} "
          f"| {size / 1e6 / sw:.1f} | {sc:.2f} | {n / sc:,.0f} | 100% |")
    print(f"| `ingest_paths(jobs=1)`: discover, extract, load DuckDB | {w1:.2f} | {s1.messages / w1:,.0f} "
          f"| {s1.bytes / 1e6 / w1:.1f} | {c1:.2f} | {s1.messages / c1:,.0f} | {(s1.messages / c1) / (n / sc):.0%} |")
    print(f"| `ingest_paths(jobs={jobs})` | {wn:.2f} | {sn.messages / wn:,.0f} | {sn.bytes / 1e6 / wn:.1f} "
          f"| {cn:.2f} | {sn.messages / cn:,.0f} | speed-up {w1 / wn:.2f}x (wall) |")
    print()
    print(f"jobs={jobs}: the parent process (walk, trust detection, staged loads into DuckDB) used {pn:.2f} "
          f"CPU s, the workers {cn - pn:.2f}")
    print()
    print(f"cores actually available to {jobs} busy processes during this run: {got:.2f} "
          f"(pure-Python busy loop, {jobs} processes vs 1)")
    print()
    print(f"summary line: {sn}")


if __name__ == "__main__":
    main()
