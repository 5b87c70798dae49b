"""Runtime backend: per-message verdicts from in-memory indices built once per policy.

Implements docs/rules.md "Semantics" exactly; tests/test_differential.py holds it to the SQL
backend. The gateway imports this module, so it must never import pandas or duckdb.
"""

from __future__ import annotations

import ipaddress
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
_GLOBAL = ""  # scope key of global entries
_STRICT, _ALIGNED, _RELAXED = FromPolicy.STRICT, FromPolicy.ALIGNED, FromPolicy.RELAXED
_DMARC_ENFORCING = ("quarantine", "reject")


def ip_to_int(text: str | None) -> int | None:
    """Position of an address on the combined v4+v6 line, or None when it is not an address."""
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return int(ip) if ip.version == 4 else int(ip) + _V6_OFFSET


def cidr_range(text: str) -> tuple[int, int]:
    """Inclusive [lo, hi] of a CIDR on the combined v4+v6 line."""
    net = ipaddress.ip_network(text, strict=False)
    base = 0 if net.version == 4 else _V6_OFFSET
    return int(net.network_address) + base, int(net.broadcast_address) + base


class IntervalIndex:
    """CIDRs (which nest or are disjoint, possibly repeated) cut into disjoint elementary
    segments, each with the sorted entry positions covering it: one bisect per lookup,
    no scan over entries."""

    __slots__ = ("_starts", "_covers")

    def __init__(self, ranges: Iterable[tuple[int, int, int]]):
        events: dict[int, list[tuple[int, int]]] = {}
        for lo, hi, pos in ranges:
            events.setdefault(lo, []).append((1, pos))
            events.setdefault(hi + 1, []).append((-1, pos))
        active: dict[int, int] = {}  # position -> multiplicity
        starts: list[int] = []
        covers: list[tuple[int, ...]] = []
        for point in sorted(events):
            for delta, pos in events[point]:
                n = active.get(pos, 0) + delta
                if n:
                    active[pos] = n
                else:
                    active.pop(pos, None)
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


def _parents(domain: str | None) -> list[str]:
    """Proper parent domains, nearest first: a.b.c -> [b.c, c]."""
    out: list[str] = []
    if not domain:
        return out
    d = domain
    while True:
        _, dot, d = d.partition(".")
        if not dot or not d:
            return out
        out.append(d)


@dataclass(frozen=True, slots=True)
class _Compiled:
    """An entry plus what matching needs precomputed (CIDR bounds of the via side)."""

    entry: Entry
    via_lo: int | None = None
    via_hi: int | None = None


class _ListIndex:
    """One list (allow or block): per scope key, hash maps by value and CIDR intervals."""

    __slots__ = ("entries", "sender", "domain", "domain_sub", "pair_sender", "pair_domain",
                 "pair_domain_sub", "ip", "scope_keys")

    def __init__(self, entries: tuple[Entry, ...]):
        self.entries: list[_Compiled] = []
        # scope key -> value -> ascending positions (file order)
        self.sender: dict[str, dict[str, list[int]]] = {}
        self.domain: dict[str, dict[str, list[int]]] = {}
        self.domain_sub: dict[str, dict[str, list[int]]] = {}
        self.pair_sender: dict[str, dict[str, list[int]]] = {}
        self.pair_domain: dict[str, dict[str, list[int]]] = {}
        self.pair_domain_sub: dict[str, dict[str, list[int]]] = {}
        ip_ranges: dict[str, list[tuple[int, int, int]]] = {}
        for pos, e in enumerate(entries):
            via_lo = via_hi = None
            if e.via is not None and e.via.kind is ViaKind.CIDR:
                via_lo, via_hi = cidr_range(e.via.value)
            self.entries.append(_Compiled(e, via_lo, via_hi))
            key = _scope_key(e)
            if e.kind is EntryKind.IP:
                lo, hi = cidr_range(e.value)
                ip_ranges.setdefault(key, []).append((lo, hi, pos))
                continue
            pair = e.via is not None
            if e.kind is EntryKind.SENDER:
                target = self.pair_sender if pair else self.sender
                target.setdefault(key, {}).setdefault(e.value, []).append(pos)
            else:
                target = self.pair_domain if pair else self.domain
                target.setdefault(key, {}).setdefault(e.value, []).append(pos)
                if e.subdomains:
                    sub = self.pair_domain_sub if pair else self.domain_sub
                    sub.setdefault(key, {}).setdefault(e.value, []).append(pos)
        self.ip: dict[str, IntervalIndex] = {k: IntervalIndex(v) for k, v in ip_ranges.items()}
        keys: set[str] = set(self.ip)
        for m in (self.sender, self.domain, self.pair_sender, self.pair_domain):
            keys.update(m)
        self.scope_keys = frozenset(keys)


def _scope_key(e: Entry) -> str:
    s = e.scope
    if s.kind is ScopeKind.GLOBAL:
        return _GLOBAL
    return ("d:" if s.kind is ScopeKind.DOMAIN else "u:") + (s.value or "")


@dataclass(slots=True)
class _Msg:
    """Derived facts of one message (docs/rules.md "Derived facts"), computed once."""

    f: MessageFacts
    env_domain: str | None
    env_org: str | None
    header_ok: bool
    env_ok: bool  # the envelope does not claim the organisation DMARC says disowned this message
    spf_pass: bool
    spf_aligned: bool
    dkim_aligned: str | None  # the aligned passing d=, if any
    aligned_auth: bool
    forgery: bool
    forgery_reason: str
    dkim_pass: tuple[str, ...]  # d= of passing signatures
    ip: int | None


@dataclass(frozen=True, slots=True)
class _Hit:
    """A matching entry and the evidence: which identity it matched."""

    pos: int
    identity: str  # e.g. "envelope sender", "header From", "client IP"
    value: str
    via_evidence: str | None = None


class RuntimeEvaluator:
    """Evaluate MessageFacts against one Policy; indices are built once in __init__."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self._allow = _ListIndex(policy.allow)
        self._block = _ListIndex(policy.block)
        self._relays = IntervalIndex(
            (lo, hi, i) for i, (lo, hi) in enumerate(cidr_range(c) for c in policy.inbound_relays)
        )
        self._providers: dict[str, ProviderDef] = dict(policy.providers)
        self._actions = {k: Action(v) for k, v in policy.actions.items()}
        self._mode = FromPolicy(policy.from_policy)

    # -- public ------------------------------------------------------------------------

    def evaluate(self, facts: MessageFacts, now: datetime | None = None) -> list[Verdict]:
        """One Verdict per recipient, in facts.recipients order."""
        if not facts.recipients:
            return []
        today = _utc_date(now)
        m = self._derive(facts)
        pre = self._message_level_before_lists(m)
        if pre is not None:
            return [Verdict(r, *pre) for r in facts.recipients]
        post: tuple | None = None  # steps 4-7 do not depend on the recipient; computed once
        global_block = self._first_match(self._block, m, _GLOBAL, today, allow=False)
        global_allow = self._first_match(self._allow, m, _GLOBAL, today, allow=True)
        out: list[Verdict] = []
        for rcpt in facts.recipients:
            block = self._best(self._block, m, rcpt, today, global_block, allow=False)
            if block is not None:
                out.append(Verdict(rcpt, *self._entry_verdict(self._block, block, "block")))
                continue
            allow = self._best(self._allow, m, rcpt, today, global_allow, allow=True)
            if allow is not None:
                out.append(Verdict(rcpt, *self._entry_verdict(self._allow, allow, "allow")))
                continue
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
        dmarc_enforced_fail = f.dmarc == "fail" and f.dmarc_policy in _DMARC_ENFORCING
        header_ok = not f.from_invalid and not dmarc_enforced_fail
        env_ok = not (dmarc_enforced_fail and env_org is not None and env_org == hfo)
        spf_pass = f.spf == "pass"
        spf_aligned = spf_pass and env_org is not None and env_org == hfo
        dkim_pass: list[str] = []
        dkim_aligned = None
        for sig in f.dkim:
            if sig.result == "pass":
                if sig.d:
                    dkim_pass.append(sig.d)
                if dkim_aligned is None and hfo is not None and sig.org == hfo:
                    dkim_aligned = sig.d or hfo
        aligned_auth = f.dmarc == "pass" or spf_aligned or dkim_aligned is not None
        mode = self._mode
        if f.from_invalid:
            forgery, why = True, (
                f"the From header is missing, repeated or holds several mailboxes "
                f"under the {mode} From-policy"
            )
        elif dmarc_enforced_fail:
            forgery, why = True, (
                f"DMARC failed for header From {hfo}, whose owner publishes p={f.dmarc_policy}, "
                f"under the {mode} From-policy"
            )
        elif mode is _STRICT:
            forgery = hfo is not None and env_org is not None and hfo != env_org
            sender = "the HELO name" if f.envelope_from == "" else "the envelope sender"
            why = f"header From {hfo} does not match {sender} {env_org} under the strict From-policy"
        elif mode is _ALIGNED:
            forgery = not aligned_auth
            why = (
                f"header From {hfo} has no aligned authentication (DMARC {f.dmarc or 'unknown'}, "
                f"SPF {'aligned pass' if spf_aligned else f.spf or 'unknown'} for {env_org}, "
                f"no passing DKIM signature of {hfo}) under the aligned From-policy"
            )
        else:
            forgery, why = False, ""
        return _Msg(
            f, env_domain, env_org, header_ok, env_ok, spf_pass, spf_aligned, dkim_aligned,
            aligned_auth, forgery, why, tuple(dkim_pass), ip_to_int(f.client_ip),
        )

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
        bulk = self.policy.bulk_mailers.get(bp) if bp else None
        if bulk is BulkPolicy.BLOCK or bulk == "block":
            return (
                self._actions["bulk"], "bulk",
                f"mail from the {bp} network is blocked by bulk_mailers",
                f"bulk:{bp}",
                (TraceStep("bulk_provider", f"{bp}: block"),),
            )
        if m.forgery:
            exempt = None
            if bulk is BulkPolicy.ALLOW or bulk == "allow":
                exempt = self._provider_authenticated(m, bp)
            if exempt is None:
                trace = [TraceStep("from_policy", f"{self._mode}: {self._forgery_evidence(m)}")]
                if bulk is BulkPolicy.ALLOW or bulk == "allow":
                    trace.append(TraceStep("bulk_provider", f"{bp}: allow, but not authenticated"))
                return (
                    self._actions["forgery"], "forgery", m.forgery_reason,
                    f"from_policy:{self._mode}", tuple(trace),
                )
            forgery_note = TraceStep(
                "bulk_provider", f"{bp}: allow, authenticated by {exempt}; forgery check waived"
            )
        else:
            forgery_note = TraceStep("from_policy", f"{self._mode}: not a forgery")
        if f.category in ("phishing", "spam"):
            return (
                self._actions[f.category], f.category,
                f"the upstream scanner classified it as {f.category}",
                f"category:{f.category}",
                (forgery_note, TraceStep("category", f.category)),
            )
        return (
            Action.DELIVER, "clean",
            "no rule matched and it is not classified as malware, phishing or spam",
            "default",
            (forgery_note,),
        )

    def _forgery_evidence(self, m: _Msg) -> str:
        f = m.f
        if f.from_invalid:
            return "from_invalid"
        if not m.header_ok:
            return f"dmarc={f.dmarc} p={f.dmarc_policy}"
        if self._mode is _STRICT:
            return f"header_from_org={f.header_from_org} env_org={m.env_org}"
        if self._mode is _ALIGNED:
            return f"dmarc={f.dmarc} spf={f.spf} spf_aligned={m.spf_aligned} dkim_aligned=none"
        return f"dmarc={f.dmarc} p={f.dmarc_policy}"

    # -- steps 2 and 3: list entries ---------------------------------------------------

    def _best(self, idx: _ListIndex, m: _Msg, rcpt: str, today: date,
              global_hit: _Hit | None, *, allow: bool) -> _Hit | None:
        """First entry in file order matching for this recipient across its scopes."""
        best = global_hit
        if len(idx.scope_keys) > (1 if _GLOBAL in idx.scope_keys else 0):
            rdomain = rcpt.rpartition("@")[2] if "@" in rcpt else None
            for key in (("d:" + rdomain) if rdomain else None, "u:" + rcpt):
                if key is not None and key in idx.scope_keys:
                    hit = self._first_match(idx, m, key, today, allow=allow)
                    if hit is not None and (best is None or hit.pos < best.pos):
                        best = hit
        return best

    def _first_match(self, idx: _ListIndex, m: _Msg, key: str, today: date,
                     *, allow: bool) -> _Hit | None:
        """Lowest-position entry of one scope key that matches the message."""
        if key not in idx.scope_keys:
            return None
        f = m.f
        best: _Hit | None = None

        def consider(positions: list[int] | tuple[int, ...] | None, identity: str, value: str,
                     pair: bool = False) -> None:
            nonlocal best
            if not positions:
                return
            for pos in positions:
                if best is not None and pos >= best.pos:
                    return
                c = idx.entries[pos]
                e = c.entry
                if e.expires is not None and e.expires < today:
                    continue
                evidence = None
                if pair:
                    evidence = self._via_authenticated(c, m)
                    if evidence is None:
                        continue
                best = _Hit(pos, identity, value, evidence)
                return

        # Plain sender/domain entries: which identities count depends on list and mode.
        senders, domains = self._identities(m, allow)
        smap = idx.sender.get(key)
        if smap:
            for identity, value in senders:
                consider(smap.get(value), identity, value)
        dmap = idx.domain.get(key)
        dsub = idx.domain_sub.get(key)
        for identity, value in domains:
            if dmap:
                consider(dmap.get(value), identity, value)
            if dsub:
                for parent in _parents(value):
                    consider(dsub.get(parent), identity, value)
        # Pairs: header From side (trusted only when header_ok) plus authenticated infrastructure.
        if m.header_ok:
            pmap = idx.pair_sender.get(key)
            if pmap and f.header_from:
                consider(pmap.get(f.header_from), "header From", f.header_from, pair=True)
            hfd = f.header_from_domain
            if hfd:
                pd = idx.pair_domain.get(key)
                if pd:
                    consider(pd.get(hfd), "header From domain", hfd, pair=True)
                pds = idx.pair_domain_sub.get(key)
                if pds:
                    for parent in _parents(hfd):
                        consider(pds.get(parent), "header From domain", hfd, pair=True)
        ipi = idx.ip.get(key)
        if ipi is not None and m.ip is not None:
            consider(ipi.lookup(m.ip), "client IP", f.client_ip or "")
        return best

    def _identities(self, m: _Msg, allow: bool) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(identity, value) pairs plain sender and domain entries may match (docs/rules.md table)."""
        f = m.f
        senders: list[tuple[str, str]] = []
        domains: list[tuple[str, str]] = []
        mode = self._mode
        if not allow:
            use_env, use_header = True, True
        elif mode is _STRICT:
            use_env, use_header = m.env_ok, False
        elif mode is _ALIGNED:
            use_env, use_header = m.spf_pass and m.env_ok, m.header_ok and m.aligned_auth
        else:
            use_env, use_header = m.env_ok, m.header_ok
        if use_env:
            if f.envelope_from:
                senders.append(("envelope sender", f.envelope_from))
            if f.envelope_from_domain:
                domains.append(("envelope sender domain", f.envelope_from_domain))
        if use_header:
            if f.header_from:
                senders.append(("header From", f.header_from))
            if f.header_from_domain:
                domains.append(("header From domain", f.header_from_domain))
        return senders, domains

    def _via_authenticated(self, c: _Compiled, m: _Msg) -> str | None:
        """Evidence that a pair's infrastructure side is authenticated, else None."""
        via = c.entry.via
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
        if m.ip is not None and c.via_lo is not None and c.via_lo <= m.ip <= c.via_hi:
            return f"client IP {m.f.client_ip} in {via.value}"
        return None

    def _entry_verdict(self, idx: _ListIndex, hit: _Hit, kind: str) -> tuple:
        e = idx.entries[hit.pos].entry
        target = f"{e.kind} {e.value}" + (" and subdomains" if e.subdomains else "")
        if e.via is not None:
            target += f" via {e.via.value}"
        reason = f"{kind} entry {e.id} ({target}) matched the {hit.identity} {hit.value}"
        if hit.via_evidence:
            reason += f", {hit.via_evidence}"
        trace = [TraceStep(kind, f"{e.id}: {target} = {hit.identity} {hit.value}")]
        if hit.via_evidence:
            trace.append(TraceStep("via", hit.via_evidence))
        if e.scope.kind is not ScopeKind.GLOBAL:
            trace.append(TraceStep("scope", str(e.scope)))
        action = Action.DELIVER if kind == "allow" else self._actions["block"]
        return action, kind, reason, e.id, tuple(trace)
