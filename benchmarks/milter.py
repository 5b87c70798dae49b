"""The gateway's cost: milter CPU per message and end-to-end messages/s through a real Postfix,
against Postfix without the milter and Debian's rspamd scanning the same corpus, in one run.

Run (as root, Debian postfix + rspamd installed):
    .venv/bin/python -m benchmarks.milter [--copies 3] [--clients 4] [--no-rspamd]

CPU per message is the stable figure on a shared 2-core machine (msgs/s drifts with load):
  - in-process: Gateway.process alone (facts + verdict + quarantine store), per message;
  - milter process: utime+stime of `edrules milter` (pymilter + libmilter + Gateway) while
    Postfix feeds it the corpus, per message;
  - Postfix: its whole process tree; rspamd: its process tree while rspamc scans the corpus.
Two milter modes: policy-only (facts from the upstream gateway's Authentication-Results,
--trusted-authserv) and full (SPF, DKIM, DMARC verified here against the tenant's zone file).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import smtplib
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the Postfix / milter fixtures the tests use

from postfix import MilterProcess, Postfix, SmtpSink, make_keys, make_pack, shared_tmpdir  # noqa: E402

from components import free_port  # noqa: E402

TENANT = ROOT / "data" / "demo-tenant"
TENANT_GATEWAY = "mx1.northwind-traders.cz"
TENANT_DOMAIN = "northwind-traders.cz"
PEERS = ROOT.parent / "shared" / "peers"
TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Msg:
    raw: bytes
    mail_from: str
    rcpts: tuple[str, ...]
    client_ip: str
    helo: str


def corpus(copies: int) -> list[Msg]:
    """The demo tenant's mail with the envelope its gateway recorded (Return-Path, Delivered-To,
    the trusted Received hop), `copies` times (each copy a distinct message)."""
    from edrules.runtime.gateway import recorded_envelope

    base = []
    for p in sorted(TENANT.glob("*/*.eml")):
        raw = p.read_bytes()
        e = recorded_envelope(raw, TENANT_GATEWAY)
        if not e.rcpts or not all(r.endswith("@" + TENANT_DOMAIN) for r in e.rcpts):
            continue
        base.append(Msg(raw, e.mail_from, e.rcpts, e.client_ip or "192.0.2.1", e.helo or "unknown"))
    out = []
    for c in range(copies):
        for m in base:
            # A distinct Message-ID per copy: the quarantine stores each copy, as it would live.
            raw = m.raw.replace(b"Message-ID: <", f"Message-ID: <c{c}.".encode(), 1)
            out.append(Msg(raw, m.mail_from, m.rcpts, m.client_ip, m.helo))
    return out


# -- CPU accounting from /proc (as ../shared/peers/bench_client.py does) ----------------------

def _procs() -> dict[int, tuple[int, float]]:
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            s = open(f"/proc/{p}/stat").read()
        except OSError:
            continue
        rest = s[s.rindex(")") + 2:].split()
        out[int(p)] = (int(rest[1]), sum(int(x) for x in rest[11:15]) / TCK)
    return out


def tree_cpu(root: int) -> float:
    """utime+stime (+ reaped children) of root and all its descendants, in seconds."""
    ps = _procs()
    tree, changed = {root}, True
    while changed:
        changed = False
        for pid, (ppid, _) in ps.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                changed = True
    return sum(ps[p][1] for p in tree if p in ps)


# -- in-process --------------------------------------------------------------------------------

class NullStore:
    """Accepts quarantine writes and keeps nothing: isolates the store's cost."""

    def add(self, raw, recipients, **kw):
        return []


def inprocess(msgs: list[Msg], pack: Path, pub: Path, *, trusted: bool, reps: int = 2, store=None) -> dict:
    from edrules.auth.resolver import ZoneResolver
    from edrules.runtime.gateway import Gateway

    best = None
    outcomes: dict[str, int] = {}
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as st:
            kw = ({"trusted_authserv": [TENANT_GATEWAY]} if trusted
                  else {"resolver": ZoneResolver.from_file(TENANT / "zone.txt")})
            g = Gateway(pack, pub, st, authserv_id="mx.bench.test", store=store, **kw)
            g.process(msgs[0].raw, mail_from=msgs[0].mail_from, rcpts=msgs[0].rcpts,
                      client_ip=msgs[0].client_ip, helo=msgs[0].helo)  # warm imports and caches
            outcomes = {}
            c0, t0 = time.process_time(), time.perf_counter()
            for m in msgs:
                d = g.process(m.raw, mail_from=m.mail_from, rcpts=m.rcpts, client_ip=m.client_ip, helo=m.helo)
                outcomes[str(d.outcome)] = outcomes.get(str(d.outcome), 0) + 1
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        if best is None or cpu < best[0]:
            best = (cpu, wall)
    return {"cpu_ms": best[0] / len(msgs) * 1000, "wall_ms": best[1] / len(msgs) * 1000, "outcomes": outcomes}


# -- through Postfix -----------------------------------------------------------------------------

def pump(port: int, msgs: list[Msg], clients: int) -> tuple[float, int, int]:
    """Send every message over `clients` persistent SMTP connections; (wall s, accepted, refused)."""
    chunks = [msgs[i::clients] for i in range(clients)]
    counts = {"ok": 0, "refused": 0}
    lock = threading.Lock()

    def run(chunk: list[Msg]) -> None:
        s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.bench.test", timeout=60)
        for m in chunk:
            try:
                s.sendmail(m.mail_from, list(m.rcpts), m.raw)
                key = "ok"
            except smtplib.SMTPResponseException:
                key = "refused"
                s.rset()
            with lock:
                counts[key] += 1
        s.quit()

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, counts["ok"], counts["refused"]


def through_postfix(msgs: list[Msg], clients: int, milter: MilterProcess | None) -> dict:
    with SmtpSink() as sink:
        pf = Postfix(next_hop=sink.port, milter=milter.address if milter else None, domains=(TENANT_DOMAIN,),
                     extra={"smtpd_client_connection_rate_limit": "0", "default_process_limit": "20"})
        with pf:
            pump(pf.port, msgs[:20], 2)  # warm: processes forked, milter imports done
            pf.wait_queue_empty(60)
            p0 = tree_cpu(pf.pid)
            m0 = tree_cpu(milter.pid) if milter else 0.0
            t0 = time.perf_counter()
            wall, ok, refused = pump(pf.port, msgs, clients)
            pf.wait_queue_empty(120)
            total = time.perf_counter() - t0
            p1 = tree_cpu(pf.pid)
            m1 = tree_cpu(milter.pid) if milter else 0.0
    n = len(msgs)
    return {"msgs_per_s": n / total, "smtp_wall_s": wall, "accepted": ok, "refused": refused,
            "postfix_cpu_ms": (p1 - p0) / n * 1000, "milter_cpu_ms": (m1 - m0) / n * 1000}


# -- rspamd ----------------------------------------------------------------------------------------

class NxDns:
    """Answers every DNS query NXDOMAIN at once (rspamd otherwise waits on timeouts): dns_nx.py."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            if len(data) < 12:
                continue
            qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", data[:12])
            self.sock.sendto(struct.pack("!HHHHHH", qid, 0x8000 | (flags & 0x0100) | 0x0080 | 3, qd, 0, 0, ar)
                             + data[12:], addr)


def rspamd_scan(msgs: list[Msg], work: Path, kind: str = "full", reps: int = 2) -> dict | None:
    """rspamd 3.4 scanning the corpus with rspamc: `full` = the peers' full local rule set
    (network modules off); `mm` = multimap only, 5 allow/deny maps of 1,000 entries."""
    if not shutil.which("rspamd") or not (PEERS / "rspamd" / kind).is_dir():
        return None
    dns = NxDns()
    conf = work / f"rspamd-{kind}"
    shutil.copytree(PEERS / "rspamd" / kind, conf / kind)
    normal, proxy, ctl = free_port(), free_port(), free_port()
    if kind == "full":
        local = conf / "full" / "local.d"
        (local / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{normal}"; count = 2;\n')
        (local / "worker-proxy.inc").write_text(f'bind_socket = "127.0.0.1:{proxy}";\n')
        (local / "worker-controller.inc").write_text(f'bind_socket = "127.0.0.1:{ctl}";\n')
        opts = (local / "options.inc").read_text().replace("127.0.0.1:53", f"127.0.0.1:{dns.port}")
        (local / "options.inc").write_text(opts)
        cfg = ["-c", "/etc/rspamd/rspamd.conf", f"--var=LOCAL_CONFDIR={conf / 'full'}"]
    else:
        mm = conf / "mm"
        text = (mm / "rspamd-mm.conf").read_text().replace("127.0.0.1:11333", f"127.0.0.1:{normal}")
        (mm / "rspamd-mm.conf").write_text(text.replace("127.0.0.1:53", f"127.0.0.1:{dns.port}"))
        n = 1000
        (mm / f"allow_from.{n}.map").write_text("".join(f"user{i}@allowed{i % 97}.example\n" for i in range(n)))
        (mm / f"deny_dom.{n}.map").write_text("".join(f"denied{i}.example\n" for i in range(n)))
        (mm / f"deny_ip.{n}.map").write_text("".join(f"198.18.{i // 250}.{i % 250}\n" for i in range(n)))
        cfg = ["-c", str(mm / "rspamd-mm.conf"), f"--var=MMDIR={mm}", f"--var=MAPN={n}"]
    for d in ("db", "run", "log"):
        (conf / d).mkdir()
    files = work / "rspamd-corpus"
    if not files.is_dir():
        files.mkdir()
        for i, m in enumerate(msgs):
            (files / f"{i:06d}.eml").write_bytes(m.raw)
    proc = subprocess.Popen(["rspamd", "-f", "-i", "-u", "root", "-g", "root", *cfg, f"--var=DBDIR={conf / 'db'}",
                             f"--var=RUNDIR={conf / 'run'}", f"--var=LOGDIR={conf / 'log'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if b"pong" in urllib.request.urlopen(f"http://127.0.0.1:{normal}/ping", timeout=1).read():
                    break
            except OSError:
                time.sleep(0.5)
        else:
            return None
        cmd = ["rspamc", "-h", f"127.0.0.1:{normal}", "-t", "60", "-n", "16", str(files)]
        subprocess.run(cmd[:-1] + [str(files / "000000.eml")], capture_output=True)  # warm
        runs = []
        for _ in range(reps):
            c0, t0 = tree_cpu(proc.pid), time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True)
            wall, cpu = time.perf_counter() - t0, tree_cpu(proc.pid) - c0
            scanned = out.stdout.count("Results for file")
            runs.append({"msgs_per_s": len(msgs) / wall, "server_cpu_ms": cpu / len(msgs) * 1000,
                         "scanned": scanned})
        return min(runs, key=lambda r: r["server_cpu_ms"])
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        dns.sock.close()


# -- main ------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=3, help="times the 484-message tenant corpus is sent")
    ap.add_argument("--clients", type=int, default=4, help="parallel SMTP connections")
    ap.add_argument("--no-rspamd", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()

    msgs = corpus(args.copies)
    size = sum(len(m.raw) for m in msgs) / len(msgs)
    work = shared_tmpdir("edrules-bench-")
    res: dict = {"messages": len(msgs), "avg_kb": size / 1024, "load": open("/proc/loadavg").read().split()[0]}
    try:
        priv, pub = make_keys(work / "keys")
        pack = make_pack((ROOT / "data" / "rules" / "current.yaml").read_text(), work / "current.json", priv,
                         version="bench")
        res["inprocess_policy_nostore"] = inprocess(msgs, pack, pub, trusted=True, store=NullStore())
        res["inprocess_policy"] = inprocess(msgs, pack, pub, trusted=True)
        res["inprocess_auth_nostore"] = inprocess(msgs, pack, pub, trusted=False, store=NullStore())
        res["inprocess_auth"] = inprocess(msgs, pack, pub, trusted=False)
        print(f"in-process, store writes discarded: {res['inprocess_policy_nostore']['cpu_ms']:.3f} ms", flush=True)
        print(f"in-process Gateway.process: policy-only {res['inprocess_policy']['cpu_ms']:.3f} ms CPU/msg, "
              f"with SPF/DKIM/DMARC {res['inprocess_auth']['cpu_ms']:.3f} ms  {res['inprocess_auth']['outcomes']}",
              flush=True)
        res["postfix_alone"] = through_postfix(msgs, args.clients, None)
        print("postfix alone:", json.dumps(res["postfix_alone"]), flush=True)
        # The same policy with every quarantining action turned into `tag`: the milter's cost
        # without quarantine-store writes (malware keeps `quarantine`, the only choice besides reject).
        tag_rules = (ROOT / "data" / "rules" / "current.yaml").read_text() + (
            "actions:\n  block: tag\n  forgery: tag\n  bulk: tag\n  phishing: tag\n  spam: tag\n")
        tag_pack = make_pack(tag_rules.replace("name: northwind-current", "name: northwind-tag-only"),
                             work / "tag-only.json", priv, version="bench")
        for label, p, extra in (("milter_policy_tag", tag_pack, ("--trusted-authserv", TENANT_GATEWAY)),
                                ("milter_policy", pack, ("--trusted-authserv", TENANT_GATEWAY)),
                                ("milter_auth_tag", tag_pack, ("--zone", str(TENANT / "zone.txt"))),
                                ("milter_auth", pack, ("--zone", str(TENANT / "zone.txt")))):
            state = work / f"state-{label}"
            with MilterProcess(p, pub, state, args=(*extra, "--authserv-id", "mx.bench.test")) as m:
                res[label] = through_postfix(msgs, args.clients, m)
            print(f"postfix + milter ({label}):", json.dumps(res[label]), flush=True)
        # Postfix alone again: msgs/s drifts with the machine's load, so bracket the milter runs.
        res["postfix_alone_after"] = through_postfix(msgs, args.clients, None)
        print("postfix alone (again):", json.dumps(res["postfix_alone_after"]), flush=True)
        if not args.no_rspamd:
            res["rspamd_mm"] = rspamd_scan(msgs, work, "mm")
            print("rspamd (multimap only, rspamc -n 16):", json.dumps(res["rspamd_mm"]), flush=True)
            res["rspamd"] = rspamd_scan(msgs, work, "full")
            print("rspamd (full local rules, rspamc -n 16):", json.dumps(res["rspamd"]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["load_after"] = open("/proc/loadavg").read().split()[0]
    print()
    print(table(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


def table(r: dict) -> str:
    n = r["messages"]
    rows = [
        "| system | CPU per message | messages/s end to end |",
        "| --- | --- | --- |",
        f"| Gateway.process in-process, policy-only, quarantine writes discarded | {r['inprocess_policy_nostore']['cpu_ms']:.3f} ms | - |",
        f"| Gateway.process in-process, policy-only (trusted upstream A-R) | {r['inprocess_policy']['cpu_ms']:.3f} ms | - |",
        f"| Gateway.process in-process, SPF+DKIM+DMARC, quarantine writes discarded | {r['inprocess_auth_nostore']['cpu_ms']:.3f} ms | - |",
        f"| Gateway.process in-process, SPF+DKIM+DMARC (zone file) | {r['inprocess_auth']['cpu_ms']:.3f} ms | - |",
        f"| Postfix alone (no milter), before / after the milter runs | Postfix {r['postfix_alone']['postfix_cpu_ms']:.3f} / "
        f"{r['postfix_alone_after']['postfix_cpu_ms']:.3f} ms | {r['postfix_alone']['msgs_per_s']:.0f} / "
        f"{r['postfix_alone_after']['msgs_per_s']:.0f} |",
    ]
    for key, label in (("milter_policy_tag", "policy-only, tag instead of quarantine (no store writes)"),
                       ("milter_policy", "policy-only"),
                       ("milter_auth_tag", "SPF+DKIM+DMARC, tag instead of quarantine (no store writes)"),
                       ("milter_auth", "SPF+DKIM+DMARC")):
        x = r[key]
        rows.append(f"| Postfix + edrules milter, {label} | milter {x['milter_cpu_ms']:.3f} ms, "
                    f"Postfix {x['postfix_cpu_ms']:.3f} ms | {x['msgs_per_s']:.0f} |")
    for key, label in (("rspamd_mm", "multimap only, 5 maps x 1,000 entries"), ("rspamd", "full local rules")):
        x = r.get(key)
        if x:
            rows.append(f"| rspamd 3.4 {label} (rspamc -n 16, no Postfix) | rspamd {x['server_cpu_ms']:.3f} ms | "
                        f"{x['msgs_per_s']:.0f} (scan only) |")
    head = f"{n} messages ({r['avg_kb']:.1f} KB average), load {r['load']} -> {r['load_after']}"
    return head + "\n\n" + "\n".join(rows)


if __name__ == "__main__":
    main()
