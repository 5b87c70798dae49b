"""Benchmark: SQL backend over generated tenant traffic with a 100k-entry pack, against a bare
DuckDB scan + join of the same tables measured in the same run; and a generated 100M-row year
read from Parquet and evaluated end to end.

Run: nice .venv/bin/python -m benchmarks.rules_sql [--rows 1e6,1e7] [--year 1e8] [--write-docs]
Data goes to $BENCH_DATA (default /tmp/edrules-bench), never into the repository.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from benchmarks.rules_sql_data import benchmark_policy, generate_parquet, generate_tables
from edrules.backends.sql import policy_tables, registered

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
DATA = Path(os.environ.get("BENCH_DATA", "/tmp/edrules-bench"))
MEMORY = os.environ.get("BENCH_MEMORY", "10GB")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
SECTION = "## Rules: SQL backend"


def connect(path: Path | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path) if path else ":memory:")
    con.execute(f"SET memory_limit = '{MEMORY}'")
    con.execute(f"SET temp_directory = '{DATA / 'spill'}'")
    con.execute("SET preserve_insertion_order = false")
    return con


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


# The baseline: every recipient row joined to its message, and each message's envelope sender
# looked up in the pack's entry table: the least any per-recipient evaluation must do.
BARE_SQL = """
SELECT count(*), count(e.value)
FROM {recipients} r
JOIN {messages} m ON m.dataset = r.dataset AND m.msg_key = r.msg_key
LEFT JOIN {entries} e ON e.value = m.envelope_from
"""
COUNTS_SQL = "SELECT action, category, count(*) AS n FROM ({sql}) GROUP BY ALL ORDER BY n DESC"


def measure(con, policy, *, messages="messages", recipients="recipients", repeat=2,
            copy_to: Path | None = None) -> dict:
    res: dict = {}
    res["compile_s"], _ = timed(lambda: policy_tables(policy, now=NOW))
    t = time.perf_counter()
    with registered(con, policy, now=NOW, messages=messages, recipients=recipients) as sql:
        res["register_s"] = time.perf_counter() - t  # policy tables + distinct client IPs
        entries = next(name for name in _registered_names(con) if name.endswith("_entries"))
        res["bare_s"], bare = timed(
            lambda: con.execute(BARE_SQL.format(recipients=recipients, messages=messages, entries=entries)).fetchall(),
            repeat)
        res["sql_s"], counts = timed(lambda: con.execute(COUNTS_SQL.format(sql=sql)).fetchall(), repeat)
        if copy_to is not None:
            res["copy_s"], _ = timed(lambda: con.execute(f"COPY ({sql}) TO $f (FORMAT parquet)",
                                                         {"f": str(copy_to)}).fetchall())
    res["rows"] = bare[0][0]
    res["counts"] = counts
    res["ratio"] = res["sql_s"] / res["bare_s"]
    return res


def _registered_names(con) -> list[str]:
    return [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE view_name LIKE '_edr_%'").fetchall()]


def run_tables(rows: int, policy) -> dict:
    path = DATA / f"tables-{rows}.duckdb"
    DATA.mkdir(parents=True, exist_ok=True)
    fresh = not path.exists()
    con = connect(path)
    if fresh:
        t = time.perf_counter()
        generate_tables(con, rows)
        print(f"  generated {rows:,} rows in {time.perf_counter() - t:.1f}s", flush=True)
    res = measure(con, policy)
    res["messages"] = con.execute("SELECT count(*) FROM messages").fetchall()[0][0]
    con.close()
    return res


def run_year(rows: int, policy) -> dict:
    out = DATA / f"year-{rows}"
    if not (out / "recipients").exists():
        t = time.perf_counter()
        generate_parquet(out, rows)
        print(f"  generated the year ({rows:,} rows) in {time.perf_counter() - t:.1f}s", flush=True)
    con = connect()
    msgs = f"read_parquet('{out}/messages/*.parquet')"
    rcpts = f"read_parquet('{out}/recipients/*.parquet')"
    verdicts = DATA / "year-verdicts.parquet"
    res = measure(con, policy, messages=msgs, recipients=rcpts, repeat=1, copy_to=verdicts)
    # Parquet in -> verdict Parquet out: policy tables + distinct IPv6 scan, then the COPY.
    res["end_to_end_s"] = res["register_s"] + res["copy_s"]
    res["messages"] = con.execute(f"SELECT count(*) FROM {msgs}").fetchall()[0][0]
    res["parquet_gb"] = sum(f.stat().st_size for f in out.rglob("*.parquet")) / 1e9
    res["verdicts_gb"] = verdicts.stat().st_size / 1e9
    verdicts.unlink()
    con.close()
    return res


def report(results: dict[str, dict], entries: int) -> str:
    lines = [
        SECTION,
        "",
        f"`nice .venv/bin/python -m benchmarks.rules_sql` on {platform.machine()} with {os.cpu_count()} cores "
        f"(shared with other work), DuckDB {duckdb.__version__}, memory_limit {MEMORY}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d}. Pack: {entries:,} entries (block senders/domains, allow domains "
        "with and without subdomains, v4/v6 CIDRs, provider/domain/CIDR pairs, user/domain scopes, "
        "expired entries), `bulk_mailers` allow + block, strict From-policy. Traffic: "
        "benchmarks/rules_sql_data.py (a 10k-user tenant, ~3.1 recipients per message).",
        "",
        "Times are seconds, best of 2 (the year: one run). *bare* = scan of recipients joined to messages "
        "and to the entry table (`BARE_SQL`) in the same run; *SQL backend* = the full per-recipient "
        "verdict query (`verdict_sql`), aggregated by action x category inside DuckDB; *tables* = "
        "policy -> Arrow tables + distinct IPv6 client IPs (once per pack and dataset); *to Parquet* = the same "
        "query writing every verdict row (reason text included) with COPY; *end to end* = tables + to Parquet.",
        "",
        "| recipient rows | messages | tables | bare scan+join | SQL backend | ratio | to Parquet | end to end |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {r['rows']:,} ({name.split()[0]}{' table' if 'file' in name else ''}) | {r['messages']:,} | {r['register_s']:.2f} | {r['bare_s']:.2f} | "
            f"{r['sql_s']:.2f} | {r['ratio']:.2f}x | {_opt(r.get('copy_s'))} | {_opt(r.get('end_to_end_s'))} |"
        )
    last = list(results.values())[-1]
    lines += ["", "Verdicts of the largest run (recipients): " + ", ".join(
        f"{a}/{c} {n:,}" for a, c, n in last["counts"]) + ".", "", ANALYSIS]
    return "\n".join(lines) + "\n"


# Written from profiles taken on 2026-11-28 (DuckDB JSON profiling, `SET profiling_mode = 'detailed'`);
# kept with the code so a re-run keeps the explanation next to fresh numbers.
ANALYSIS = """Targets (issue 13): SQL <= 3x the bare scan+join of the same tables in the same run, and
the 100M-row year (evaluate + summary) in <= 60 s on 2 cores.

- **Ratio 4.8x at 10M rows (was 6.5x), not 3x.** Since issue 13 the query reads the derived
  facts ingest stored (no CASE per message), gives every verdict its full reason with evidence
  (the proof of a pair, the forgery variant), and is generated from edrules/rules/semantics.py.
  What made it faster: candidates aggregated per identity *value* and joined in the one probe
  pass; gates and proofs evaluated on one row per candidate of the ~1% of messages that have one
  (a DuckDB lambda with captured columns cost ~0.4 ms a message even behind a CASE, 17 s at 10M
  when it ran per message); a narrow per-message result (decision, texts, no structs or lists)
  joined to the recipients, the messages with a scoped hit joined apart.
- **What the rest costs** (operator profile at 10M rows, 2 threads): the recipient join 1.7 s,
  the probe pass (identity columns + the facts a proof reads, DKIM list included) 1.6 s, the
  decision pass 0.9 s + its projection 1.1 s, distinct sender domains for the suffix join 1.0 s,
  joining the proven hits back 0.8 s, distinct client IPs and the IPv4 text check 1.0 s. The bare
  query is one join reading 3 columns; the rules read both From sides, envelope, client IP,
  DKIM, bulk provider, category and six derived flags, in two passes.
- **Not done:** parsing client IPs to integers at ingest (a derived column) would remove the
  distinct-IP pass and the text check; a derived list of passing DKIM domains would make the
  probe pass narrower. msg_key here is 16 hex digits; ingest writes 64 (sha256), which makes
  the joins heavier (not measured)."""


def _opt(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def write_docs(text: str) -> None:
    """Replace our section of docs/benchmarks.md, or append it; other sections stay untouched."""
    old = DOCS.read_text(encoding="utf-8") if DOCS.exists() else "# Benchmarks\n"
    if SECTION in old:
        head, _, rest = old.partition(SECTION)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1:] if nxt >= 0 else ""
        new = head + text + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    DOCS.write_text(new, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1e6,1e7", help="recipient-row counts for table runs ('' for none)")
    ap.add_argument("--year", type=float, default=0, help="recipient rows of the Parquet year (e.g. 1e8)")
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--clean", action="store_true", help="delete generated data afterwards")
    args = ap.parse_args()
    policy = benchmark_policy(args.entries, today=NOW.date())
    results: dict[str, dict] = {}
    for rows in [int(float(x)) for x in args.rows.split(",") if x]:
        print(f"tables, {rows:,} recipient rows", flush=True)
        results[f"DuckDB file {rows:.0e}"] = r = run_tables(rows, policy)
        print(f"  bare {r['bare_s']:.2f}s  sql {r['sql_s']:.2f}s  ratio {r['ratio']:.2f}  tables {r['register_s']:.2f}s",
              flush=True)
    if args.year:
        print(f"Parquet year, {int(args.year):,} recipient rows", flush=True)
        results["Parquet year"] = r = run_year(int(args.year), policy)
        print(f"  bare {r['bare_s']:.1f}s  sql {r['sql_s']:.1f}s  copy {r['copy_s']:.1f}s  "
              f"end to end {r['end_to_end_s']:.1f}s", flush=True)
    text = report(results, args.entries)
    print(text)
    if args.write_docs:
        write_docs(text)
    if args.clean:
        shutil.rmtree(DATA, ignore_errors=True)


if __name__ == "__main__":
    main()
