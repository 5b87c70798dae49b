"""Normalise addresses and domains once, and find organisational domains (bundled PSL)."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

# The package bundles the list; it never downloads at run time.
_PSL = PublicSuffixList()


@lru_cache(maxsize=65536)
def normalize_domain(domain: str | None) -> str | None:
    """Lower-case A-label form without trailing dot, or None if empty/unusable.

    IDNA 2003 via the stdlib codec keeps this dependency-free; labels it cannot encode are
    kept lower-cased as written so nothing is silently dropped.
    """
    if domain is None:
        return None
    d = domain.strip().strip("[]").rstrip(".").lower()
    if not d:
        return None
    if not d.isascii():
        try:
            d = d.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return d


# RFC 5322 dot-atom: a quoted local part made only of these needs no quotes.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def normalize_address(address: str | None) -> str | None:
    """`Local@Domain.` -> `local@domain`; the empty (null) sender stays ''. A quoted local
    part that needs no quotes (`"ceo"@x`) loses them: it is the same mailbox as `ceo@x`, and
    allow/block entries and scopes are written without quotes."""
    if address is None:
        return None
    a = address.strip().strip("<>").strip()
    if a == "":
        return ""
    local, sep, domain = a.rpartition("@")
    if not sep:
        return a.lower()
    if len(local) > 2 and local[0] == '"' and local[-1] == '"' and _DOT_ATOM.fullmatch(local[1:-1]):
        local = local[1:-1]
    return f"{local.lower()}@{normalize_domain(domain) or ''}"


def domain_syntax_ok(domain: str) -> bool:
    """A domain as written in an address is a host name: no address literal (`[1.2.3.4]`),
    no empty label (`a..b`, `.a`, `a..`; one trailing dot is the root and allowed), ASCII
    labels of letters, digits, `-` and `_` not starting or ending with `-`, at most 63
    characters each. Non-ASCII labels are left to the IDNA checks."""
    d = domain.strip()
    if d.endswith("."):
        d = d[:-1]
    if not d or len(d) > 253:
        return False
    for label in d.lower().split("."):
        if not label:
            return False
        if label.isascii() and not _LABEL.fullmatch(label):
            return False
        if not label.isascii() and (len(label) > 63 or any(c in label for c in "[]<>()@,;:\\\" \t")):
            return False
    return True


def address_domain(address: str | None) -> str | None:
    """Domain part of an already normalised address."""
    if not address or "@" not in address:
        return None
    return address.rpartition("@")[2] or None


@lru_cache(maxsize=65536)
def org_domain(domain: str | None) -> str | None:
    """Organisational domain (public suffix + one label), as DMARC defines it.

    Returns the domain itself when it is a public suffix or unknown single label.
    """
    if not domain or is_ip_literal(domain):
        return None
    org = _PSL.privatesuffix(domain)
    return org or domain


def is_ip_literal(value: str) -> bool:
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return False
    return True


def normalize_ip(value: str | None) -> str | None:
    """Canonical text of an IPv4/IPv6 address (IPv4-mapped IPv6 becomes IPv4), else None."""
    if not value:
        return None
    v = value.strip().strip("[]")
    if v.lower().startswith("ipv6:"):
        v = v[5:]
    try:
        ip = ipaddress.ip_address(v)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            # A zone id (`fe80::1%eth0`) names an interface of the host that wrote it; no mail
            # client connects with one, and the backends' parsers disagree on it.
            return None
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    return str(ip)


def is_subdomain_or_self(domain: str | None, parent: str | None) -> bool:
    """True for parent itself or a dot-separated child; `evilexample.com` is not under `example.com`."""
    if not domain or not parent:
        return False
    return domain == parent or domain.endswith("." + parent)
