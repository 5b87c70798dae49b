"""Runtime backend: per-message verdicts from in-memory indices built once per policy.

Driven by the tables of edrules/rules/semantics.py over the derived facts of edrules/derive.py
(docs/rules.md "Semantics"); tests/test_differential.py holds it to the SQL backend, reasons
included. The gateway imports this module, so it must never import pandas or duckdb.
"""

from __future__ import annotations

import ipaddress
import socket
from bisect import bisect_right
from dataclasses import dataclass
from datetime import date, datetime, timezone
from operator import attrgetter
from typing import Callable, Iterable

from edrules.derive import DERIVED_COLUMNS, DerivedFacts, derive
from edrules.facts import Action, MessageFacts, TraceStep, Verdict
from edrules.rules import semantics as sem
from edrules.rules.model import BulkPolicy, Entry, EntryKind, FromPolicy, ListKind, Policy, ScopeKind, ViaKind

# IPv6 addresses live above the IPv4 space in one integer line, so one sorted array holds both.
_V6_OFFSET = 1 << 32
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
    """One entry as the index holds it: its list, file position, gates and proofs."""

    allow: bool
    pos: int  # position in its list: the first matching position decides
    entry: Entry
    gates: dict[str, str]  # identity field -> gate (semantics.gates_for)
    checks: tuple[tuple[str, tuple[str, ...]], ...]  # a pair's proofs: (check, suffixes), in order
    scope_kind: int
    scope_value: str | None
    describe: str
    via_lo: int | None = None  # CIDR bounds of a `via: <CIDR>` pair
    via_hi: int | None = None


def _grouped(checks: list[tuple[str, str]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(check, suffix) rows as (check, suffixes) in semantics.CHECKS order."""
    by: dict[str, list[str]] = {}
    for c, v in checks:
        by.setdefault(c, []).append(v)
    return tuple((c, tuple(by[c])) for c in sem.CHECKS if c in by)


def _ref(e: Entry, pos: int, allow: bool, mode: FromPolicy, providers) -> _Ref:
    via_lo = via_hi = None
    if e.via is not None and e.via.kind is ViaKind.CIDR:
        via_lo, via_hi = cidr_range(e.via.value)
    kind = {ScopeKind.GLOBAL: _GLOBAL, ScopeKind.DOMAIN: _SDOMAIN, ScopeKind.USER: _SUSER}[e.scope.kind]
    lst = ListKind.ALLOW if allow else ListKind.BLOCK
    return _Ref(allow, pos, e, sem.gates_for(mode, lst, sem.entry_form(e)),
                _grouped(sem.via_checks(e, providers)), kind, e.scope.value, sem.describe_entry(e),
                via_lo, via_hi)


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


class _Values:
    """Template values of one message: extras, then derived facts, then facts (semantics.render)."""

    __slots__ = ("extra", "d", "f")

    def __init__(self, f: MessageFacts, d: DerivedFacts, extra: dict):
        self.f, self.d, self.extra = f, d, extra

    def get(self, name: str):
        if name in self.extra:
            return self.extra[name]
        if name in _DERIVED:
            return getattr(self.d, name)
        return getattr(self.f, name, None)


_DERIVED = frozenset(DERIVED_COLUMNS)


def _column(name: str) -> tuple[bool, Callable]:
    """(reads the derived facts, getter) of a message column: derived facts first, then facts."""
    return name in _DERIVED, attrgetter(name)


# A hit: (position, identity rank, ref, identity label, matched value, proof or None).
_Hit = tuple


class RuntimeEvaluator:
    """Evaluate MessageFacts against one Policy; indices are built once in __init__.

    Each entry kind has a hash map from a value (address or domain) to the entries naming it,
    and CIDR interval indices; a message probes its identity values (semantics.IDENTITIES, and
    the parents of its domains for `subdomains`) once and collects the matching global entries;
    each recipient adds the entries scoped to its domain or address (looked up by key), and the
    lowest file position decides. No step scans the entry lists.
    """

    def __init__(self, policy: Policy):
        self.policy = policy
        self._mode = mode = FromPolicy(policy.from_policy)
        providers = dict(policy.providers)
        self._by_kind: dict[EntryKind, dict[str, _Bucket]] = {}
        self._ip_refs: list[_Ref] = []
        ip_global: list[tuple[int, int, int]] = []
        ip_scoped: dict[str, list[tuple[int, int, int]]] = {}
        self._has_sub = False
        # The list an entry sits in decides allow/block (not Entry.list, which merely repeats it).
        for allow, entries in ((True, policy.allow), (False, policy.block)):
            for pos, e in enumerate(entries):
                r = _ref(e, pos, allow, mode, providers)
                if sem.KIND_MATCHERS[e.kind] is sem.Matcher.CIDR:
                    lo, hi = cidr_range(e.value)
                    rng = (lo, hi, len(self._ip_refs))
                    self._ip_refs.append(r)
                    if r.scope_kind == _GLOBAL:
                        ip_global.append(rng)
                    else:
                        ip_scoped.setdefault(_scope_key(r), []).append(rng)
                else:
                    values = self._by_kind.setdefault(e.kind, {})
                    bucket = values.get(e.value)
                    if bucket is None:
                        bucket = values[e.value] = _Bucket()
                    bucket.add(r)
                    self._has_sub = self._has_sub or e.subdomains
        self._ip = IntervalIndex(ip_global)
        self._ip_scoped = {k: IntervalIndex(v) for k, v in ip_scoped.items()}
        self._relays = IntervalIndex(
            (lo, hi, i) for i, (lo, hi) in enumerate(cidr_range(c) for c in policy.inbound_relays)
        )
        # The identities worth probing: of a kind the policy has entries of, in table order.
        # A role whose every gate is a column (a malformed From's mailboxes) is probed only
        # when one of those columns holds for the message.
        role_gates: dict[str, set[str]] = {}
        for g in sem.GATES:
            if g.under(mode) is not None:
                role_gates.setdefault(g.role, set()).add(g.under(mode))
        # (rank, identity, accessor, gate columns one of which must hold, walks domain parents);
        # CIDR kinds are looked up in the interval indices instead.
        self._probes: list[tuple[int, sem.Identity, tuple, tuple[tuple, ...], bool]] = []
        for rank, ident in enumerate(sem.IDENTITIES):
            if ident.kind not in self._by_kind or ident.role not in role_gates:
                continue
            gates = role_gates[ident.role]
            needs = () if gates & {sem.ALWAYS, sem.VIA} else tuple(_column(g) for g in sorted(gates))
            walks = sem.KIND_MATCHERS[ident.kind] is sem.Matcher.DOMAIN
            self._probes.append((rank, ident, _column(ident.field), needs, walks))
        self._gate = {g: _column(g) for g in {*(x for s in role_gates.values() for x in s)} - {sem.ALWAYS, sem.VIA}}
        self._actions = {k: Action(v) for k, v in policy.actions.items()}
        self._bulk = {k: BulkPolicy(v) for k, v in policy.bulk_mailers.items()}
        self._bulk_checks = {name: _grouped(sem.provider_checks(p)) for name, p in providers.items()}
        # Forgery terms read derived columns: tuple positions, the cheapest read of a NamedTuple.
        self._forgery = tuple((DERIVED_COLUMNS.index(col), neg) for col, neg in sem.FORGERY[mode])
        self._forgery_reasons = tuple((_column(c) if c else None, t) for c, t in sem.forgery_reasons(mode))
        # Outcomes of steps 6-7 for mail that is not a forgery do not depend on the message:
        # built once, so the common path allocates nothing but the Verdict.
        not_forgery = TraceStep("from_policy", f"{mode}: not a forgery")
        self._not_forgery_outcome = {
            c: (self._actions[c], c, self._fixed_reason(c), sem.STEPS[c].rule_id,
                (not_forgery, TraceStep("category", c)))
            for c in ("phishing", "spam")
        }
        self._clean_outcome = (Action.DELIVER, "clean", self._fixed_reason("clean"), "default", (not_forgery,))

    def _fixed_reason(self, category: str) -> str:
        return sem.render(sem.STEPS[category].reason, {"mode": str(self._mode)})

    # -- public ------------------------------------------------------------------------

    def evaluate(self, facts: MessageFacts, now: datetime | None = None,
                 derived: DerivedFacts | None = None) -> list[Verdict]:
        """One Verdict per recipient, in facts.recipients order. `derived` is derive(facts)
        when the caller already has it (a dataset row carries it); computed here otherwise."""
        if not facts.recipients:
            return []
        d = derived if derived is not None else derive(facts)
        ip = ip_to_int(facts.client_ip)
        pre = self._message_level_before_lists(facts, d, ip)
        if pre is not None:
            return [Verdict(r, *pre) for r in facts.recipients]
        today = _utc_date(now)
        block_hits, allow_hits, scoped = self._collect(facts, d, ip, today)
        scoped_ips = bool(self._ip_scoped) and ip is not None
        post: tuple | None = None  # steps 4-7 do not depend on the recipient: computed once
        out: list[Verdict] = []
        for rcpt in facts.recipients:
            block = block_hits[0] if block_hits else None
            allow = allow_hits[0] if allow_hits else None
            if scoped or scoped_ips:
                # Entries scoped to this recipient's domain or address: looked up, then the
                # lowest file position across global and scoped hits decides.
                keys = ("d:" + rcpt.rpartition("@")[2] if "@" in rcpt else None, "u:" + rcpt)
                sb, sa = self._scoped_hits(facts, d, ip, scoped, keys, today)
                if sb and (block is None or _order(sb[0]) < _order(block)):
                    block = sb[0]
                if sa and (allow is None or _order(sa[0]) < _order(allow)):
                    allow = sa[0]
            if block is not None:
                out.append(Verdict(rcpt, *self._entry_verdict(block, facts, d)))
            elif allow is not None:
                out.append(Verdict(rcpt, *self._entry_verdict(allow, facts, d)))
            else:
                if post is None:
                    post = self._message_level_after_lists(facts, d)
                out.append(Verdict(rcpt, *post))
        return out

    def provider_proof(self, name: str, f: MessageFacts, d: DerivedFacts) -> str | None:
        """The evidence that provider `name` (a catalog entry frozen in the pack) sent this
        message, or None when it is not authenticated."""
        checks = self._bulk_checks.get(name)
        return self._proof(checks, f, d, None) if checks else None

    def pair_proof(self, e: Entry, f: MessageFacts, d: DerivedFacts) -> str | None:
        """The evidence that a pair's infrastructure side holds, or None."""
        r = _ref(e, 0, e.list == ListKind.ALLOW, self._mode, dict(self.policy.providers))
        return self._via_proof(r, f, d, ip_to_int(f.client_ip))

    # -- proofs --------------------------------------------------------------------------

    def _proof(self, checks, f: MessageFacts, d: DerivedFacts, ip: int | None,
               r: _Ref | None = None) -> str | None:
        """The first check (semantics.CHECKS order) that holds, as its proof text."""
        for name, suffixes in checks:
            c = sem.CHECKS[name]
            if c.fact == "spf":
                if d.spf_pass and _suffix_under(getattr(d if c.field in _DERIVED else f, c.field), suffixes):
                    return sem.render(c.proof, _Values(f, d, {}))
            elif c.fact == "dkim":
                for s in f.dkim:
                    if s.result == "pass" and s.d and _suffix_under(s.d, suffixes):
                        return sem.render(c.proof, {"dkim_d": s.d})
            elif r is not None and ip is not None and r.via_lo is not None and r.via_lo <= ip <= r.via_hi:
                return sem.render(c.proof, {"client_ip": f.client_ip, "via": r.entry.via.value})
        return None

    def _via_proof(self, r: _Ref, f: MessageFacts, d: DerivedFacts, ip: int | None) -> str | None:
        proof = self._proof(r.checks, f, d, ip, r)
        if proof is not None and r.entry.via.kind is ViaKind.PROVIDER:
            return sem.render(sem.PROVIDER_PROOF, {"via": r.entry.via.value, "proof": proof})
        return proof

    # -- steps 0, 1 and 4-7 ------------------------------------------------------------

    def _message_level_before_lists(self, f: MessageFacts, d: DerivedFacts, ip: int | None) -> tuple | None:
        if self.policy.inbound_enforce and (ip is None or not self._relays.lookup(ip)):
            return (
                Action.REJECT, "inbound", sem.render(sem.STEPS["inbound"].reason, _Values(f, d, {})),
                "inbound:relays",
                (TraceStep("inbound", f"client_ip={f.client_ip} not in {list(self.policy.inbound_relays)}"),),
            )
        if f.category == "malware":
            return (self._actions["malware"], "malware", self._fixed_reason("malware"), "category:malware",
                    (TraceStep("category", "malware"),))
        return None

    def _message_level_after_lists(self, f: MessageFacts, d: DerivedFacts) -> tuple:
        bp = f.bulk_provider
        bulk = self._bulk.get(bp) if bp else None
        if bulk is BulkPolicy.BLOCK:
            v = _Values(f, d, {})
            return (self._actions["bulk"], "bulk", sem.render(sem.STEPS["bulk"].reason, v),
                    sem.render(sem.STEPS["bulk"].rule_id, v), (TraceStep("bulk_provider", f"{bp}: block"),))
        for i, neg in self._forgery:
            if bool(d[i]) is not neg:
                break
        else:
            return self._not_forgery_outcome.get(f.category) or self._clean_outcome
        # The exemption never covers mail the From domain's owner disowned (DMARC p=quarantine/reject):
        # anyone with an account at the provider could otherwise send as that domain.
        exempt = self.provider_proof(bp, f, d) if bulk is BulkPolicy.ALLOW and d.header_ok else None
        if exempt is None:
            trace = [TraceStep("from_policy", f"{self._mode}: {self._forgery_evidence(f, d)}")]
            if bulk is BulkPolicy.ALLOW:
                why = "but not authenticated" if d.header_ok else "but DMARC disowns the From"
                trace.append(TraceStep("bulk_provider", f"{bp}: allow, {why}"))
            return (self._actions["forgery"], "forgery", self.forgery_reason(f, d),
                    f"from_policy:{self._mode}", tuple(trace))
        note = TraceStep("bulk_provider", f"{bp}: allow, authenticated by {exempt}; forgery check waived")
        if f.category == "phishing" or f.category == "spam":
            c = f.category
            return (self._actions[c], c, self._fixed_reason(c), sem.STEPS[c].rule_id,
                    (note, TraceStep("category", c)))
        return (*self._clean_outcome[:4], (note,))

    def forgery_reason(self, f: MessageFacts, d: DerivedFacts) -> str:
        """Plain English, built only for forgery verdicts (it is the explain sentence's tail)."""
        for cond, template in self._forgery_reasons:
            if cond is None or (cond[1](d) if cond[0] else cond[1](f)):
                return sem.render(template, _Values(f, d, {"mode": str(self._mode)}))
        return sem.render(sem.FORGERY_REASONS[0][2], {"mode": str(self._mode)})  # unreachable: see FORGERY

    def _forgery_evidence(self, f: MessageFacts, d: DerivedFacts) -> str:
        if f.from_invalid:
            return "from_invalid"
        if not d.header_ok:
            return f"dmarc={f.dmarc} p={f.dmarc_policy}"
        if self._mode is FromPolicy.STRICT:
            return f"header_from_org={f.header_from_org} env_org={d.env_org}"
        return f"dmarc={f.dmarc} spf={f.spf} spf_aligned={d.spf_aligned} dkim_aligned={d.dkim_aligned}"

    # -- steps 2 and 3: list entries ---------------------------------------------------

    def _collect(self, f: MessageFacts, d: DerivedFacts, ip: int | None,
                 today: date) -> tuple[list[_Hit], list[_Hit], list[tuple]]:
        """Global entries matching this message, per list in file order, and the probes whose
        buckets also hold scoped entries (resolved per recipient by _scoped_hits)."""
        block: list[_Hit] = []
        allow: list[_Hit] = []
        scoped: list[tuple] = []
        # Probe each identity value once; most probes miss, so only hits are materialised:
        # (rank, identity, value shown, is_parent, bucket).
        found: list[tuple] = []
        has_sub = self._has_sub
        for rank, ident, (on_d, get), needs, suffixes in self._probes:
            if needs and not any(g(d) if od else g(f) for od, g in needs):
                continue
            raw = get(d) if on_d else get(f)
            if not raw:
                continue
            values = self._by_kind[ident.kind]
            for v in (raw if ident.many else (raw,)):
                b = values.get(v)
                if b is not None:
                    found.append((rank, ident, v, False, b))
                if has_sub and suffixes:  # parents, for `subdomains: true`
                    i = v.find(".")
                    while i >= 0:
                        b = values.get(v[i + 1:])
                        if b is not None:
                            found.append((rank, ident, v, True, b))
                        i = v.find(".", i + 1)
        for probe in found:
            bucket = probe[4]
            for r in bucket.glob:
                hit = self._accept(r, f, d, ip, probe, today)
                if hit is not None:
                    (allow if r.allow else block).append(hit)
            if bucket.scoped:
                scoped.append(probe)
        if ip is not None and self._ip_refs:
            self._ip_hits(self._ip, f, d, ip, today, block, allow)
        return _in_order(block), _in_order(allow), scoped

    def _scoped_hits(self, f: MessageFacts, d: DerivedFacts, ip: int | None, scoped: list[tuple],
                     keys: tuple[str | None, str], today: date) -> tuple[list[_Hit], list[_Hit]]:
        """Hits among entries scoped to one recipient (its domain key, its address key)."""
        block: list[_Hit] = []
        allow: list[_Hit] = []
        for key in keys:
            if key is None:
                continue
            for probe in scoped:
                for r in probe[4].scoped.get(key, ()):
                    hit = self._accept(r, f, d, ip, probe, today)
                    if hit is not None:
                        (allow if r.allow else block).append(hit)
            idx = self._ip_scoped.get(key)
            if idx is not None and ip is not None:
                self._ip_hits(idx, f, d, ip, today, block, allow)
        return _in_order(block), _in_order(allow)

    def _ip_hits(self, index: IntervalIndex, f: MessageFacts, d: DerivedFacts, ip: int, today: date,
                 block: list[_Hit], allow: list[_Hit]) -> None:
        """Add the CIDR entries of `index` covering the client IP that accept it."""
        for i in index.lookup(ip):
            hit = self._accept_ip(self._ip_refs[i], f, d, today)
            if hit is not None:
                (allow if hit[2].allow else block).append(hit)

    def _accept(self, r: _Ref, f: MessageFacts, d: DerivedFacts, ip: int | None, probe: tuple,
                today: date) -> _Hit | None:
        """The hit when entry r may match the probed identity (semantics.GATES), else None."""
        rank, ident, value, is_parent, _ = probe
        e = r.entry
        if is_parent and not e.subdomains:
            return None
        if e.expires is not None and e.expires < today:
            return None
        gate = r.gates.get(ident.field)
        if gate is None:
            return None
        proof = None
        if gate == sem.VIA:
            if not d.header_ok:
                return None
            proof = self._via_proof(r, f, d, ip)
            if proof is None:
                return None
        elif gate != sem.ALWAYS:
            on_d, get = self._gate[gate]
            if not (get(d) if on_d else get(f)):
                return None
        return (r.pos, rank, r, ident.label, value, proof)

    def _accept_ip(self, r: _Ref, f: MessageFacts, d: DerivedFacts, today: date) -> _Hit | None:
        e = r.entry
        if e.expires is not None and e.expires < today:
            return None
        rank, ident = _IP_IDENTITY
        gate = r.gates.get(ident.field)
        if gate is None:
            return None
        if gate != sem.ALWAYS:
            on_d, get = self._gate[gate]
            if not (get(d) if on_d else get(f)):
                return None
        return (r.pos, rank, r, ident.label, f.client_ip, None)

    def _entry_verdict(self, hit: _Hit, f: MessageFacts, d: DerivedFacts) -> tuple:
        _, _, r, identity, value, proof = hit
        e = r.entry
        kind = "allow" if r.allow else "block"
        step = sem.STEPS[kind]
        reason = sem.render(step.reason, {"list": kind, "entry": r.describe, "identity": identity, "value": value})
        trace = [TraceStep(kind, f"{e.id}: {r.describe} = {identity} {value}")]
        if proof:
            reason += sem.render(sem.ENTRY_PROOF, {"proof": proof})
            trace.append(TraceStep("via", proof))
        if r.scope_kind != _GLOBAL:
            trace.append(TraceStep("scope", str(e.scope)))
        action = Action.DELIVER if r.allow else self._actions["block"]
        return action, kind, reason, e.id, tuple(trace)


# The identity CIDR entries are matched against (the interval indices hold them).
_IP_IDENTITY = next((rank, i) for rank, i in enumerate(sem.IDENTITIES)
                    if sem.KIND_MATCHERS[i.kind] is sem.Matcher.CIDR)


def _in_order(hits: list[_Hit]) -> list[_Hit]:
    if len(hits) > 1:
        hits.sort(key=_order)
    return hits


def _order(hit: _Hit) -> tuple[int, int, str]:
    """File position, then identity rank, then the smallest value (two mailboxes of one
    malformed From matching one entry): the SQL backend's list_min order."""
    return hit[0], hit[1], hit[4]
