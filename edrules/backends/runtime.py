"""Runtime backend: per-message verdicts from in-memory indices built once per policy.

Implements docs/rules.md "Semantics" exactly; tests/test_differential.py holds it to the SQL
backend. The gateway imports this module, so it must never import pandas or duckdb.
"""

from __future__ import annotations

import ipaddress
import socket
from bisect import bisect_right
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Iterable

from edrules.facts import Action, MessageFacts, TraceStep, Verdict
from edrules.rules.model import (
    BulkPolicy,
    Entry,
    EntryKind,
    FromPolicy,
    Policy,
    ProviderDef,
    ScopeKind,
    ViaKind,
)

# IPv6 addresses live above the IPv4 space in one integer line, so one sorted array holds both.
_V6_OFFSET = 1 << 32
_STRICT, _ALIGNED = FromPolicy.STRICT, FromPolicy.ALIGNED
_DMARC_ENFORCING = ("quarantine", "reject")
# Roles of a probed identity value (bit mask: one value can be both, e.g. From = envelope).
_ENV, _HDR = 1, 2
# Scope kinds as small ints for the per-recipient check.
_GLOBAL, _SDOMAIN, _SUSER = 0, 1, 2


def ip_to_int(text: str | None) -> int | None:
    """Position of an address on the combined v4+v6 line, or None when it is not an address.

    inet_pton instead of ipaddress: ~10x faster, and ingest already wrote canonical text."""
    if not text:
        return None
    try:
        if ":" in text:
            return int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big") + _V6_OFFSET
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError):
        return None


def cidr_range(text: str) -> tuple[int, int]:
    """Inclusive [lo, hi] of a CIDR on the combined v4+v6 line."""
    net = ipaddress.ip_network(text, strict=False)
    base = 0 if net.version == 4 else _V6_OFFSET
    return int(net.network_address) + base, int(net.broadcast_address) + base


class IntervalIndex:
    """CIDRs (which nest or are disjoint, possibly repeated) cut into disjoint elementary
    segments, each with the sorted ids of the ranges covering it: one bisect per lookup,
    no scan over entries."""

    __slots__ = ("_starts", "_covers")

    def __init__(self, ranges: Iterable[tuple[int, int, int]]):
        events: dict[int, list[tuple[int, int]]] = {}
        for lo, hi, ident in ranges:
            events.setdefault(lo, []).append((1, ident))
            events.setdefault(hi + 1, []).append((-1, ident))
        active: dict[int, int] = {}  # id -> multiplicity
        starts: list[int] = []
        covers: list[tuple[int, ...]] = []
        for point in sorted(events):
            for delta, ident in events[point]:
                n = active.get(ident, 0) + delta
                if n:
                    active[ident] = n
                else:
                    active.pop(ident, None)
            starts.append(point)
            covers.append(tuple(sorted(active)))
        self._starts = starts
        self._covers = covers

    def lookup(self, x: int) -> tuple[int, ...]:
        i = bisect_right(self._starts, x) - 1
        return self._covers[i] if i >= 0 else ()

    def __len__(self) -> int:
        return len(self._starts)


def _utc_date(now: datetime | None) -> date:
    """The UTC calendar date expiry is judged by (docs/rules.md); naive datetimes are UTC."""
    if now is None:
        return datetime.now(timezone.utc).date()
    if now.tzinfo is not None:
        now = now.astimezone(timezone.utc)
    return now.date()


def _suffix_under(domain: str | None, suffixes: tuple[str, ...]) -> bool:
    """Domain equals or is label-wise under one of the suffixes."""
    if not domain:
        return False
    return any(domain == s or domain.endswith("." + s) for s in suffixes)


@dataclass(frozen=True, slots=True)
class _Ref:
    """One entry as the index holds it: which list, its file position, how it may match."""

    allow: bool
    pos: int  # position in its list: the first matching position decides
    entry: Entry
    pair: bool
    scope_kind: int
    scope_value: str | None
    via_lo: int | None = None  # CIDR bounds of a `via: <CIDR>` pair
    via_hi: int | None = None


def _ref(e: Entry, pos: int, allow: bool) -> _Ref:
    via_lo = via_hi = None
    if e.via is not None and e.via.kind is ViaKind.CIDR:
        via_lo, via_hi = cidr_range(e.via.value)
    kind = {ScopeKind.GLOBAL: _GLOBAL, ScopeKind.DOMAIN: _SDOMAIN, ScopeKind.USER: _SUSER}[e.scope.kind]
    return _Ref(allow, pos, e, e.via is not None, kind, e.scope.value, via_lo, via_hi)


class _Bucket:
    """The entries naming one value: global ones, and scoped ones keyed 'd:<domain>' /
    'u:<address>' so a recipient looks up only its own scopes (10,000 users each allowing the
    same sender cost one dict lookup per recipient, not a scan)."""

    __slots__ = ("glob", "scoped")

    def __init__(self) -> None:
        self.glob: list[_Ref] = []
        self.scoped: dict[str, list[_Ref]] = {}

    def add(self, r: _Ref) -> None:
        if r.scope_kind == _GLOBAL:
            self.glob.append(r)
        else:
            self.scoped.setdefault(_scope_key(r), []).append(r)


def _scope_key(r: _Ref) -> str:
    return ("d:" if r.scope_kind == _SDOMAIN else "u:") + (r.scope_value or "")


@dataclass(slots=True)
class _Msg:
    """Derived facts of one message (docs/rules.md "Derived facts"), computed once."""

    f: MessageFacts
    env_org: str | None
    env_domain: str | None
    header_ok: bool
    env_ok: bool  # the envelope does not claim the organisation DMARC says disowned this message
    spf_pass: bool
    spf_aligned: bool
    aligned_auth: bool
    forgery: bool
    dmarc_enforced_fail: bool
    dkim_pass: tuple[str, ...]  # d= of passing signatures
    ip: int | None
    allow_roles: int  # which identity roles plain allow entries may match (docs/rules.md table)


# A hit: (position, ref, identity name, matched value, via evidence or None).
_Hit = tuple


class RuntimeEvaluator:
    """Evaluate MessageFacts against one Policy; indices are built once in __init__.

    Both lists share one hash map from a value (address or domain) to the entries naming it,
    and CIDR interval indices; a message probes its few identity values (and the parents of
    its domains, for `subdomains`) once and collects the matching global entries; each
    recipient adds the entries scoped to its domain or address (looked up by key), and the
    lowest file position decides. No step scans the entry lists.
    """

    def __init__(self, policy: Policy):
        self.policy = policy
        self._by_value: dict[str, _Bucket] = {}
        self._ip_refs: list[_Ref] = []
        ip_global: list[tuple[int, int, int]] = []
        ip_scoped: dict[str, list[tuple[int, int, int]]] = {}
        self._has_sub = False
        # The list an entry sits in decides allow/block (not Entry.list, which merely repeats it).
        for allow, entries in ((True, policy.allow), (False, policy.block)):
            for pos, e in enumerate(entries):
                r = _ref(e, pos, allow)
                if e.kind is EntryKind.IP:
                    lo, hi = cidr_range(e.value)
                    rng = (lo, hi, len(self._ip_refs))
                    self._ip_refs.append(r)
                    if r.scope_kind == _GLOBAL:
                        ip_global.append(rng)
                    else:
                        ip_scoped.setdefault(_scope_key(r), []).append(rng)
                else:
                    bucket = self._by_value.get(e.value)
                    if bucket is None:
                        bucket = self._by_value[e.value] = _Bucket()
                    bucket.add(r)
                    self._has_sub = self._has_sub or e.subdomains
        self._ip = IntervalIndex(ip_global)
        self._ip_scoped = {k: IntervalIndex(v) for k, v in ip_scoped.items()}
        self._relays = IntervalIndex(
            (lo, hi, i) for i, (lo, hi) in enumerate(cidr_range(c) for c in policy.inbound_relays)
        )
        self._providers: dict[str, ProviderDef] = dict(policy.providers)
        self._actions = {k: Action(v) for k, v in policy.actions.items()}
        self._mode = FromPolicy(policy.from_policy)
        self._bulk = {k: BulkPolicy(v) for k, v in policy.bulk_mailers.items()}
        # Outcomes of steps 6-7 for mail that is not a forgery do not depend on the message:
        # built once, so the common path allocates nothing but the Verdict.
        not_forgery = TraceStep("from_policy", f"{self._mode}: not a forgery")
        self._not_forgery_outcome = {
            c: (self._actions[c], c, f"the upstream scanner classified it as {c}", f"category:{c}",
                (not_forgery, TraceStep("category", c)))
            for c in ("phishing", "spam")
        }
        self._clean_outcome = (
            Action.DELIVER, "clean",
            "no rule matched and it is not classified as malware, phishing or spam",
            "default", (not_forgery,),
        )

    # -- public ------------------------------------------------------------------------

    def evaluate(self, facts: MessageFacts, now: datetime | None = None) -> list[Verdict]:
        """One Verdict per recipient, in facts.recipients order."""
        if not facts.recipients:
            return []
        m = self._derive(facts)
        pre = self._message_level_before_lists(m)
        if pre is not None:
            return [Verdict(r, *pre) for r in facts.recipients]
        today = _utc_date(now)
        block_hits, allow_hits, scoped = self._collect(m, today)
        scoped_ips = bool(self._ip_scoped) and m.ip is not None
        post: tuple | None = None  # steps 4-7 do not depend on the recipient: computed once
        out: list[Verdict] = []
        for rcpt in facts.recipients:
            block = block_hits[0] if block_hits else None
            allow = allow_hits[0] if allow_hits else None
            if scoped or scoped_ips:
                # Entries scoped to this recipient's domain or address: looked up, then the
                # lowest file position across global and scoped hits decides.
                keys = ("d:" + rcpt.rpartition("@")[2] if "@" in rcpt else None, "u:" + rcpt)
                sb, sa = self._scoped_hits(m, scoped, keys, today)
                if sb and (block is None or sb[0][0] < block[0]):
                    block = sb[0]
                if sa and (allow is None or sa[0][0] < allow[0]):
                    allow = sa[0]
            if block is not None:
                out.append(Verdict(rcpt, *self._entry_verdict(block, "block")))
            elif allow is not None:
                out.append(Verdict(rcpt, *self._entry_verdict(allow, "allow")))
            else:
                if post is None:
                    post = self._message_level_after_lists(m)
                out.append(Verdict(rcpt, *post))
        return out

    # -- derived facts -----------------------------------------------------------------

    def _derive(self, f: MessageFacts) -> _Msg:
        if f.envelope_from == "":
            env_domain, env_org = f.helo, f.helo_org
        else:
            env_domain, env_org = f.envelope_from_domain, f.envelope_from_org
        hfo = f.header_from_org
        enforced_fail = f.dmarc == "fail" and f.dmarc_policy in _DMARC_ENFORCING
        header_ok = not f.from_invalid and not enforced_fail
        env_ok = not (enforced_fail and env_org is not None and env_org == hfo)
        spf_pass = f.spf == "pass"
        spf_aligned = spf_pass and env_org is not None and env_org == hfo
        dkim_pass: tuple[str, ...] = ()
        dkim_aligned = False
        if f.dkim:
            dkim_pass = tuple(s.d for s in f.dkim if s.result == "pass" and s.d)
            dkim_aligned = hfo is not None and any(
                s.result == "pass" and s.org == hfo for s in f.dkim
            )
        aligned_auth = f.dmarc == "pass" or spf_aligned or dkim_aligned
        mode = self._mode
        if not header_ok:
            forgery = True
        elif mode is _STRICT:
            forgery = hfo is not None and env_org is not None and hfo != env_org
        elif mode is _ALIGNED:
            forgery = not aligned_auth
        else:
            forgery = False
        if mode is _STRICT:
            allow_roles = _ENV if env_ok else 0
        elif mode is _ALIGNED:
            allow_roles = (_ENV if spf_pass and env_ok else 0) | (_HDR if header_ok and aligned_auth else 0)
        else:
            allow_roles = (_ENV if env_ok else 0) | (_HDR if header_ok else 0)
        return _Msg(f, env_org, env_domain, header_ok, env_ok, spf_pass, spf_aligned, aligned_auth,
                    forgery, enforced_fail, dkim_pass, ip_to_int(f.client_ip), allow_roles)

    def _provider_authenticated(self, m: _Msg, name: str) -> str | None:
        """Evidence text when provider `name` is authenticated for this message, else None."""
        p = self._providers.get(name)
        if p is None:
            return None
        if m.spf_pass and _suffix_under(m.env_domain, p.envelope_suffixes):
            return f"SPF pass for {m.env_domain}"
        for d in m.dkim_pass:
            if _suffix_under(d, p.dkim_domains):
                return f"DKIM pass d={d}"
        return None

    # -- steps 0, 1 and 4-7 ------------------------------------------------------------

    def _message_level_before_lists(self, m: _Msg) -> tuple | None:
        f = m.f
        if self.policy.inbound_enforce and (m.ip is None or not self._relays.lookup(m.ip)):
            return (
                Action.REJECT, "inbound",
                f"client IP {f.client_ip or 'unknown'} is outside the inbound relays and "
                f"inbound.enforce is on",
                "inbound:relays",
                (TraceStep("inbound", f"client_ip={f.client_ip} not in {list(self.policy.inbound_relays)}"),),
            )
        if f.category == "malware":
            return (
                self._actions["malware"], "malware",
                "the upstream scanner found malware; allow entries never override malware",
                "category:malware",
                (TraceStep("category", "malware"),),
            )
        return None

    def _message_level_after_lists(self, m: _Msg) -> tuple:
        f = m.f
        bp = f.bulk_provider
        bulk = self._bulk.get(bp) if bp else None
        if bulk is BulkPolicy.BLOCK:
            return (
                self._actions["bulk"], "bulk",
                f"mail from the {bp} network is blocked by bulk_mailers",
                f"bulk:{bp}",
                (TraceStep("bulk_provider", f"{bp}: block"),),
            )
        if not m.forgery:
            return self._not_forgery_outcome.get(f.category) or self._clean_outcome
        # The exemption never covers mail the From domain's owner disowned (DMARC p=quarantine/reject):
        # anyone with an account at the provider could otherwise send as that domain.
        exempt = (self._provider_authenticated(m, bp)
                  if bulk is BulkPolicy.ALLOW and m.header_ok else None)
        if exempt is None:
            trace = [TraceStep("from_policy", f"{self._mode}: {self._forgery_evidence(m)}")]
            if bulk is BulkPolicy.ALLOW:
                why = "but not authenticated" if m.header_ok else "but DMARC disowns the From"
                trace.append(TraceStep("bulk_provider", f"{bp}: allow, {why}"))
            return (
                self._actions["forgery"], "forgery", self._forgery_reason(m),
                f"from_policy:{self._mode}", tuple(trace),
            )
        note = TraceStep("bulk_provider", f"{bp}: allow, authenticated by {exempt}; forgery check waived")
        if f.category == "phishing" or f.category == "spam":
            return (
                self._actions[f.category], f.category,
                f"the upstream scanner classified it as {f.category}",
                f"category:{f.category}",
                (note, TraceStep("category", f.category)),
            )
        return (*self._clean_outcome[:4], (note,))

    def _forgery_reason(self, m: _Msg) -> str:
        """Plain English, built only for forgery verdicts (it is the explain sentence's tail)."""
        f, mode, hfo = m.f, self._mode, m.f.header_from_org
        if f.from_invalid:
            return f"the From header is missing, repeated or holds several mailboxes under the {mode} From-policy"
        if m.dmarc_enforced_fail:
            return (f"DMARC failed for header From {hfo}, whose owner publishes p={f.dmarc_policy}, "
                    f"under the {mode} From-policy")
        if mode is _STRICT:
            sender = "the HELO name" if f.envelope_from == "" else "the envelope sender"
            return f"header From {hfo} does not match {sender} {m.env_org} under the strict From-policy"
        return (f"header From {hfo} has no aligned authentication (DMARC {f.dmarc or 'unknown'}, "
                f"SPF {'aligned pass' if m.spf_aligned else f.spf or 'unknown'} for {m.env_org}, "
                f"no passing DKIM signature of {hfo}) under the aligned From-policy")

    def _forgery_evidence(self, m: _Msg) -> str:
        f = m.f
        if f.from_invalid:
            return "from_invalid"
        if not m.header_ok:
            return f"dmarc={f.dmarc} p={f.dmarc_policy}"
        if self._mode is _STRICT:
            return f"header_from_org={f.header_from_org} env_org={m.env_org}"
        return f"dmarc={f.dmarc} spf={f.spf} spf_aligned={m.spf_aligned} dkim_aligned=none"

    # -- steps 2 and 3: list entries ---------------------------------------------------

    def _collect(self, m: _Msg, today: date) -> tuple[list[_Hit], list[_Hit], list[tuple]]:
        """Global entries matching this message, per list in file order, and the probes whose
        buckets also hold scoped entries (resolved per recipient by _scoped_hits)."""
        f = m.f
        block: list[_Hit] = []
        allow: list[_Hit] = []
        scoped: list[tuple] = []
        get = self._by_value.get
        # Probe each identity value once (one value may carry both roles); most probes miss,
        # so only hits are materialised: (value, roles, is_parent, is_sender, bucket).
        found: list[tuple[str, int, bool, bool, _Bucket]] = []
        ef, hf = f.envelope_from, f.header_from
        if ef and ef == hf:
            b = get(ef)
            if b is not None:
                found.append((ef, _ENV | _HDR, False, True, b))
        else:
            if ef:
                b = get(ef)
                if b is not None:
                    found.append((ef, _ENV, False, True, b))
            if hf:
                b = get(hf)
                if b is not None:
                    found.append((hf, _HDR, False, True, b))
        efd, hfd = f.envelope_from_domain, f.header_from_domain
        has_sub = self._has_sub
        for d, roles in (((efd, _ENV | _HDR),) if efd and efd == hfd
                         else ((efd, _ENV), (hfd, _HDR))):
            if not d:
                continue
            b = get(d)
            if b is not None:
                found.append((d, roles, False, False, b))
            if has_sub:  # walk up the parents for `subdomains: true` entries
                i = d.find(".")
                while i >= 0:
                    parent = d[i + 1:]
                    if parent:
                        b = get(parent)
                        if b is not None:
                            found.append((parent, roles, True, False, b))
                    i = d.find(".", i + 1)
        for probe in found:
            bucket = probe[4]
            for r in bucket.glob:
                hit = self._accept(r, m, probe, today)
                if hit is not None:
                    (allow if r.allow else block).append(hit)
            if bucket.scoped:
                scoped.append(probe)
        if m.ip is not None and self._ip_refs:
            for i in self._ip.lookup(m.ip):
                hit = self._accept_ip(self._ip_refs[i], m, today)
                if hit is not None:
                    (allow if hit[1].allow else block).append(hit)
        if len(block) > 1:
            block.sort(key=_pos)
        if len(allow) > 1:
            allow.sort(key=_pos)
        return block, allow, scoped

    def _scoped_hits(self, m: _Msg, scoped: list[tuple], keys: tuple[str | None, str],
                     today: date) -> tuple[list[_Hit], list[_Hit]]:
        """Hits among entries scoped to one recipient (its domain key, its address key)."""
        block: list[_Hit] = []
        allow: list[_Hit] = []
        for key in keys:
            if key is None:
                continue
            for probe in scoped:
                for r in probe[4].scoped.get(key, ()):
                    hit = self._accept(r, m, probe, today)
                    if hit is not None:
                        (allow if r.allow else block).append(hit)
            idx = self._ip_scoped.get(key)
            if idx is not None and m.ip is not None:
                for i in idx.lookup(m.ip):
                    hit = self._accept_ip(self._ip_refs[i], m, today)
                    if hit is not None:
                        (allow if hit[1].allow else block).append(hit)
        if len(block) > 1:
            block.sort(key=_pos)
        if len(allow) > 1:
            allow.sort(key=_pos)
        return block, allow

    def _accept(self, r: _Ref, m: _Msg, probe: tuple, today: date) -> _Hit | None:
        """The hit when entry r matches the probed identity under docs/rules.md, else None."""
        value, roles, is_parent, is_sender, _ = probe
        e = r.entry
        if is_parent and not e.subdomains:
            return None
        if e.expires is not None and e.expires < today:
            return None
        evidence = None
        if r.pair:  # header From side only, trusted only when header_ok, infrastructure proven
            if not (roles & _HDR) or not m.header_ok:
                return None
            evidence = self._via_authenticated(r, m)
            if evidence is None:
                return None
            role = _HDR
        elif r.allow:
            ok = roles & m.allow_roles
            if not ok:
                return None
            role = _ENV if ok & _ENV else _HDR
        else:  # blocks match unauthenticated identities
            role = _ENV if roles & _ENV else _HDR
        name = ("envelope sender" if role == _ENV else "header From") + ("" if is_sender else " domain")
        f = m.f
        shown = value if not is_parent else (f.envelope_from_domain if role == _ENV else f.header_from_domain)
        return (r.pos, r, name, shown, evidence)

    @staticmethod
    def _accept_ip(r: _Ref, m: _Msg, today: date) -> _Hit | None:
        e = r.entry
        if e.expires is not None and e.expires < today:
            return None
        return (r.pos, r, "client IP", m.f.client_ip, None)

    def _via_authenticated(self, r: _Ref, m: _Msg) -> str | None:
        """Evidence that a pair's infrastructure side is authenticated, else None."""
        via = r.entry.via
        assert via is not None
        if via.kind is ViaKind.PROVIDER:
            ev = self._provider_authenticated(m, via.value)
            return f"{via.value} authenticated by {ev}" if ev else None
        if via.kind is ViaKind.DOMAIN:
            f = m.f
            if m.spf_pass and _suffix_under(f.envelope_from_domain, (via.value,)):
                return f"SPF pass for {f.envelope_from_domain}"
            for d in m.dkim_pass:
                if _suffix_under(d, (via.value,)):
                    return f"DKIM pass d={d}"
            return None
        if m.ip is not None and r.via_lo is not None and r.via_lo <= m.ip <= r.via_hi:
            return f"client IP {m.f.client_ip} in {via.value}"
        return None

    def _entry_verdict(self, hit: _Hit, kind: str) -> tuple:
        _, r, identity, value, evidence = hit
        e = r.entry
        target = f"{e.kind} {e.value}" + (" and subdomains" if e.subdomains else "")
        if e.via is not None:
            target += f" via {e.via.value}"
        reason = f"{kind} entry {e.id} ({target}) matched the {identity} {value}"
        trace = [TraceStep(kind, f"{e.id}: {target} = {identity} {value}")]
        if evidence:
            reason += f", {evidence}"
            trace.append(TraceStep("via", evidence))
        if r.scope_kind != _GLOBAL:
            trace.append(TraceStep("scope", str(e.scope)))
        action = Action.DELIVER if kind == "allow" else self._actions["block"]
        return action, kind, reason, e.id, tuple(trace)


def _pos(hit: _Hit) -> int:
    return hit[0]
