"""SPF (RFC 7208) through pyspf, with all DNS served by an edrules Resolver."""

from __future__ import annotations

import ipaddress

import time
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.reversename
import spf as pyspf

from edrules.auth.resolver import DnsError, NXDomain, PermError, Resolver, TempError, txt_to_bytes
from edrules.domains import normalize_address, normalize_domain
from edrules.facts import AuthResult

# Total DNS time budget per check (RFC 7208 4.6.4: at least 20 s); the resolver has its own
# per-query timeouts, so this only bounds a slow, deep include tree.
QUERY_TIME = 20.0


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    """SPF result for the checked identity (MAIL FROM, or HELO for the null sender)."""

    result: AuthResult
    domain: str | None
    explanation: str
    identity: str = "mailfrom"  # 'mailfrom' or 'helo' (RFC 8601 smtp.mailfrom / smtp.helo)


class _ResolverQuery(pyspf.query):
    """pyspf query whose every lookup goes to an edrules Resolver.

    The single adapter between pyspf and edrules DNS: overriding `dns` (the one method all
    of pyspf's mechanisms call) replaces the module-level DNSLookup without patching it, so
    another pyspf user in the process is unaffected and no lookup can reach live DNS.
    """

    def __init__(self, resolver: Resolver, **kwargs):
        self._resolver = resolver
        self._deadline = time.monotonic() + QUERY_TIME
        super().__init__(**kwargs)

    def _fetch(self, name: str, qtype: str) -> list:
        r = self._resolver
        try:
            if qtype == "TXT":
                return [(txt_to_bytes(t),) for t in r.txt(name)]
            if qtype == "A":
                return r.a(name)
            if qtype == "AAAA":
                return r.aaaa(name)
            if qtype == "MX":
                return r.mx(name)
            if qtype == "PTR":
                try:
                    ip = dns.reversename.to_address(dns.name.from_text(name))
                except (dns.exception.DNSException, ValueError):
                    return []
                return r.ptr(ip)
        except (NXDomain, PermError):
            # A name DNS cannot hold or a CNAME loop yields no usable data; RFC 7208 5.5
            # skips such names, and pyspf itself returns [] for invalid names.
            return []
        except TempError as exc:
            raise pyspf.TempError(str(exc)) from None
        except DnsError as exc:
            raise pyspf.TempError(str(exc)) from None
        # Type SPF (99) was removed by RFC 7208; nothing else is queried by pyspf.
        return []

    def dns(self, name, qtype, cnames=None, ignore_void=False):
        if not name:
            raise pyspf.PermError("empty domain name")
        name = str(name).rstrip(".")
        # pyspf's own rule: a label outside 1..63 octets is no answer, not an error.
        if not all(0 < len(label) < 64 for label in name.split(".")):
            return []
        key = (name.lower(), qtype)
        result = self.cache.get(key)
        if result is None:
            if time.monotonic() > self._deadline:
                raise pyspf.TempError(f"SPF check exceeded {QUERY_TIME:.0f} s of DNS time")
            result = self._fetch(name, qtype)
            self.cache[key] = result
        if not result and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > pyspf.MAX_VOID_LOOKUPS:
                raise pyspf.PermError("Void lookup limit of %d exceeded" % pyspf.MAX_VOID_LOOKUPS)
        return result


def spf_query(ip: str, helo: str, envelope_from: str, resolver: Resolver) -> pyspf.query:
    """A pyspf query object wired to `resolver` (for callers needing pyspf's extras)."""
    return _ResolverQuery(resolver, i=ip, s=envelope_from or "", h=helo or "")


def check_spf(ip: str, helo: str | None, envelope_from: str | None, resolver: Resolver) -> SpfOutcome:
    """Evaluate SPF for MAIL FROM (or HELO when the sender is null `<>`), RFC 7208 section 2.4."""
    sender = (envelope_from or "").strip().strip("<>")
    helo = (helo or "").strip()
    identity = "mailfrom" if sender else "helo"
    if sender and "@" not in sender:
        sender = "postmaster@" + sender
    try:
        ipaddress.ip_address((ip or "").strip())
    except ValueError:
        # pyspf accepts '' and then fails inside check() (no cidrmax): refuse it here
        return SpfOutcome(AuthResult.PERMERROR, None, f"bad client IP: {ip!r}", identity)
    try:
        q = spf_query(ip, helo, sender, resolver)
    except (pyspf.PermError, ValueError) as exc:  # a client IP pyspf cannot parse
        return SpfOutcome(AuthResult.PERMERROR, None, f"bad client IP: {exc}", identity)
    result, _code, explanation = q.check()
    result = {"ambiguous": "permerror", "unknown": "permerror", "error": "temperror"}.get(result, result)
    domain = normalize_domain(q.o) if q.o else None
    if identity == "mailfrom":
        addr = normalize_address(sender)
        domain = addr.rpartition("@")[2] if addr else domain
    return SpfOutcome(AuthResult(result), domain, explanation or "", identity)
