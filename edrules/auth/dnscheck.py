"""Check a domain's mail DNS (MX, SPF, DKIM, DMARC) and say what to publish: findings as values."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Iterable

from edrules.auth.dkim import MIN_RSA_BITS, parse_key_record
from edrules.auth.dmarc import Alignment, Policy, RecordStatus, is_dmarc_record, lookup_dmarc, parse_dmarc_record
from edrules.auth.findings import Area, Finding, Severity
from edrules.auth.resolver import DnsError, NXDomain, OverlayResolver, PermError, Resolver, ZoneResolver
from edrules.auth.spfcheck import analyse_spf, txt_rdata
from edrules.domains import normalize_domain
from edrules.errors import EdrulesError, Location

__all__ = ["Area", "DomainReport", "Finding", "Severity", "check_domain", "parse_networks"]

RECOMMENDED_RSA_BITS = 2048


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
    # Without --gateway-mx there is no host to name: say what to do instead of a template.
    suggest = f"{domain}. IN MX 10 {gateway_mx[0]}." if gateway_mx else None
    advice = None if gateway_mx else f"publish an MX record naming your inbound mail host ({domain}. IN MX 10 HOST.)"
    try:
        mx = resolver.mx(domain)
    except NXDomain:
        return [Finding(Area.MX, Severity.ERROR, "mx.nxdomain", f"{domain} does not exist in DNS", suggest, advice)]
    except DnsError as exc:
        return [Finding(Area.MX, Severity.ERROR, "mx.dns-error", f"MX lookup failed: {exc}")]
    if not mx:
        return [Finding(Area.MX, Severity.ERROR, "mx.missing", f"{domain} has no MX record", suggest, advice)]
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
                               advice=f"remove the MX records for {', '.join(bypass)}"))
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
# DKIM

def _check_dkim(domain: str, resolver: Resolver, selectors: list[str]) -> list[Finding]:
    if not selectors:
        return [Finding(Area.DKIM, Severity.INFO, "dkim.not-checked",
                        "DKIM selectors are not discoverable from DNS: pass --dkim-selector to check keys")]
    out: list[Finding] = []
    for sel in selectors:
        name = f"{sel}._domainkey.{domain}"
        # The key comes from the signer: a template, never a record to paste as it is.
        advice = f'publish your signer\'s public key: {name}. IN TXT "v=DKIM1; k=rsa; p=BASE64-PUBLIC-KEY"'
        try:
            txts = resolver.txt(name)
        except (NXDomain, PermError):
            txts = []
        except DnsError as exc:
            out.append(Finding(Area.DKIM, Severity.ERROR, "dkim.dns-error", f"{name}: {exc}"))
            continue
        txts = [t for t in txts if "p=" in t or t.lower().startswith("v=dkim1")]
        if not txts:
            out.append(Finding(Area.DKIM, Severity.ERROR, "dkim.missing", f"no DKIM key at {name}", advice=advice))
            continue
        key = parse_key_record(name, txts[0])
        if key.revoked:
            out.append(Finding(Area.DKIM, Severity.WARNING, "dkim.revoked",
                               f"{name}: key revoked (empty p=); signatures with s={sel} fail"))
        elif key.problem:
            out.append(Finding(Area.DKIM, Severity.ERROR, "dkim.bad-key", f"{name}: {key.problem}", advice=advice))
        elif key.key_type == "rsa" and key.bits is not None and key.bits < MIN_RSA_BITS:
            out.append(Finding(Area.DKIM, Severity.ERROR, "dkim.weak-key",
                               f"{name}: RSA {key.bits}-bit key: receivers reject keys under {MIN_RSA_BITS} bits (RFC 8301)",
                               advice=f"rotate to a {RECOMMENDED_RSA_BITS}-bit RSA key"))
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

_DMARC_KEEP = ("v", "p", "sp", "pct", "adkim", "aspf", "rua", "ruf", "fo", "rf", "ri", "np")


def _usable_uri(uri: str) -> bool:
    rec = parse_dmarc_record(f"v=DMARC1; p=none; rua={uri}", "x.example")
    return bool(uri) and rec.rua == (uri,)


def fix_dmarc(text: str, domain: str) -> str:
    """`text` repaired and hardened: an enforcing p=, no pct<100, sp= no weaker than p=, a rua=.

    Tags that parse keep their order and value, so the admin sees a minimal change."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if sep and name in _DMARC_KEEP and name not in tags and value and value.isascii() and value.isprintable():
            tags[name] = value
    for name in ("rua", "ruf"):
        # keep only the report URIs receivers use; an invalid one is ignored by them anyway
        uris = [u.strip() for u in tags.get(name, "").split(",") if _usable_uri(u.strip())]
        tags[name] = ",".join(uris)
        if not uris:
            del tags[name]
    tags.pop("pct", None)  # default 100
    tags.pop("v", None)
    p = tags.get("p", "").lower()
    tags["p"] = p if p in ("quarantine", "reject") else "quarantine"
    if tags.get("sp", "").lower() not in ("quarantine", "reject"):
        tags.pop("sp", None)  # inherit p=
    for name in ("adkim", "aspf"):
        if tags.get(name, "").lower() not in ("r", "s"):
            tags.pop(name, None)
    if not any(u.strip().lower().startswith("mailto:") for u in tags.get("rua", "").split(",")):
        tags["rua"] = f"mailto:dmarc-reports@{domain}"
    order = ["p", "sp", "adkim", "aspf", "rua"] + [t for t in tags if t not in ("p", "sp", "adkim", "aspf", "rua")]
    return "; ".join(["v=DMARC1"] + [f"{t}={tags[t]}" for t in order if t in tags])


# Warnings the hardened record resolves; it is attached to each of them.
_DMARC_FIXES = {"dmarc.invalid", "dmarc.multiple", "dmarc.monitor-only", "dmarc.partial-pct", "dmarc.no-rua",
                "dmarc.weak-subdomains", "dmarc.syntax-warning"}


def _ignored_records(domain: str, resolver: Resolver) -> list[str]:
    """TXT records at _dmarc.<domain> that look like DMARC but receivers discard (v=dmarc1)."""
    try:
        txts = resolver.txt(f"_dmarc.{domain}")
    except DnsError:
        return []
    return [t for t in txts if t.strip().lower().startswith("v=dmarc") and not is_dmarc_record(t)]


def _check_dmarc(domain: str, resolver: Resolver) -> list[Finding]:
    rec = lookup_dmarc(domain, resolver)
    ignored = _ignored_records(domain, resolver) if rec is None or rec.org_fallback else []
    if ignored:
        # RFC 7489 6.3: v= must be exactly DMARC1; receivers skip this record (and fall back).
        return [Finding(Area.DMARC, Severity.ERROR, "dmarc.invalid",
                        f"_dmarc.{domain}: {ignored[0]!r} is ignored: it must start with v=DMARC1 "
                        "(exactly, RFC 7489 6.3)",
                        f'_dmarc.{domain}. IN TXT {txt_rdata(fix_dmarc(ignored[0], domain))}')]
    if rec is None:
        return [Finding(Area.DMARC, Severity.ERROR, "dmarc.missing", f"no DMARC record for {domain}",
                        f'_dmarc.{domain}. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}"',
                        "monitor first, then p=quarantine")]
    if rec.status is RecordStatus.TEMPERROR:
        return [Finding(Area.DMARC, Severity.ERROR, "dmarc.dns-error", "; ".join(rec.errors))]
    out: list[Finding] = []
    if rec.status is RecordStatus.NONE:
        several = any("6.6.3 step 5" in e for e in rec.errors)  # lookup_dmarc's several-records case
        code = "dmarc.multiple" if several else "dmarc.invalid"
        out.append(Finding(Area.DMARC, Severity.ERROR, code, f"_dmarc.{rec.domain}: " + "; ".join(rec.errors)))
    else:
        out += _dmarc_policy_findings(domain, rec)
    if any(f.code in _DMARC_FIXES for f in out):
        # several records: repair the first; the others must go
        fixed = f'_dmarc.{rec.domain}. IN TXT {txt_rdata(fix_dmarc(rec.text.split(" | ")[0], rec.domain))}'
        out = [replace(f, suggestion=fixed) if f.code in _DMARC_FIXES else f for f in out]
    if not any(f.severity >= Severity.WARNING for f in out):
        out.append(Finding(Area.DMARC, Severity.OK, "dmarc.ok", f"DMARC: p={rec.policy_for(domain)} pct={rec.pct}"))
    return out


def _dmarc_policy_findings(domain: str, rec) -> list[Finding]:
    out = [Finding(Area.DMARC, Severity.WARNING, "dmarc.syntax-warning", f"_dmarc.{rec.domain}: {w}")
           for w in rec.warnings]
    if rec.as_p_none:
        # The record is broken; that receivers fall back to p=none is the consequence, not the news.
        return [Finding(Area.DMARC, Severity.ERROR, "dmarc.invalid", f"_dmarc.{rec.domain}: {rec.as_p_none}"), *out]
    if rec.org_fallback:
        out.append(Finding(Area.DMARC, Severity.INFO, "dmarc.org-fallback",
                           f"{domain} has no record of its own; the organisational domain's applies "
                           f"(sp={rec.sp or rec.p})"))
    if rec.policy_for(domain) is Policy.NONE:
        out.append(Finding(Area.DMARC, Severity.WARNING, "dmarc.monitor-only",
                           "p=none: failing mail is delivered, spoofing is only reported"))
    if rec.pct < 100:
        out.append(Finding(Area.DMARC, Severity.WARNING, "dmarc.partial-pct",
                           f"pct={rec.pct}: the policy applies to {rec.pct}% of failing mail"))
    if not rec.rua:
        out.append(Finding(Area.DMARC, Severity.WARNING, "dmarc.no-rua", "no rua=: you receive no aggregate reports"))
    if not rec.org_fallback and rec.sp is Policy.NONE and rec.p is not Policy.NONE:
        out.append(Finding(Area.DMARC, Severity.WARNING, "dmarc.weak-subdomains",
                           "sp=none leaves subdomains spoofable while p= protects the domain"))
    strict = [n for n, a in (("adkim", rec.adkim), ("aspf", rec.aspf)) if a is Alignment.STRICT]
    if strict:
        out.append(Finding(Area.DMARC, Severity.INFO, "dmarc.strict-alignment",
                           f"{', '.join(strict)}=s: subdomain senders must use the exact From domain"))
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
    spf = analyse_spf(d, resolver, relays)
    findings += spf.findings
    findings += _check_dkim(d, resolver, [s.strip() for s in dkim_selectors if s.strip()])
    findings += _check_dmarc(d, resolver)
    findings = _verified(d, findings, resolver, relays, [normalize_domain(g) or g for g in gateway_mx])
    return DomainReport(d, tuple(findings), spf.lookups, spf.void_lookups)


# ---------------------------------------------------------------------------------------
# Advice that works: every suggested record is published into an overlay and checked again

def publish(resolver: Resolver, suggestion: str) -> Resolver:
    """`resolver` as it answers once the master-file line `suggestion` is published: the
    record replaces the owner's MX set, or its TXT records of the same kind (SPF, DMARC,
    DKIM), keeping the others. Raises EdrulesError for a line that is not a record."""
    z = ZoneResolver.from_text(suggestion, source="suggestion")
    (owner, types), = z.records.items()
    if "MX" in types:
        return OverlayResolver(resolver, mx={owner: z.mx(owner)})
    new = z.txt(owner)
    kind = _txt_kind(new[0])
    try:
        old = resolver.txt(owner)
    except DnsError:
        old = []
    return OverlayResolver(resolver, txt={owner: [t for t in old if _txt_kind(t) != kind] + new})


def _txt_kind(text: str) -> str:
    t = text.strip().lower().replace(" ", "")
    for kind in ("v=spf1", "v=dmarc", "v=dkim1"):
        if t.startswith(kind):
            return kind
    return "other:" + text


def _area_errors(area: Area, domain: str, resolver: Resolver, relays, gateway_mx) -> list[str]:
    if area is Area.MX:
        found = _check_mx(domain, resolver, gateway_mx)
    elif area is Area.SPF:
        found = list(analyse_spf(domain, resolver, relays).findings)
    elif area is Area.DMARC:
        found = _check_dmarc(domain, resolver)
    else:
        return []
    return [f.message for f in found if f.severity >= Severity.ERROR]


def _verified(domain: str, findings: list[Finding], resolver: Resolver, relays, gateway_mx) -> list[Finding]:
    """Findings whose suggestion, once published, leaves no error in its area; any other
    suggestion becomes advice (a record that keeps a permerror is no advice at all)."""
    verdict: dict[str, str | None] = {}
    for f in findings:
        if f.suggestion and f.suggestion not in verdict:
            try:
                left = _area_errors(f.area, domain, publish(resolver, f.suggestion), relays, gateway_mx)
            except (EdrulesError, ValueError):
                left = ["the suggested record does not parse"]
            verdict[f.suggestion] = left[0] if left else None
    out = []
    for f in findings:
        problem = verdict.get(f.suggestion) if f.suggestion else None
        if problem:
            f = replace(f, suggestion=None,
                        advice=f"no record can be suggested automatically (the derived one still fails: {problem})")
        out.append(f)
    return out
