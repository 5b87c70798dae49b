"""Static check of a domain's SPF record for dns-check: syntax, lookup limits, relays, a fixed record.

pyspf evaluates one path for one IP; an admin needs the whole include tree checked once
(RFC 7208 4.6.4 limits) and a corrected record, so the walk here is written out.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

from edrules.auth.findings import Area, Finding, Severity
from edrules.auth.resolver import DnsError, NXDomain, OverlayResolver, PermError, Resolver
from edrules.auth.spf import check_spf

# RFC 7208 4.6.4: at most 10 DNS-querying terms, at most 2 void lookups.
MAX_SPF_LOOKUPS = 10
MAX_VOID_LOOKUPS = 2
MAX_DEPTH = 10

_MECHS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_LOOKUP_MECHS = {"include", "a", "mx", "ptr", "exists"}
_ALL = re.compile(r"(?i)[+\-~?]?all")
_SPF = re.compile(r"(?i)^v=spf1(\s|$)")
# Findings the corrected record resolves; it is attached to each of them.
_RECORD_FIXES = {"spf.plus-all", "spf.neutral-all", "spf.no-all", "spf.syntax", "spf.ptr",
                 "spf.include-broken", "spf.redirect-broken", "spf.void-lookups", "spf.void-lookup",
                 "spf.relay-not-authorised", "spf.loop", "spf.too-many-lookups"}


@dataclass(frozen=True, slots=True)
class SpfReport:
    record: str | None
    findings: tuple[Finding, ...]
    lookups: int | None
    void_lookups: int | None
    fixed: str | None  # the TXT record to publish instead, when the record needs changes


def is_spf_record(text: str) -> bool:
    return _SPF.match(text) is not None


def _split(term: str) -> tuple[str, str, str]:
    """(qualifier, mechanism, argument) of a mechanism term; mechanism '' if unparsable."""
    qual, body = (term[0], term[1:]) if term[:1] in ("+", "-", "~", "?") else ("+", term)
    m = re.match(r"([A-Za-z0-9]+)(.*)$", body)
    return (qual, m.group(1).lower(), m.group(2)) if m else (qual, "", body)


def _is_modifier(term: str) -> bool:
    return "=" in term.split(":")[0]


@dataclass(slots=True)
class _Walk:
    resolver: Resolver
    lookups: int = 0
    void: int = 0
    findings: list[Finding] = field(default_factory=list)
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
        spf = [t for t in txts if is_spf_record(t)]
        if not spf:
            self.void += 1
            return None, "has no SPF record"
        if len(spf) > 1:
            return None, f"has {len(spf)} SPF records (permerror)"
        return spf[0], None

    def add(self, severity: Severity, code: str, message: str, term: str | None, top: str | None) -> None:
        """A finding; `term` (top level) or else `top` (the top-level term it was reached
        through) is what the fixed record leaves out."""
        self.findings.append(Finding(Area.SPF, severity, code, message))
        culprit = top or term
        if culprit is not None and culprit not in self.drop:
            self.drop.append(culprit)

    def walk(self, name: str, text: str, path: tuple[str, ...] = (), top: str | None = None) -> None:
        depth = len(path)
        path = path + (name,)
        has_all, redirect = False, None
        for term in text.split()[1:]:
            if _is_modifier(term):
                mod, _, value = term.partition("=")
                if mod.lower() == "redirect":
                    redirect = (term, value)
                elif not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.\-]*", mod):
                    self.add(Severity.ERROR, "spf.syntax", f"{name}: invalid term {term!r} (permerror)", term, top)
                continue
            qual, mech, arg = _split(term)
            if mech not in _MECHS:
                self.add(Severity.ERROR, "spf.syntax", f"{name}: invalid term {term!r} (permerror)", term, top)
                continue
            if has_all and mech not in ("ip4", "ip6"):
                continue  # RFC 7208 5.1: never evaluated after 'all' (but 4.6 still checks syntax)
            if mech in _LOOKUP_MECHS:
                self.lookups += 1
            if mech == "all" and not has_all:
                has_all = True
                if depth == 0:
                    self._all(name, qual)
                elif qual == "+":
                    # an include (or redirect) whose record ends in +all matches every host
                    self.add(Severity.ERROR, "spf.plus-all",
                             f"{name}: '+all', reached through {top}, authorises every host on the Internet",
                             None, top)
            elif mech in ("ip4", "ip6"):
                try:
                    if ipaddress.ip_network(arg.lstrip(":"), strict=False).version != int(mech[-1]):
                        raise ValueError
                except ValueError:
                    self.add(Severity.ERROR, "spf.syntax", f"{name}: invalid term {term!r} (permerror)", term, top)
            elif mech == "ptr":
                self.findings.append(Finding(Area.SPF, Severity.WARNING, "spf.ptr",
                                             f"{name}: 'ptr' is slow and deprecated (RFC 7208 5.5)"))
                if depth == 0:
                    self.drop.append(term)
            elif mech == "include":
                self._follow(name, term, arg.lstrip(":"), path, top, "include")
            elif mech in ("a", "mx") and "%" not in arg:
                host = arg[1:].split("/")[0] if arg.startswith(":") else name
                if self._void(host, mech):
                    self.void += 1
                    if depth == 0:
                        self.drop.append(term)
        if redirect and not has_all:
            self.lookups += 1
            self._follow(name, redirect[0], redirect[1], path, top, "redirect")
        elif depth == 0 and not has_all:
            self.findings.append(Finding(Area.SPF, Severity.WARNING, "spf.no-all",
                                         f"{name}: no 'all' term, unlisted senders get neutral"))
            self.force_all = True

    def _follow(self, name: str, term: str, target: str, path: tuple[str, ...], top: str | None, kind: str) -> None:
        if not target or "%" in target:
            return  # macros depend on the message; nothing to follow statically
        top = top or term
        key = target.rstrip(".").lower()
        if key in path:
            # RFC 7208 5.2/6.1: a loop never terminates; receivers stop it with permerror
            self.add(Severity.ERROR, "spf.loop", f"{name}: {kind} loop {' -> '.join(path + (key,))} (permerror)",
                     term, top)
            return
        if len(path) > MAX_DEPTH:
            self.add(Severity.ERROR, "spf.loop", f"{name}: {kind} chain deeper than {MAX_DEPTH} (permerror)",
                     term, top)
            return
        sub, problem = self.record(target)
        if problem:
            code = "spf.include-broken" if kind == "include" else "spf.redirect-broken"
            self.add(Severity.ERROR, code, f"{name}: {kind}{':' if kind == 'include' else '='}{target} {problem} "
                     "(permerror)", term, top)
        else:
            self.walk(key, sub, path, top)

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
                     None, None)
            self.force_all = True
        elif qual == "?":
            self.findings.append(Finding(Area.SPF, Severity.WARNING, "spf.neutral-all",
                                         f"{name}: '?all' gives unlisted senders neutral: no protection"))
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


# -- flattening: include trees replaced by the addresses they authorise ------------------------

def _cidrs(arg: str) -> tuple[str | None, str, str]:
    """(host or None, '/n' for IPv4, '/n' for IPv6) of an a/mx argument like ':h/24//64'."""
    host = None
    if arg.startswith(":"):
        arg = arg[1:]
        i = arg.find("/")
        host, arg = (arg, "") if i < 0 else (arg[:i], arg[i:])
    v4 = v6 = ""
    if arg.startswith("//"):
        v6 = arg[2:]
    elif arg.startswith("/"):
        v4, _, v6 = arg[1:].partition("//")
    return host or None, (f"/{v4}" if v4 else ""), (f"/{v6}" if v6 else "")


def _addresses(resolver: Resolver, host: str, v4: str, v6: str) -> list[str]:
    out = [f"ip4:{a}{v4}" for a in resolver.a(host)]
    out += [f"ip6:{a}{v6}" for a in resolver.aaaa(host)]
    return out


def _flatten(resolver: Resolver, name: str, path: tuple[str, ...] = ()) -> list[str] | None:
    """The ip4:/ip6: terms that give `name`'s record pass, or None when that set cannot be
    written without lookups (macros, exists, ptr, non-pass terms before the end, redirect)."""
    if name in path or len(path) > MAX_DEPTH:
        return None
    try:
        spf = [t for t in resolver.txt(name) if is_spf_record(t)]
    except DnsError:
        return None
    if len(spf) != 1:
        return None
    out: list[str] = []
    try:
        for term in spf[0].split()[1:]:
            if _is_modifier(term):
                if term.lower().startswith("redirect="):
                    return None
                continue
            qual, mech, arg = _split(term)
            if mech == "all":
                if qual == "+":
                    return None
                break
            # Only '+' terms: the set that passes is then their union, whatever their order.
            if qual != "+" or "%" in arg:
                return None
            if mech in ("ip4", "ip6"):
                out.append(f"{mech}{arg}")
            elif mech == "a":
                host, v4, v6 = _cidrs(arg)
                out += _addresses(resolver, host or name, v4, v6)
            elif mech == "mx":
                host, v4, v6 = _cidrs(arg)
                for _pref, exchange in resolver.mx(host or name):
                    out += _addresses(resolver, exchange, v4, v6)
            elif mech == "include":
                inner = _flatten(resolver, arg.lstrip(":").rstrip(".").lower(), path + (name,))
                if inner is None:
                    return None
                out += inner
            else:
                return None
    except DnsError:
        return None
    return list(dict.fromkeys(out))


def _lookups(text: str, resolver: Resolver) -> int:
    walk = _Walk(resolver)
    walk.walk("<record>", text)
    return walk.lookups


def flatten_spf(text: str, resolver: Resolver) -> str | None:
    """`text` with as few includes replaced by their addresses as keep it within
    MAX_SPF_LOOKUPS, the costliest first; None when that is not possible."""
    terms = text.split()
    cost = {}
    for t in terms[1:]:
        qual, mech, arg = _split(t) if not _is_modifier(t) else ("", "", "")
        if mech == "include":
            cost[t] = _lookups("v=spf1 " + t, resolver)
    for t in sorted(cost, key=lambda t: -cost[t]):
        if _lookups(" ".join(terms), resolver) <= MAX_SPF_LOOKUPS:
            break
        flat = _flatten(resolver, _split(t)[2].lstrip(":").rstrip(".").lower())
        if flat is None:
            continue
        qual = t[0] if t[0] in "-~?" else ""
        i = terms.index(t)
        terms[i:i + 1] = [qual + f for f in flat if qual + f not in terms]
    out = " ".join(terms)
    return out if _lookups(out, resolver) <= MAX_SPF_LOOKUPS else None


def txt_rdata(value: str) -> str:
    """A TXT value in master-file syntax: quoted character-strings of at most 255 octets
    (RFC 1035 3.3.14), which receivers join without spaces (RFC 7208 3.3). Bytes outside
    printable ASCII (surrogate escapes from DNS included) are written as \\DDD."""
    raw = value.encode("utf-8", "surrogateescape")
    chunks = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]

    def text(chunk: bytes) -> str:
        return "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\{b:03d}" for b in chunk)

    return " ".join(f'"{text(c)}"' for c in chunks)


def _probe(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return str(next(iter(net.hosts()), net.network_address)) if net.num_addresses > 1 else str(net.network_address)


def published_spf(resolver: Resolver, domain: str, record: str) -> Resolver:
    """`resolver` as it answers once `record` replaces `domain`'s SPF record (other TXT kept)."""
    try:
        others = [t for t in resolver.txt(domain) if not is_spf_record(t)]
    except DnsError:
        others = []
    return OverlayResolver(resolver, txt={domain: others + [record]})


def analyse_spf(domain: str, resolver: Resolver, relays: list) -> SpfReport:
    """Every SPF finding for `domain`, plus one corrected record that resolves the record-level ones."""
    relay_terms = [f"ip{n.version}:{n.with_prefixlen}" for n in relays]
    walk = _Walk(resolver)
    text, problem = walk.record(domain)
    if problem:
        code = "spf.multiple" if "records" in problem else ("spf.dns-error" if "DNS" in problem else "spf.missing")
        fixed = rewrite_spf("v=spf1 mx", add=relay_terms, force_all=True)
        return SpfReport(None, (Finding(Area.SPF, Severity.ERROR, code, f"{domain} {problem}",
                                        f'{domain}. IN TXT {txt_rdata(fixed)}'),), None, None, fixed)
    walk.void = 0  # the lookup of the record itself is not a term of it
    walk.walk(domain.rstrip(".").lower(), text)
    out = walk.findings
    if walk.lookups > MAX_SPF_LOOKUPS:
        out.append(Finding(Area.SPF, Severity.ERROR, "spf.too-many-lookups",
                           f"{walk.lookups} DNS-querying terms (limit {MAX_SPF_LOOKUPS}): receivers return permerror"))
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
        flattened = False
        if _lookups(fixed, resolver) > MAX_SPF_LOOKUPS:
            fixed, flattened = flatten_spf(fixed, resolver), True
        if fixed is None:
            advice = ("no corrected record can be derived automatically: its includes need more than "
                      f"{MAX_SPF_LOOKUPS} lookups and cannot be flattened (macros, exists, ptr); drop unused "
                      "includes or ask the providers for flatter records")
            out = [replace(f, advice=advice) if f.code in _RECORD_FIXES else f for f in out]
        else:
            note = ("includes are flattened into the addresses they publish today: re-run dns-check when a "
                    "provider changes its ranges") if flattened else None
            out = [replace(f, suggestion=f"{domain}. IN TXT {txt_rdata(fixed)}", advice=note)
                   if f.code in _RECORD_FIXES else f for f in out]
    if not any(f.severity >= Severity.WARNING for f in out):
        out.append(Finding(Area.SPF, Severity.OK, "spf.ok", f"SPF: {text} ({walk.lookups} DNS-querying terms)"))
    return SpfReport(text, tuple(out), walk.lookups, walk.void, fixed)
