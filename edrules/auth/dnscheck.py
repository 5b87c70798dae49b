"""Check a domain's mail DNS (MX, SPF, DKIM, DMARC) and say what to publish: findings as values."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from typing import Iterable

from edrules.auth.dkim import MIN_RSA_BITS, parse_key_record
from edrules.auth.dmarc import Alignment, Policy, RecordStatus, lookup_dmarc
from edrules.auth.resolver import DnsError, NXDomain, PermError, Resolver, TempError
from edrules.auth.spf import check_spf
from edrules.domains import normalize_domain
from edrules.errors import EdrulesError, Location

# RFC 7208 4.6.4: at most 10 DNS-querying terms, at most 2 void lookups.
MAX_SPF_LOOKUPS = 10
MAX_VOID_LOOKUPS = 2
RECOMMENDED_RSA_BITS = 2048


class Severity(IntEnum):
    OK = 0
    INFO = 1
    WARNING = 2
    ERROR = 3

    def __str__(self) -> str:
        return self.name.lower()


class Area(StrEnum):
    MX = "mx"
    SPF = "spf"
    DKIM = "dkim"
    DMARC = "dmarc"


@dataclass(frozen=True, slots=True)
class Finding:
    """One observation. `code` is stable (tests, dashboards); `suggestion` is a record to publish."""

    area: Area
    severity: Severity
    code: str
    message: str
    suggestion: str | None = None

    def to_json(self) -> dict:
        return {"area": str(self.area), "severity": str(self.severity), "code": self.code,
                "message": self.message, "suggestion": self.suggestion}


@dataclass(frozen=True, slots=True)
class DomainReport:
    domain: str
    findings: tuple[Finding, ...]
    spf_lookups: int | None = None
    spf_void_lookups: int | None = None

    @property
    def worst(self) -> Severity:
        return max((f.severity for f in self.findings), default=Severity.OK)

    def codes(self, severity: Severity | None = None) -> set[str]:
        return {f.code for f in self.findings if severity is None or f.severity == severity}

    def to_json(self) -> dict:
        return {"domain": self.domain, "worst": str(self.worst), "spf_lookups": self.spf_lookups,
                "spf_void_lookups": self.spf_void_lookups,
                "findings": [f.to_json() for f in self.findings]}


def parse_networks(values: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """CIDRs from the command line or config ('a,b' and repeated options both work)."""
    nets = []
    for value in values:
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise EdrulesError(f"not an IP network: {item!r}", Location(field="--gateway-relays")) from None
    return nets


# ---------------------------------------------------------------------------------------
# MX

def _check_mx(domain: str, resolver: Resolver, gateway_mx: list[str]) -> list[Finding]:
    out: list[Finding] = []
    suggest = (f"{domain}. IN MX 10 {gateway_mx[0]}." if gateway_mx else f"{domain}. IN MX 10 mail.{domain}.")
    try:
        mx = resolver.mx(domain)
    except NXDomain:
        return [Finding(Area.MX, Severity.ERROR, "mx.nxdomain", f"{domain} does not exist in DNS", suggest)]
    except DnsError as exc:
        return [Finding(Area.MX, Severity.ERROR, "mx.dns-error", f"MX lookup failed: {exc}")]
    if not mx:
        return [Finding(Area.MX, Severity.ERROR, "mx.missing", f"{domain} has no MX record", suggest)]
    if len(mx) == 1 and mx[0][1] in ("", "."):
        return [Finding(Area.MX, Severity.INFO, "mx.null", f"{domain} publishes a null MX: it accepts no mail")]
    hosts = [h for _p, h in sorted(mx)]
    for host in hosts:
        if not _resolves(host, resolver):
            out.append(Finding(Area.MX, Severity.ERROR, "mx.host-unresolvable",
                               f"MX host {host} has no A/AAAA address"))
    if gateway_mx:
        gw = {normalize_domain(g) for g in gateway_mx}
        bypass = [h for h in hosts if h not in gw]
        if len(bypass) == len(hosts):
            out.append(Finding(Area.MX, Severity.ERROR, "mx.not-gateway",
                               f"no MX points at the gateway ({', '.join(sorted(gw))}): {', '.join(hosts)}",
                               suggest))
        elif bypass:
            out.append(Finding(Area.MX, Severity.WARNING, "mx.bypasses-gateway",
                               f"MX hosts {', '.join(bypass)} bypass the gateway; senders may use them",
                               f"remove the MX records for {', '.join(bypass)}"))
    if not out:
        out.append(Finding(Area.MX, Severity.OK, "mx.ok", f"MX: {', '.join(hosts)}"))
    return out


def _resolves(host: str, resolver: Resolver) -> bool:
    for fn in (resolver.a, resolver.aaaa):
        try:
            if fn(host):
                return True
        except DnsError:
            continue
    return False


# ---------------------------------------------------------------------------------------
# SPF

_MECHS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_LOOKUP_MECHS = {"include", "a", "mx", "ptr", "exists"}


@dataclass(slots=True)
class _SpfWalk:
    resolver: Resolver
    lookups: int = 0
    void: int = 0
    findings: list[Finding] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def record(self, name: str) -> tuple[str | None, str | None]:
        """(record, problem) for `name`; a void answer counts toward the void limit."""
        try:
            txts = self.resolver.txt(name)
        except (NXDomain, PermError):
            self.void += 1
            return None, "does not exist"
        except (TempError, DnsError) as exc:
            return None, f"DNS error ({exc})"
        spf = [t for t in txts if re.match(r"(?i)^v=spf1(\s|$)", t)]
        if not spf:
            self.void += 1
            return None, "has no SPF record"
        if len(spf) > 1:
            return None, f"has {len(spf)} SPF records (permerror)"
        return spf[0], None

    def walk(self, name: str, text: str, depth: int = 0) -> None:
        if name in self.seen or depth > 10:
            self.findings.append(Finding(Area.SPF, Severity.ERROR, "spf.loop",
                                         f"include/redirect loop or chain too deep at {name}"))
            return
        self.seen.add(name)
        terms = text.split()[1:]
        has_all = False
        redirect = None
        for term in terms:
            if "=" in term.split(":")[0]:
                mod, _, value = term.partition("=")
                mod = mod.lower()
                if mod == "redirect":
                    redirect = value
                elif not re.match(r"^[a-z][a-z0-9_.\-]*$", mod):
                    self._syntax(name, term)
                continue
            qual = term[0] if term[0] in "+-~?" else "+"
            body = term[1:] if term[0] in "+-~?" else term
            m = re.match(r"([A-Za-z0-9]+)(.*)$", body)
            mech, arg = (m.group(1).lower(), m.group(2)) if m else ("", body)
            if mech not in _MECHS:
                self._syntax(name, term)
                continue
            if mech in _LOOKUP_MECHS:
                self.lookups += 1
            if mech == "all":
                has_all = True
                if depth == 0:
                    self._all(name, qual)
            elif mech in ("ip4", "ip6"):
                try:
                    net = ipaddress.ip_network(arg.lstrip(":"), strict=False)
                    if net.version != int(mech[-1]):
                        raise ValueError
                except ValueError:
                    self._syntax(name, term)
            elif mech == "ptr":
                self.findings.append(Finding(Area.SPF, Severity.WARNING, "spf.ptr",
                                             f"{name}: 'ptr' is slow and deprecated (RFC 7208 5.5)",
                                             "replace ptr with ip4:/ip6: ranges"))
            elif mech == "include":
                target = arg.lstrip(":")
                if not target or "%" in target:
                    continue  # macros depend on the message; nothing to follow statically
                sub, problem = self.record(target)
                if problem:
                    self.findings.append(Finding(Area.SPF, Severity.ERROR, "spf.include-broken",
                                                 f"{name}: include:{target} {problem} (permerror)"))
                else:
                    self.walk(target, sub, depth + 1)
            elif mech in ("a", "mx") and arg.startswith(":") and "%" not in arg:
                self._void_probe(arg[1:].split("/")[0], mech)
            elif mech in ("a", "mx"):
                self._void_probe(name, mech)
        if redirect and not has_all:
            self.lookups += 1
            sub, problem = self.record(redirect)
            if problem:
                self.findings.append(Finding(Area.SPF, Severity.ERROR, "spf.redirect-broken",
                                             f"{name}: redirect={redirect} {problem} (permerror)"))
            else:
                self.walk(redirect, sub, depth + 1)
        elif depth == 0 and not has_all:
            self.findings.append(Finding(Area.SPF, Severity.WARNING, "spf.no-all",
                                         f"{name}: no 'all' term, unlisted senders get neutral",
                                         "end the record with -all"))

    def _void_probe(self, host: str, mech: str) -> None:
        try:
            found = self.resolver.mx(host) if mech == "mx" else (self.resolver.a(host) or self.resolver.aaaa(host))
        except (NXDomain, PermError):
            found = []
        except DnsError:
            return
        if not found:
            self.void += 1

    def _syntax(self, name: str, term: str) -> None:
        self.findings.append(Finding(Area.SPF, Severity.ERROR, "spf.syntax",
                                     f"{name}: invalid term {term!r} (permerror)"))

    def _all(self, name: str, qual: str) -> None:
        if qual == "+":
            self.findings.append(Finding(Area.SPF, Severity.ERROR, "spf.plus-all",
                                         f"{name}: '+all' authorises every host on the Internet",
                                         "end the record with -all"))
        elif qual == "?":
            self.findings.append(Finding(Area.SPF, Severity.WARNING, "spf.neutral-all",
                                         f"{name}: '?all' gives unlisted senders neutral: no protection",
                                         "end the record with -all (or ~all while testing)"))


def _spf_suggestion(domain: str, relays: list) -> str:
    ips = " ".join(f"ip{n.version}:{n.with_prefixlen}" for n in relays)
    return f'{domain}. IN TXT "v=spf1 mx {ips + " " if ips else ""}-all"'


def _rewrite_spf(domain: str, text: str, add: list[str] = (), all_term: str | None = None) -> str:
    """The record to publish: `text` with `add` terms before its 'all' (and that 'all' replaced)."""
    terms = text.split()[1:]
    alls = [t for t in terms if re.fullmatch(r"(?i)[+\-~?]?all", t)]
    body = [t for t in terms if t not in alls]
    body += [a for a in add if a.lower() not in {t.lower() for t in body}]
    final = all_term or (alls[0] if alls else ("" if any(t.lower().startswith("redirect=") for t in body) else "-all"))
    return f'{domain}. IN TXT "' + " ".join(["v=spf1", *body, *([final] if final else [])]) + '"'


def _check_spf(domain: str, resolver: Resolver, relays: list) -> tuple[list[Finding], int | None, int | None]:
    walk = _SpfWalk(resolver)
    text, problem = walk.record(domain)
    walk.void = 0  # the top-level lookup is not a term of the record
    if problem:
        sev = Severity.ERROR
        code = "spf.multiple" if "records" in problem else ("spf.dns-error" if "DNS" in problem else "spf.missing")
        return [Finding(Area.SPF, sev, code, f"{domain} {problem}", _spf_suggestion(domain, relays))], None, None
    walk.walk(domain, text)
    out = walk.findings
    if walk.lookups > MAX_SPF_LOOKUPS:
        out.append(Finding(Area.SPF, Severity.ERROR, "spf.too-many-lookups",
                           f"{walk.lookups} DNS-querying terms (limit {MAX_SPF_LOOKUPS}): receivers return permerror",
                           "flatten includes into ip4:/ip6: ranges or drop unused includes"))
    if walk.void > MAX_VOID_LOOKUPS:
        out.append(Finding(Area.SPF, Severity.ERROR, "spf.void-lookups",
                           f"{walk.void} void lookups (limit {MAX_VOID_LOOKUPS}): receivers return permerror",
                           "remove terms that point at names without records"))
    elif walk.void:
        out.append(Finding(Area.SPF, Severity.WARNING, "spf.void-lookup",
                           f"{walk.void} term(s) point at names without records"))
    missing = []
    for net in relays:
        probe = str(next(iter(net.hosts()), net.network_address)) if net.num_addresses > 1 else str(net.network_address)
        outcome = check_spf(probe, f"mail.{domain}", f"postmaster@{domain}", resolver)
        if outcome.result != "pass":
            missing.append((net, probe, outcome.result))
    # One corrected record fixes every record-level finding at once: suggest that record.
    all_codes = {"spf.plus-all", "spf.neutral-all", "spf.no-all"}
    bad_all = any(f.code in all_codes for f in out) and "redirect=" not in text.lower()
    fixed = _rewrite_spf(domain, text, add=[f"ip{n.version}:{n.with_prefixlen}" for n, _p, _r in missing],
                         all_term="-all" if bad_all else None)
    for net, probe, result in missing:
        out.append(Finding(Area.SPF, Severity.ERROR, "spf.relay-not-authorised",
                           f"gateway relay {net} ({probe}) gets spf={result}: outbound mail via the gateway fails SPF",
                           fixed))
    out = [replace(f, suggestion=fixed) if f.code in all_codes and bad_all else f for f in out]
    if not any(f.severity >= Severity.WARNING for f in out):
        out.append(Finding(Area.SPF, Severity.OK, "spf.ok", f"SPF: {text} ({walk.lookups} DNS-querying terms)"))
    return out, walk.lookups, walk.void


# ---------------------------------------------------------------------------------------
# DKIM

def _check_dkim(domain: str, resolver: Resolver, selectors: list[str]) -> list[Finding]:
    if not selectors:
        return [Finding(Area.DKIM, Severity.INFO, "dkim.not-checked",
                        "DKIM selectors are not discoverable from DNS: pass --dkim-selector to check keys")]
    out: list[Finding] = []
    for sel in selectors:
        name = f"{sel}._domainkey.{domain}"
        suggestion = f'{name}. IN TXT "v=DKIM1; k=rsa; p=<base64 public key from your signer>"'
        try:
            txts = resolver.txt(name)
        except (NXDomain, PermError):
            txts = []
        except DnsError as exc:
            out.append(Finding(Area.DKIM, Severity.ERROR, "dkim.dns-error", f"{name}: {exc}"))
            continue
        txts = [t for t in txts if "p=" in t or t.lower().startswith("v=dkim1")]
        if not txts:
            out.append(Finding(Area.DKIM, Severity.ERROR, "dkim.missing", f"no DKIM key at {name}", suggestion))
            continue
        key = parse_key_record(name, txts[0])
        if key.revoked:
            out.append(Finding(Area.DKIM, Severity.WARNING, "dkim.revoked",
                               f"{name}: key revoked (empty p=); signatures with s={sel} fail"))
        elif key.problem:
            out.append(Finding(Area.DKIM, Severity.ERROR, "dkim.bad-key", f"{name}: {key.problem}", suggestion))
        elif key.key_type == "rsa" and key.bits is not None and key.bits < MIN_RSA_BITS:
            out.append(Finding(Area.DKIM, Severity.ERROR, "dkim.weak-key",
                               f"{name}: RSA {key.bits}-bit key: receivers reject keys under {MIN_RSA_BITS} bits (RFC 8301)",
                               f"rotate to a {RECOMMENDED_RSA_BITS}-bit RSA key"))
        elif key.key_type == "rsa" and key.bits is not None and key.bits < RECOMMENDED_RSA_BITS:
            out.append(Finding(Area.DKIM, Severity.INFO, "dkim.short-key",
                               f"{name}: RSA {key.bits}-bit key; {RECOMMENDED_RSA_BITS} bits recommended"))
        else:
            out.append(Finding(Area.DKIM, Severity.OK, "dkim.ok", f"{name}: {key.key_type} {key.bits}-bit key"))
        if key.testing:
            out.append(Finding(Area.DKIM, Severity.INFO, "dkim.testing", f"{name}: t=y (testing mode)"))
    return out


# ---------------------------------------------------------------------------------------
# DMARC

def _check_dmarc(domain: str, resolver: Resolver) -> list[Finding]:
    suggest = f'_dmarc.{domain}. IN TXT "v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@{domain}"'
    rec = lookup_dmarc(domain, resolver)
    if rec is None:
        return [Finding(Area.DMARC, Severity.ERROR, "dmarc.missing", f"no DMARC record for {domain}",
                        f'_dmarc.{domain}. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}" '
                        "(monitor first, then p=quarantine)")]
    if rec.status is RecordStatus.TEMPERROR:
        return [Finding(Area.DMARC, Severity.ERROR, "dmarc.dns-error", "; ".join(rec.errors))]
    if rec.status is RecordStatus.PERMERROR:
        code = "dmarc.multiple" if "records" in " ".join(rec.errors) else "dmarc.invalid"
        return [Finding(Area.DMARC, Severity.ERROR, code, f"_dmarc.{rec.domain}: " + "; ".join(rec.errors), suggest)]
    out: list[Finding] = []
    for w in rec.warnings:
        out.append(Finding(Area.DMARC, Severity.WARNING, "dmarc.syntax-warning", f"_dmarc.{rec.domain}: {w}"))
    if rec.org_fallback:
        out.append(Finding(Area.DMARC, Severity.INFO, "dmarc.org-fallback",
                           f"{domain} has no record of its own; the organisational domain's applies "
                           f"(sp={rec.sp or rec.p})"))
    pol = rec.policy_for(domain)
    if pol is Policy.NONE:
        out.append(Finding(Area.DMARC, Severity.WARNING, "dmarc.monitor-only",
                           "p=none: failing mail is delivered, spoofing is only reported", suggest))
    if rec.pct < 100:
        out.append(Finding(Area.DMARC, Severity.WARNING, "dmarc.partial-pct",
                           f"pct={rec.pct}: the policy applies to {rec.pct}% of failing mail"))
    if not rec.rua:
        out.append(Finding(Area.DMARC, Severity.WARNING, "dmarc.no-rua",
                           "no rua=: you receive no aggregate reports", suggest))
    if not rec.org_fallback and rec.sp is Policy.NONE and rec.p is not Policy.NONE:
        out.append(Finding(Area.DMARC, Severity.WARNING, "dmarc.weak-subdomains",
                           "sp=none leaves subdomains spoofable while p= protects the domain"))
    strict = [n for n, a in (("adkim", rec.adkim), ("aspf", rec.aspf)) if a is Alignment.STRICT]
    if strict:
        out.append(Finding(Area.DMARC, Severity.INFO, "dmarc.strict-alignment",
                           f"{', '.join(strict)}=s: subdomain senders must use the exact From domain"))
    if not any(f.severity >= Severity.WARNING for f in out):
        out.append(Finding(Area.DMARC, Severity.OK, "dmarc.ok", f"DMARC: p={pol} pct={rec.pct}"))
    return out


def check_domain(
    domain: str,
    resolver: Resolver,
    *,
    gateway_mx: Iterable[str] = (),
    gateway_relays: Iterable[str] = (),
    dkim_selectors: Iterable[str] = (),
) -> DomainReport:
    """All checks for one domain; problems are findings, never exceptions (bad arguments are)."""
    d = normalize_domain(domain)
    if not d or "." not in d:
        raise EdrulesError(f"not a domain name: {domain!r}", Location(field="DOMAIN"))
    relays = parse_networks(gateway_relays)
    findings: list[Finding] = []
    findings += _check_mx(d, resolver, [normalize_domain(g) or g for g in gateway_mx])
    spf_findings, lookups, void = _check_spf(d, resolver, relays)
    findings += spf_findings
    findings += _check_dkim(d, resolver, [s.strip() for s in dkim_selectors if s.strip()])
    findings += _check_dmarc(d, resolver)
    return DomainReport(d, tuple(findings), lookups, void)
