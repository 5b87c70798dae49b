"""Static check of a domain's SPF record for dns-check: syntax, lookup limits, relays, a fixed record.

pyspf evaluates one path for one IP; an admin needs the whole include tree checked once
(RFC 7208 4.6.4 limits) and a corrected record, so the walk here is written out.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

from edrules.auth.findings import Area, Finding, Severity
from edrules.auth.resolver import DnsError, NXDomain, PermError, Resolver
from edrules.auth.spf import check_spf

# RFC 7208 4.6.4: at most 10 DNS-querying terms, at most 2 void lookups.
MAX_SPF_LOOKUPS = 10
MAX_VOID_LOOKUPS = 2
MAX_DEPTH = 10

_MECHS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_LOOKUP_MECHS = {"include", "a", "mx", "ptr", "exists"}
_ALL = re.compile(r"(?i)[+\-~?]?all")
# Findings the corrected record resolves; it is attached to each of them.
_RECORD_FIXES = {"spf.plus-all", "spf.neutral-all", "spf.no-all", "spf.syntax", "spf.ptr",
                 "spf.include-broken", "spf.redirect-broken", "spf.void-lookups", "spf.void-lookup",
                 "spf.relay-not-authorised"}


@dataclass(frozen=True, slots=True)
class SpfReport:
    record: str | None
    findings: tuple[Finding, ...]
    lookups: int | None
    void_lookups: int | None
    fixed: str | None  # the TXT record to publish instead, when the record needs changes


@dataclass(slots=True)
class _Walk:
    resolver: Resolver
    lookups: int = 0
    void: int = 0
    findings: list[Finding] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    drop: list[str] = field(default_factory=list)  # top-level terms the fixed record leaves out
    force_all: bool = False  # the fixed record ends in -all

    def record(self, name: str) -> tuple[str | None, str | None]:
        """(record, problem) for `name`; an empty answer counts toward the void limit."""
        try:
            txts = self.resolver.txt(name)
        except (NXDomain, PermError):
            self.void += 1
            return None, "does not exist"
        except DnsError as exc:
            return None, f"DNS error ({exc})"
        spf = [t for t in txts if re.match(r"(?i)^v=spf1(\s|$)", t)]
        if not spf:
            self.void += 1
            return None, "has no SPF record"
        if len(spf) > 1:
            return None, f"has {len(spf)} SPF records (permerror)"
        return spf[0], None

    def add(self, severity: Severity, code: str, message: str, term: str | None, depth: int) -> None:
        self.findings.append(Finding(Area.SPF, severity, code, message))
        if term is not None and depth == 0:
            self.drop.append(term)

    def walk(self, name: str, text: str, depth: int = 0) -> None:
        if name in self.seen or depth > MAX_DEPTH:
            self.add(Severity.ERROR, "spf.loop", f"include/redirect loop or chain too deep at {name}", None, depth)
            return
        self.seen.add(name)
        has_all, redirect = False, None
        for term in text.split()[1:]:
            if "=" in term.split(":")[0]:  # a modifier
                mod, _, value = term.partition("=")
                if mod.lower() == "redirect":
                    redirect = (term, value)
                elif not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.\-]*", mod):
                    self.add(Severity.ERROR, "spf.syntax", f"{name}: invalid term {term!r} (permerror)", term, depth)
                continue
            qual, body = (term[0], term[1:]) if term[0] in "+-~?" else ("+", term)
            m = re.match(r"([A-Za-z0-9]+)(.*)$", body)
            mech, arg = (m.group(1).lower(), m.group(2)) if m else ("", body)
            if mech not in _MECHS:
                self.add(Severity.ERROR, "spf.syntax", f"{name}: invalid term {term!r} (permerror)", term, depth)
                continue
            if mech in _LOOKUP_MECHS:
                self.lookups += 1
            if mech == "all":
                has_all = True
                if depth == 0:
                    self._all(name, qual)
            elif mech in ("ip4", "ip6"):
                try:
                    if ipaddress.ip_network(arg.lstrip(":"), strict=False).version != int(mech[-1]):
                        raise ValueError
                except ValueError:
                    self.add(Severity.ERROR, "spf.syntax", f"{name}: invalid term {term!r} (permerror)", term, depth)
            elif mech == "ptr":
                self.add(Severity.WARNING, "spf.ptr", f"{name}: 'ptr' is slow and deprecated (RFC 7208 5.5)",
                         term, depth)
            elif mech == "include":
                target = arg.lstrip(":")
                if not target or "%" in target:
                    continue  # macros depend on the message; nothing to follow statically
                sub, problem = self.record(target)
                if problem:
                    self.add(Severity.ERROR, "spf.include-broken",
                             f"{name}: include:{target} {problem} (permerror)", term, depth)
                else:
                    self.walk(target, sub, depth + 1)
            elif mech in ("a", "mx") and "%" not in arg:
                host = arg[1:].split("/")[0] if arg.startswith(":") else name
                if self._void(host, mech):
                    self.void += 1
                    if depth == 0:
                        self.drop.append(term)
        if redirect and not has_all:
            self.lookups += 1
            sub, problem = self.record(redirect[1])
            if problem:
                self.add(Severity.ERROR, "spf.redirect-broken",
                         f"{name}: redirect={redirect[1]} {problem} (permerror)", redirect[0], depth)
                self.force_all = self.force_all or depth == 0
            else:
                self.walk(redirect[1], sub, depth + 1)
        elif depth == 0 and not has_all:
            self.add(Severity.WARNING, "spf.no-all", f"{name}: no 'all' term, unlisted senders get neutral",
                     None, depth)
            self.force_all = True

    def _void(self, host: str, mech: str) -> bool:
        try:
            found = self.resolver.mx(host) if mech == "mx" else (self.resolver.a(host) or self.resolver.aaaa(host))
        except (NXDomain, PermError):
            return True
        except DnsError:
            return False  # temporary: not void
        return not found

    def _all(self, name: str, qual: str) -> None:
        if qual == "+":
            self.add(Severity.ERROR, "spf.plus-all", f"{name}: '+all' authorises every host on the Internet",
                     None, 0)
            self.force_all = True
        elif qual == "?":
            self.add(Severity.WARNING, "spf.neutral-all",
                     f"{name}: '?all' gives unlisted senders neutral: no protection", None, 0)
            self.force_all = True


def rewrite_spf(text: str, add: list[str] = (), drop: list[str] = (), force_all: bool = False) -> str:
    """`text` without `drop` terms, with `add` terms before its 'all' ('-all' if forced or missing)."""
    terms = [t for t in text.split()[1:] if t not in set(drop)]
    alls = [t for t in terms if _ALL.fullmatch(t)]
    body = [t for t in terms if t not in alls]
    body += [a for a in add if a.lower() not in {t.lower() for t in body}]
    redirect = any(t.lower().startswith("redirect=") for t in body)
    final = "-all" if force_all or not (alls or redirect) else (alls[0] if alls else "")
    return " ".join(["v=spf1", *body, *([final] if final else [])])


def _probe(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return str(next(iter(net.hosts()), net.network_address)) if net.num_addresses > 1 else str(net.network_address)


def analyse_spf(domain: str, resolver: Resolver, relays: list) -> SpfReport:
    """Every SPF finding for `domain`, plus one corrected record that resolves the record-level ones."""
    relay_terms = [f"ip{n.version}:{n.with_prefixlen}" for n in relays]
    walk = _Walk(resolver)
    text, problem = walk.record(domain)
    if problem:
        code = "spf.multiple" if "records" in problem else ("spf.dns-error" if "DNS" in problem else "spf.missing")
        fixed = rewrite_spf("v=spf1 mx", add=relay_terms, force_all=True)
        return SpfReport(None, (Finding(Area.SPF, Severity.ERROR, code, f"{domain} {problem}",
                                        f'{domain}. IN TXT "{fixed}"'),), None, None, fixed)
    walk.void = 0  # the lookup of the record itself is not a term of it
    walk.walk(domain, text)
    out = walk.findings
    if walk.lookups > MAX_SPF_LOOKUPS:
        out.append(Finding(Area.SPF, Severity.ERROR, "spf.too-many-lookups",
                           f"{walk.lookups} DNS-querying terms (limit {MAX_SPF_LOOKUPS}): receivers return permerror",
                           "flatten includes into ip4:/ip6: ranges or drop unused includes"))
    if walk.void > MAX_VOID_LOOKUPS:
        out.append(Finding(Area.SPF, Severity.ERROR, "spf.void-lookups",
                           f"{walk.void} void lookups (limit {MAX_VOID_LOOKUPS}): receivers return permerror"))
    elif walk.void:
        out.append(Finding(Area.SPF, Severity.WARNING, "spf.void-lookup",
                           f"{walk.void} term(s) point at names without records"))
    missing = []
    for net, term in zip(relays, relay_terms):
        outcome = check_spf(_probe(net), f"mail.{domain}", f"postmaster@{domain}", resolver)
        if outcome.result != "pass":
            missing.append(term)
            out.append(Finding(Area.SPF, Severity.ERROR, "spf.relay-not-authorised",
                               f"gateway relay {net} ({_probe(net)}) gets spf={outcome.result}: "
                               "outbound mail via the gateway fails SPF"))
    fixed = None
    if any(f.code in _RECORD_FIXES for f in out):
        # With +all every relay "passes": once the fix ends in -all they must be listed too.
        add = relay_terms if walk.force_all else missing
        fixed = rewrite_spf(text, add=add, drop=walk.drop, force_all=walk.force_all)
        out = [replace(f, suggestion=f'{domain}. IN TXT "{fixed}"') if f.code in _RECORD_FIXES else f for f in out]
    if not any(f.severity >= Severity.WARNING for f in out):
        out.append(Finding(Area.SPF, Severity.OK, "spf.ok", f"SPF: {text} ({walk.lookups} DNS-querying terms)"))
    return SpfReport(text, tuple(out), walk.lookups, walk.void, fixed)
