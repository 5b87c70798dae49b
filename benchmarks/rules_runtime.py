"""Benchmark: runtime-backend verdicts/s and per-message p50/p99 with 100 and 100k entries,
against a bare dict-lookup loop over the same facts measured in the same run.

Run: .venv/bin/python -m benchmarks.rules_runtime [--write-docs]   (offline, pinned to one core)
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import platform
import random
import time
from datetime import datetime, timezone
from pathlib import Path

from edrules.backends.runtime import RuntimeEvaluator
from edrules.domains import org_domain
from edrules.facts import DkimSignatureResult, MessageFacts
from edrules.rules.model import (
    Entry,
    EntryKind,
    FromPolicy,
    ListKind,
    Policy,
    ProviderDef,
    Scope,
    ScopeKind,
    Via,
    ViaKind,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Rules: runtime backend"
NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
MESSAGES = int(os.environ.get("BENCH_MESSAGES", "20000"))
ROUNDS = 3
SES = ProviderDef("amazonses", ("amazonses.com",), ("amazonses.com",))
TLDS = ("com", "net", "org", "cz", "co.uk", "de")


def _domain(rng: random.Random, i: int) -> str:
    return f"d{i}-{rng.randrange(10**6)}.{rng.choice(TLDS)}"


def make_policy(n: int, rng: random.Random) -> tuple[Policy, list[str], list[str], list[int]]:
    """n entries: 35% senders, 30% domains (half with subdomains), 20% CIDRs (v4 and v6),
    10% pairs, 5% scoped to a recipient domain or user. Returns the policy and the listed
    senders / domains / v4 network ints so the traffic can hit them."""
    entries: list[Entry] = []
    senders, domains, nets = [], [], []
    for i in range(n):
        lst = ListKind.ALLOW if i % 3 else ListKind.BLOCK
        r = rng.random()
        scope = Scope()
        if rng.random() < 0.05:
            scope = (Scope(ScopeKind.DOMAIN, f"tenant{i % 50}.example") if i % 2
                     else Scope(ScopeKind.USER, f"user{i % 500}@tenant{i % 50}.example"))
        eid = f"{lst.value}[{i}]"
        if r < 0.35:
            v = f"u{i}@{_domain(rng, i)}"
            senders.append(v)
            entries.append(Entry(eid, lst, EntryKind.SENDER, v, scope=scope))
        elif r < 0.65:
            v = _domain(rng, i)
            domains.append(v)
            entries.append(Entry(eid, lst, EntryKind.DOMAIN, v, subdomains=bool(i % 2), scope=scope))
        elif r < 0.85:
            if i % 4:
                plen = rng.choice((16, 20, 24, 28, 32))
                net = ipaddress.ip_network((rng.randrange(2**32), plen), strict=False)
                nets.append(int(net.network_address))
            else:
                net = ipaddress.ip_network((rng.randrange(2**128), rng.choice((32, 48, 64, 128))), strict=False)
            entries.append(Entry(eid, lst, EntryKind.IP, str(net), scope=scope))
        else:
            v = _domain(rng, i)
            domains.append(v)
            via = Via(ViaKind.PROVIDER, "amazonses") if i % 2 else Via(ViaKind.DOMAIN, "mailer.example")
            entries.append(Entry(eid, lst, EntryKind.DOMAIN, v, via=via, scope=scope))
    allow = tuple(e for e in entries if e.list is ListKind.ALLOW)
    block = tuple(e for e in entries if e.list is ListKind.BLOCK)
    policy = Policy(name=f"bench-{n}", from_policy=FromPolicy.ALIGNED, allow=allow, block=block,
                    bulk_mailers={}, providers={"amazonses": SES})
    return policy, senders, domains, nets


def make_facts(n: int, rng: random.Random, senders, domains, nets) -> list[MessageFacts]:
    """Traffic: ~1/3 hits a listed sender/domain/CIDR, the rest misses; mixed auth results,
    1-3 recipients, a few null senders and invalid Froms."""
    out = []
    for i in range(n):
        hit = rng.random()
        if hit < 0.12 and senders:
            env = rng.choice(senders)
        elif hit < 0.24 and domains:
            env = f"bounce@{('mail.' if i % 2 else '')}{rng.choice(domains)}"
        else:
            env = f"bounce{i}@{_domain(rng, i)}"
        hdr = env if rng.random() < 0.6 else f"news@{_domain(rng, i + 7)}"
        ip = (str(ipaddress.IPv4Address(rng.choice(nets) + 1)) if hit > 0.9 and nets
              else str(ipaddress.IPv4Address(rng.randrange(2**32))))
        env_d, hdr_d = env.rpartition("@")[2], hdr.rpartition("@")[2]
        null = rng.random() < 0.02
        rcpts = tuple(f"user{rng.randrange(1000)}@tenant{rng.randrange(60)}.example"
                      for _ in range(rng.choice((1, 1, 1, 2, 3))))
        out.append(MessageFacts(
            msg_key=str(i),
            header_from=hdr, header_from_domain=hdr_d, header_from_org=org_domain(hdr_d),
            from_invalid=rng.random() < 0.01,
            envelope_from="" if null else env,
            envelope_from_domain=None if null else env_d,
            envelope_from_org=None if null else org_domain(env_d),
            helo=f"mx.{env_d}", helo_org=org_domain(env_d),
            client_ip=ip,
            spf=rng.choice(("pass", "pass", "fail", "softfail", "none", None)),
            dkim=(DkimSignatureResult(hdr_d, "s1", rng.choice(("pass", "fail")), org_domain(hdr_d)),)
            if rng.random() < 0.5 else (),
            dmarc=rng.choice(("pass", "fail", "none", None)),
            dmarc_policy=rng.choice(("none", "quarantine", "reject", None)),
            bulk_provider="amazonses" if rng.random() < 0.1 else None,
            category=rng.choice((None, None, None, "spam", "phishing", "malware", "ham")),
            recipients=rcpts,
        ))
    return out


def rules_yaml(policy: Policy) -> str:
    """The policy written back as a rules file, to time the analyst's compile step at scale."""
    out = [f"name: {policy.name}", f"from_policy: {policy.from_policy}"]
    for lst, entries in (("allow", policy.allow), ("block", policy.block)):
        out.append(f"{lst}:")
        for e in entries:
            item = f"  - {{{e.kind}: '{e.value}'"
            if e.subdomains:
                item += ", subdomains: true"
            if e.via is not None:
                item += f", via: '{e.via.value}'"
            if e.scope.kind is not ScopeKind.GLOBAL:
                item += f", scope: '{e.scope}'"
            out.append(item + "}")
    return "\n".join(out) + "\n"


def pipeline(policy: Policy, tmp: Path) -> dict[str, float]:
    """CPU seconds of each step from rules file to a loaded evaluator."""
    from edrules.pack import build_pack, load_pack, write_pack
    from edrules.rules.parse import parse_rules

    text = rules_yaml(policy)
    times: dict[str, float] = {}
    t = time.process_time()
    parsed = parse_rules(text)
    times["parse + validate"] = time.process_time() - t
    t = time.process_time()
    write_pack(build_pack(parsed, source_bytes=text.encode()), tmp / "pack.json")
    times["build + write pack"] = time.process_time() - t
    t = time.process_time()
    loaded = load_pack(tmp / "pack.json", allow_unsigned=True)
    times["load pack"] = time.process_time() - t
    t = time.process_time()
    RuntimeEvaluator(loaded.policy)
    times["build indices"] = time.process_time() - t
    times["_bytes"] = (tmp / "pack.json").stat().st_size
    return times


def phases(ev: RuntimeEvaluator, facts: list[MessageFacts]) -> dict[str, float]:
    """CPU µs per message of each stage of evaluate(), for the profile note."""
    from edrules.backends.runtime import _utc_date, ip_to_int
    from edrules.derive import derive
    from edrules.facts import Verdict

    today = _utc_date(NOW)
    ms = [(f, derive(f), ip_to_int(f.client_ip)) for f in facts]
    stages = {
        "derive facts": lambda: [derive(f) for f in facts],
        "probe indices": lambda: [ev._collect(f, d, ip, today) for f, d, ip in ms],
        "steps 4-7": lambda: [ev._message_level_after_lists(f, d) for f, d, _ in ms],
        "build Verdicts": lambda: [[Verdict(r, "deliver", "clean", "", "default", ()) for r in f.recipients]
                                   for f in facts],
    }
    out = {}
    for name, fn in stages.items():
        best = min(_cpu(fn) for _ in range(ROUNDS))
        out[name] = best / len(facts) * 1e6
    return out


def _cpu(fn) -> float:
    t = time.thread_time()
    fn()
    return time.thread_time() - t


def per_message(fn, facts) -> tuple[list[int], float, float]:
    """Per-message CPU-time latencies (ns), total CPU seconds and total wall seconds.

    CPU time (CLOCK_THREAD_CPUTIME_ID), because the 2-core machine is shared with other
    engineers' test runs: wall time would measure their load, not this code. Wall time is
    reported beside it. GC is frozen by the caller so the policy's long-lived objects are not
    rescanned, as in a long-running gateway process."""
    lat = [0] * len(facts)
    clock = time.thread_time_ns
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    for i, f in enumerate(facts):
        t0 = clock()
        fn(f)
        lat[i] = clock() - t0
    return lat, time.thread_time() - cpu0, time.perf_counter() - wall0


def best_of(fn, facts) -> tuple[list[int], float, float]:
    """Best of ROUNDS by CPU time (noise only ever slows a run down)."""
    best = None
    for _ in range(ROUNDS):
        run = per_message(fn, facts)
        if best is None or run[1] < best[1]:
            best = run
    return best


def pct(lat: list[int], q: float) -> float:
    s = sorted(lat)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write-docs", action="store_true", help=f"append/replace '{SECTION}' in docs/benchmarks.md")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says
    rows = []
    for n in (100, 100_000):
        rng = random.Random(20261128 + n)
        policy, senders, domains, nets = make_policy(n, rng)
        facts = make_facts(MESSAGES, rng, senders, domains, nets)
        n_verdicts = sum(len(f.recipients) for f in facts)
        t0 = time.perf_counter()
        ev = RuntimeEvaluator(policy)
        build = time.perf_counter() - t0
        index = {e.value: e.id for e in (*policy.allow, *policy.block)}

        def baseline(f, index=index):
            # The floor: one dict probe per recipient and a tuple, no semantics at all.
            return [(r, index.get(f.envelope_from)) for r in f.recipients]

        def runtime(f, ev=ev):
            return ev.evaluate(f, NOW)

        gc.collect()
        gc.freeze()
        base_lat, base_s, _ = best_of(baseline, facts)
        rt_lat, rt_s, rt_wall = best_of(runtime, facts)
        gc.unfreeze()
        cats: dict[str, int] = {}
        for f in facts:
            for v in ev.evaluate(f, NOW):
                cats[v.category] = cats.get(v.category, 0) + 1
        stage_us = phases(ev, facts)
        rows.append({
            "entries": n, "messages": len(facts), "verdicts": n_verdicts, "build_s": build,
            "rt_vps": n_verdicts / rt_s, "rt_wall_vps": n_verdicts / rt_wall, "rt_p50": pct(rt_lat, 0.50), "rt_p99": pct(rt_lat, 0.99),
            "base_vps": n_verdicts / base_s, "base_p50": pct(base_lat, 0.50), "base_p99": pct(base_lat, 0.99),
            "cats": cats, "phases": stage_us,
        })
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rng = random.Random(7)
        pipe = pipeline(make_policy(100_000, rng)[0], Path(tmp))
    report = render(rows, pipe)
    print(report)
    if args.write_docs:
        write_docs(report)


def render(rows, pipe) -> str:
    lines = [
        SECTION, "",
        "```", ".venv/bin/python -m benchmarks.rules_runtime --write-docs", "```", "",
        f"`benchmarks/rules_runtime.py`, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, Python "
        f"{platform.python_version()}, one core pinned, best of {ROUNDS} runs. The 2-core machine is shared "
        f"(load average {os.getloadavg()[0]:.1f} at the end of this run), so rates and latencies are "
        f"measured in thread CPU time; the wall-clock rate is shown for reference. "
        f"Synthetic policies (35% senders, 30% domains, 20% CIDRs v4+v6, 10% pairs, 5% scoped) and "
        f"{rows[0]['messages']:,} synthetic messages (1-3 recipients, mixed auth, ~1/3 hitting an entry); "
        f"latency is per message (all its recipients), `evaluate(facts, now)` end to end. Baseline: "
        f"a bare dict lookup of the envelope sender per recipient over the same facts.", "",
        "| entries | index build | runtime verdicts/s (CPU) | (wall) | p50 µs | p99 µs | baseline verdicts/s | baseline p50 µs | baseline p99 µs | runtime / baseline time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['entries']:,} | {r['build_s']:.2f} s | {r['rt_vps']:,.0f} | {r['rt_wall_vps']:,.0f} | {r['rt_p50']:.1f} | "
            f"{r['rt_p99']:.1f} | {r['base_vps']:,.0f} | {r['base_p50']:.2f} | {r['base_p99']:.2f} | "
            f"{r['base_vps'] / r['rt_vps']:.1f}× |"
        )
    big = rows[-1]
    ok_rate = big["rt_vps"] >= 50_000
    ok_p99 = big["rt_p99"] < 100
    lines += [
        "",
        f"Targets (100k entries): ≥ 50,000 verdicts/s — {'met' if ok_rate else 'NOT met'} "
        f"({big['rt_vps']:,.0f}); p99 < 100 µs — {'met' if ok_p99 else 'NOT met'} ({big['rt_p99']:.1f} µs).",
        "Verdict mix at 100k entries: " + ", ".join(f"{k} {v:,}" for k, v in sorted(big["cats"].items())) + ".",
        "",
        f"From rules file to evaluator at 100k entries (CPU seconds; pack {pipe['_bytes'] / 1e6:.1f} MB): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in pipe.items() if not k.startswith("_")) + ".",
        "",
        "Where a message's time goes (CPU µs per message, same run; 100 / 100k entries): "
        + ", ".join(f"{k} {rows[0]['phases'][k]:.1f} / {big['phases'][k]:.1f}" for k in big["phases"]) + ".",
        "",
        "- The index probes are a handful of dict lookups and one `bisect` per message whatever the",
        "  entry count; they cost more at 100k entries only because the maps no longer fit in cache.",
        "  Scoped entries are looked up by recipient key, never scanned.",
        "- `Verdict` is a frozen slotted dataclass: building one costs about as much as the dict",
        "  lookup baseline does for a whole message, so the baseline ratio is bounded below by it.",
        "- Wall-clock rates drop with the machine's load; the CPU-time rate is the code's cost.",
        "",
    ]
    return "\n".join(lines)


def write_docs(report: str) -> None:
    """Replace our own section if present, else append; the rest of the file is left as is."""
    text = DOCS.read_text(encoding="utf-8") if DOCS.exists() else "# Benchmarks\n"
    if SECTION in text:
        head, _, rest = text.partition(SECTION)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1:] if nxt >= 0 else ""
        text = head + report + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + report
    DOCS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
