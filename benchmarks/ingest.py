"""Ingest throughput on the corpus against the stdlib headers-only parse of the same messages.

Run: .venv/bin/python -m benchmarks.ingest [--corpus ../shared/corpus] [--repeat 3]
Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

from edrules.ingest import ingest_paths
from edrules.ingest.pipeline import discover
from edrules.ingest.readers import read_unit_bytes

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def stdlib_ceiling(units) -> tuple[float, int]:
    """Seconds to read every message and parse its header with BytesHeaderParser(compat32)."""
    parser = BytesHeaderParser(policy=policy.compat32)
    t0 = time.perf_counter()
    size = 0
    for u in units:
        if u.kind == "csv":
            continue
        raw = read_unit_bytes(u)
        size += len(raw)
        parser.parsebytes(raw)
    return time.perf_counter() - t0, size


def run_ingest(folders, jobs: int) -> tuple[float, object]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = ingest_paths(Path(tmp) / "bench.duckdb", folders, dataset="bench", jobs=jobs)
        return time.perf_counter() - t0, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs for each measurement")
    ap.add_argument("--jobs", type=int, nargs="*", default=None, help="worker counts [1 and all cores]")
    args = ap.parse_args()
    folders = sorted(p for p in args.corpus.iterdir() if p.is_dir())
    units, _, _ = discover(folders)
    n = sum(1 for u in units if u.kind != "csv")
    cores = os.cpu_count() or 1
    jobs_list = args.jobs or sorted({1, cores})

    ceiling = min(stdlib_ceiling(units)[0] for _ in range(args.repeat))
    _, size = stdlib_ceiling(units)
    ceiling_rate = n / ceiling
    print(f"corpus: {args.corpus} ({n:,} messages, {size / 1e6:.1f} MB), {cores} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    print()
    print("| measurement | seconds | msg/s | MB/s | vs stdlib ceiling |")
    print("|---|---:|---:|---:|---:|")
    print(f"| stdlib BytesHeaderParser (compat32), read + headers-only parse, 1 core "
          f"| {ceiling:.2f} | {ceiling_rate:,.0f} | {size / 1e6 / ceiling:.1f} | 100% |")
    for jobs in jobs_list:
        best, summary = min((run_ingest(folders, jobs) for _ in range(args.repeat)), key=lambda r: r[0])
        rate = summary.messages / best
        print(f"| edrules ingest end to end (discover, extract, DuckDB load), jobs={jobs} "
              f"| {best:.2f} | {rate:,.0f} | {summary.bytes / 1e6 / best:.1f} | {rate / ceiling_rate:.0%} |")
    print()
    print(f"last run: {summary}")


if __name__ == "__main__":
    main()
