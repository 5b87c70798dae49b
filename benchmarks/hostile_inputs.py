"""Hostile header blocks against ingest: crashes, unaccounted inputs, trust violations, cost.

Every generated message is a genuine top written by our gateway `mx.acme.example` (six
gateway layouts, three trust configurations) with a block the sender wrote below it: forged
Received / Authentication-Results / Received-SPF / Return-Path fields, duplicates, folding,
comments, quoting, encoded words, lines without a colon and no-break-space folds. The sender's
block must never change a fact our side vouches for (client IP, HELO, envelope, SPF, DKIM,
DMARC, authserv-id, bulk provider): each message is compared with its genuine top over a
plain sender block. Extreme single files (50,000 nested parentheses, a 1 MB line, 5,000
fields, 3,000 Received hops, binary data) are timed apart; the slowest is reported with its
peak memory. The baseline is the stdlib header parse (`BytesHeaderParser`) of the same bytes.

Run: .venv/bin/python -m benchmarks.hostile_inputs [--count 3000] [--seed 8]
Prints a Markdown table for docs/benchmarks.md; exits 1 when anything is not 0.
tests/test_ingest_hostile_headers.py drives the same generator through hypothesis.
"""

from __future__ import annotations

import argparse
import random
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


def run(count: int, seed: int, out=sys.stdout) -> dict:
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
    # Every input accounted for: ingest a folder of all of them, one file each.
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for n, h in enumerate(inputs):
            (folder / f"g{n:05d}.eml").write_bytes(h.raw)
        for n, raw in enumerate(extremes.values()):
            (folder / f"x{n}.eml").write_bytes(raw)
        files = count + len(extremes)
        summary = ingest_paths(str(Path(tmp) / "h.duckdb"), [folder], jobs=1, progress=False)
        unaccounted = files - (summary.messages + summary.errors)
    slowest = sorted(times, key=lambda t: t[0], reverse=True)[:3]
    peaks = [(_peak_bytes(raw, default), name) for _, name, raw in slowest]
    peak = max(peaks)
    sec_s, name_s, _ = slowest[0]
    result = {
        "inputs": files, "crashes": len(crashes), "unaccounted": unaccounted, "trust_violations": len(violated),
        "slowest": name_s, "slowest_ms": sec_s * 1000, "slowest_mib": peaks[0][0] / 2**20,
        "peak_mib": peak[0] / 2**20, "peak_file": peak[1],
        "rate": count / generated_s, "baseline_rate": count / baseline_s,
    }
    print(f"hostile inputs: {count} generated (seed {seed}) + {len(extremes)} extreme files", file=out)
    print("", file=out)
    print("| inputs tried | crashes | unaccounted | trust violations | slowest file | its CPU time | its peak memory"
          " | largest peak of the 3 slowest |", file=out)
    print("|---:|---:|---:|---:|---|---:|---:|---:|", file=out)
    print(f"| {files} | {len(crashes)} | {unaccounted} | {len(violated)} | {name_s} | {sec_s * 1000:.1f} ms"
          f" | {peaks[0][0] / 2**20:.1f} MiB | {peak[0] / 2**20:.1f} MiB ({peak[1]}) |", file=out)
    print("", file=out)
    print(f"generated messages: {result['rate']:,.0f} msg/s through facts_from_bytes against {result['baseline_rate']:,.0f} msg/s for the stdlib header parse"
          f" alone ({result['baseline_rate'] / result['rate']:.1f}x).", file=out)
    for c in crashes[:10]:
        print(f"CRASH {c}", file=out)
    for h, bad in violated[:10]:
        print(f"TRUST VIOLATION [{h.gateway} / {h.trust}] {bad}\n{h.raw.decode('utf-8', 'replace')}", file=out)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=8)
    args = ap.parse_args(argv)
    res = run(args.count, args.seed)
    return 1 if res["crashes"] or res["unaccounted"] or res["trust_violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
