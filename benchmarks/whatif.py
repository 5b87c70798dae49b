"""What-if over ~1M recipient rows with a 10k-entry pack, against one evaluate of the same pack.

Run: .venv/bin/python -m benchmarks.whatif [--rows 1000000] [--entries 10000] [--repeat 2]
Traffic and pack come from benchmarks.rules_sql_data (the SQL-backend benchmark's generator),
so both benchmarks measure the same tenant. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import duckdb

from benchmarks.rules_sql_data import benchmark_policy, generate_tables
from edrules.backends.sql import evaluate_sql
from edrules.catalog import load_catalog
from edrules.rules.model import BulkPolicy, FromPolicy, ProviderDef
from edrules.workbench import Workbench


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        t = time.perf_counter()
        con = duckdb.connect(str(db))
        n_msgs, n_rows = generate_tables(con, args.rows)
        con.close()
        t_gen = time.perf_counter() - t

        before = benchmark_policy(args.entries)
        with Workbench(db) as wb:
            now = wb.now  # the same evaluation time for every run
        after = replace(before, name="aligned", from_policy=FromPolicy.ALIGNED)
        mg = load_catalog().providers["mailgun"]
        bulk = replace(before, name="bulk-mailgun", bulk_mailers={**before.bulk_mailers, "mailgun": BulkPolicy.ALLOW},
                       providers={**before.providers,
                                  "mailgun": ProviderDef(mg.name, mg.envelope_suffixes, mg.dkim_domains)})
        n_entries = len(before.allow) + len(before.block)

        con = duckdb.connect(str(db), read_only=True)
        t_eval, table = _best(lambda: evaluate_sql(con, before, now=now), args.repeat)
        assert table.num_rows == n_rows
        con.close()

        def cold():
            with Workbench(db) as wb:
                return wb.whatif(before, after)

        t_cold, diff = _best(cold, args.repeat)

        def opened(snapshot: bool):
            def run():
                with Workbench(db, snapshot=snapshot) as wb:
                    wb.con
            return run

        # Read-only Workbenches copy the file into memory so they never block ingest: its cost.
        t_snap, _ = _best(opened(True), args.repeat)
        t_inplace, _ = _best(opened(False), args.repeat)
        wb = Workbench(db)
        wb.whatif(before, after)
        t_warm, diff_bulk = _best(lambda: (wb.forget(bulk), wb.whatif(before, bulk))[1], args.repeat)
        t_cached, _ = _best(lambda: wb.whatif(before, after), args.repeat)
        wb.close()

    cores = os.cpu_count()
    print(f"## Workbench: what-if\n")
    print(f"`python -m benchmarks.whatif --rows {args.rows} --entries {args.entries} --repeat {args.repeat}` "
          f"on {platform.processor() or platform.machine()}, {cores} cores, DuckDB {duckdb.__version__}; "
          f"best of {args.repeat}. Traffic and pack from `benchmarks/rules_sql_data.py` "
          f"({n_msgs:,} messages, {n_rows:,} recipient rows, generated in {t_gen:.1f} s; "
          f"pack of {n_entries:,} allow/block entries; now = {now:%Y-%m-%d}).\n")
    print("| run | seconds | × one evaluate | changed rows |")
    print("|---|---:|---:|---:|")
    print(f"| one `evaluate_sql` of the pack (Arrow out) | {t_eval:.2f} | 1.00 | |")
    print(f"| what-if strict → aligned, cold (both packs evaluated, diff, summary) | {t_cold:.2f} | "
          f"{t_cold / t_eval:.2f} | {diff.changed:,} |")
    print(f"| what-if → bulk allow Mailgun, deployed pack cached | {t_warm:.2f} | "
          f"{t_warm / t_eval:.2f} | {diff_bulk.changed:,} |")
    print(f"| what-if again, both cached (diff and summary only) | {t_cached:.2f} | "
          f"{t_cached / t_eval:.2f} | {diff.changed:,} |")
    print(f"| open read-only, in-memory snapshot (the default; part of cold) | {t_snap:.2f} | "
          f"{t_snap / t_eval:.2f} | |")
    print(f"| open read-only in place (`snapshot=False`) | {t_inplace:.2f} | {t_inplace / t_eval:.2f} | |")


if __name__ == "__main__":
    main()
