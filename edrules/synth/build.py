"""Turn the month's drafts into signed, gateway-stamped .eml files, a zone file and a quarantine CSV."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from email.utils import format_datetime, parseaddr
from pathlib import Path

from edrules.errors import EdrulesError
from edrules.facts import Action, Category
from edrules.synth import gateway, keys, mime, scenarios, text
from edrules.synth.draft import Draft
from edrules.synth.gateway import AuthOutcome
from edrules.synth.policy import AllowEntry, Decision, decide
from edrules.synth.readme import readme
from edrules.synth.world import (
    DNS, GATEWAY, GATEWAY_IP, MIN_USERS, OTP_FROM, OUTBOUND, OUTBOUND_IP, PARCEL_FROM, PARTNERS, TENANT_DOMAIN, USERS,
)
from edrules.synth.zone import Zone

LABELS = (Category.HAM, Category.SPAM, Category.PHISHING, Category.MALWARE)
DEFAULT_START = date(2025, 9, 1)
CSV_COLUMNS = ("received_at", "recipient", "envelope_from", "client_ip", "helo", "header_from", "subject",
               "message_id", "category", "reason", "score", "quarantine_state", "eml")
Keys = dict[tuple[str, str], bytes]  # (domain, selector) -> PEM private key


@dataclass(frozen=True, slots=True)
class Written:
    path: str  # relative to the output directory
    draft: Draft
    received: datetime
    auth: AuthOutcome
    decisions: tuple[tuple[str, Decision], ...]
    size: int


@dataclass(frozen=True, slots=True)
class Tenant:
    out: Path
    seed: int
    start: date
    days: int
    ctx: scenarios.Ctx
    allow: tuple[AllowEntry, ...]
    messages: tuple[Written, ...]


def make_ctx(users: int) -> scenarios.Ctx:
    if not MIN_USERS <= users <= len(USERS):
        raise EdrulesError(f"--users must be between {MIN_USERS} and {len(USERS)}, got {users}")
    return scenarios.Ctx(tuple(scenarios.Mailbox(u, f"{u.local}@{TENANT_DOMAIN}") for u in USERS[:users]))


def base_zone(keys_dir: Path) -> tuple[Zone, Keys]:
    """Every domain's SPF, DKIM keys and DMARC, plus the hosts whose names appear in Received;
    and the signing keys of every published selector (a signer without one is a bug)."""
    zone = Zone()
    signing: Keys = {}
    dns = dict(DNS)
    for s in text.SPAMMERS:
        dns[s.domain] = text.spammer_dns(s)
    for domain, d in dns.items():
        if d.spf:
            zone.add(domain, "TXT", d.spf)
        if d.dmarc:
            zone.add(f"_dmarc.{domain}", "TXT", d.dmarc)
        for sel in d.selectors:
            pem = signing[(domain, sel.name)] = keys.load_or_create(keys_dir, domain, sel.name, sel.bits)
            zone.add(f"{sel.name}._domainkey.{domain}", "TXT", keys.public_txt(pem))
    zone.add(TENANT_DOMAIN, "MX", f"10 {GATEWAY}.")
    zone.add_host(GATEWAY, GATEWAY_IP)
    zone.add_host(OUTBOUND, OUTBOUND_IP)
    for host, ip, _people in PARTNERS.values():
        zone.add_host(host, ip)
    for host, ip in scenarios.MAILCHIMP_HOSTS:
        zone.add_host(host, ip)
        zone.add(host, "TXT", f"v=spf1 include:{host.split('.', 2)[2]} -all")
    return zone, signing


def render(d: Draft, signing: Keys) -> bytes:
    """The message as it left the sender's last MTA: signed, maybe altered by a list, re-signed."""
    boundary = "=_" + hashlib.sha256(d.message_id.encode()).hexdigest()[:16] + "_"
    raw = mime.build(d.content, d.sent, d.tz_minutes, d.message_id, boundary)
    for domain, sel in d.signers:
        raw = mime.sign(raw, domain, sel, signing[(domain, sel)], d.sent)
    if d.footer:
        raw = raw + d.footer.encode("utf-8")
    if d.list_headers:
        raw = "".join(f"{k}: {v}\n" for k, v in d.list_headers).encode("utf-8") + raw
    for domain, sel in d.resign:
        raw = mime.sign(raw, domain, sel, signing[(domain, sel)], d.sent)
    return raw


def _queue_id(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz") for _ in range(12))


def stamp(d: Draft, raw: bytes, zone: Zone, received: datetime, rng: random.Random) -> tuple[bytes, AuthOutcome]:
    """What the gateway prepends: Return-Path/Delivered-To at delivery, A-R, Received-SPF, Received."""
    r = d.route
    header_from = parseaddr(dict(d.content.headers).get("From", ""))[1] or None
    auth = gateway.evaluate(zone, raw, r.ip, r.helo, r.envelope_from, header_from, GATEWAY)
    single = d.recipients[0] if len(d.recipients) == 1 else None
    lines = [f"Return-Path: <{r.envelope_from}>"]
    if single:
        lines.append(f"Delivered-To: {single}")
    lines.append("Authentication-Results: " + gateway.authentication_results(GATEWAY, auth, r.envelope_from))
    lines.append("Received-SPF: " + auth.spf_header)
    lines.append("Received: " + gateway.received(r.helo, r.ip, r.rdns, GATEWAY, _queue_id(rng), single, received))
    return ("\n".join(lines) + "\n").encode("utf-8") + raw, auth


def _sender_hop(d: Draft, rng: random.Random) -> bytes:
    """The sender's own submission hop, below ours: ingest must not take its IP as the client."""
    if d.scenario not in ("colleague", "partner"):
        return b""
    host = d.route.helo
    client = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(2, 254)}"
    when = d.sent.astimezone(timezone(timedelta(minutes=d.tz_minutes))) + timedelta(seconds=1)
    return (f"Received: from [{client}] (unknown [{client}])\n\tby {host} with ESMTPSA id {_queue_id(rng)};\n"
            f"\t{format_datetime(when)}\n").encode("ascii")


def file_name(d: Draft, seq: int) -> str:
    return f"{d.label}/{d.sent:%Y%m%d-%H%M%S}-{seq:04d}-{d.scenario}.eml"


def generate(out: Path, seed: int, users: int, days: int, start: date, keys_dir: Path) -> Tenant:
    ctx = make_ctx(users)
    if days < 1 or days > 366:
        raise EdrulesError(f"--days must be between 1 and 366, got {days}")
    if start + timedelta(days=days) > datetime.now(timezone.utc).date():
        # verifiers refuse DKIM signatures whose t= lies in the future
        raise EdrulesError(f"the period {start} + {days} days must end before today")
    allow = (AllowEntry(ctx.otp_user.address, OTP_FROM), AllowEntry(ctx.parcel_user.address, PARCEL_FROM))
    drafts = scenarios.drafts(ctx, seed, start, days)
    zone, signing = base_zone(keys_dir)
    for d in drafts:
        if d.route.rdns:
            zone.add_host(d.route.rdns, d.route.ip)
    rng = random.Random(f"{seed}:gateway")
    written = []
    files: dict[str, bytes] = {}
    for seq, d in enumerate(drafts, 1):
        received = d.sent + timedelta(seconds=1 + rng.randrange(20))
        raw, auth = stamp(d, _sender_hop(d, rng) + render(d, signing), zone, received, rng)
        decisions = tuple((rc, decide(d.label, _from_addr(d), d.route.envelope_from, d.route.helo, rc, allow)) for rc in d.recipients)
        path = file_name(d, seq)
        files[path] = raw
        written.append(Written(path, d, received, auth, decisions, len(raw)))
    tenant = Tenant(out, seed, start, days, ctx, allow, tuple(written))
    _write(out, tenant, files, zone)
    return tenant


def _from_addr(d: Draft) -> str | None:
    return parseaddr(dict(d.content.headers).get("From", ""))[1] or None


def _write(out: Path, tenant: Tenant, files: dict[str, bytes], zone: Zone) -> None:
    """Replace the folder's contents, touching only files that change: others may be reading
    the committed tenant (notebooks, tests) while it is regenerated."""
    out.mkdir(parents=True, exist_ok=True)
    old = set()
    for label in LABELS:
        (out / str(label)).mkdir(exist_ok=True)
        old.update(p.relative_to(out).as_posix() for p in (out / str(label)).glob("*.eml"))
    files = {**files,
             "zone.txt": zone.to_master(ZONE_HEADER).encode("utf-8"),
             "quarantine.csv": quarantine_csv(tenant).encode("utf-8"),
             "README.md": readme(tenant).encode("utf-8")}
    for rel, data in files.items():
        _replace(out / rel, data)
    for rel in sorted(old - set(files)):  # only .eml files an earlier run wrote
        (out / rel).unlink()


def _replace(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # atomic: a reader sees the old file or the new one


ZONE_HEADER = (
    "edrules demo tenant DNS: synthetic records for offline SPF/DKIM/DMARC verification.\n"
    "Generated by `edrules synth`; every domain here except the sending networks is fictional,\n"
    "and the DKIM keys are demo-only keys published in the repository."
)


def quarantine_csv(tenant: Tenant) -> str:
    """The gateway's quarantine export: one row per quarantined message, its quarantined recipients
    joined by ';' (columns as edrules.ingest.quarantine reads them; `reason` is extra)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    rng = random.Random(f"{tenant.seed}:scores")
    for m in tenant.messages:
        held = [(rc, dec) for rc, dec in m.decisions if dec.action is Action.QUARANTINE]
        if not held:
            continue
        d = m.draft
        reason = held[0][1].reason
        w.writerow((
            m.received.strftime("%Y-%m-%dT%H:%M:%SZ"), ";".join(rc for rc, _ in held), d.route.envelope_from or "<>",
            d.route.ip, d.route.helo, _from_addr(d) or "", dict(d.content.headers).get("Subject", ""),
            d.message_id, str(d.label), str(reason), f"{_score(rng, d.label):.1f}", "quarantined", m.path,
        ))
    return buf.getvalue()


def _score(rng: random.Random, label: Category) -> float:
    lo, hi = {Category.HAM: (-1.0, 3.0), Category.SPAM: (6.0, 18.0), Category.PHISHING: (7.0, 20.0),
              Category.MALWARE: (25.0, 40.0)}[label]
    return lo + rng.random() * (hi - lo)
