"""One DNS interface for SPF, DKIM, DMARC, ARC and dns-check: live (dnspython) or zone files."""

from __future__ import annotations

import ipaddress
import os
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Protocol, runtime_checkable

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename
import dns.tokenizer
import dns.zonefile

from edrules.errors import EdrulesError, Location

# Switch used by tests and offline analysis: with EDRULES_DNS=offline the default resolver
# refuses to start, so a code path that forgot to pass a resolver fails loudly instead of
# silently getting `none` from this machine's (dead) DNS.
OFFLINE_ENV = "EDRULES_DNS"

MAX_CNAME_CHAIN = 8
MAX_ZONE_BYTES = 64 << 20  # far above any mail domain's zone; bounds what one file may cost


class DnsError(Exception):
    """A DNS lookup that did not produce an answer set (NODATA is an empty list, not an error)."""

    def __init__(self, name: str, rdtype: str, detail: str = ""):
        super().__init__(f"{rdtype} {name}: {detail or type(self).__name__}")
        self.name = name
        self.rdtype = rdtype
        self.detail = detail


class NXDomain(DnsError):
    """The name does not exist."""


class TempError(DnsError):
    """Timeout, SERVFAIL, unreachable servers: retrying later may succeed (temperror)."""


class PermError(DnsError):
    """The query itself is invalid (malformed name, CNAME loop): permerror."""


@runtime_checkable
class Resolver(Protocol):
    """What every DNS consumer in edrules needs. Empty list = the name exists without such data."""

    def txt(self, name: str) -> list[str]: ...

    def a(self, name: str) -> list[str]: ...

    def aaaa(self, name: str) -> list[str]: ...

    def mx(self, name: str) -> list[tuple[int, str]]: ...

    def ptr(self, ip: str) -> list[str]: ...


def _key(name: str) -> str:
    return name.strip().rstrip(".").lower()


def txt_to_str(strings: Iterable[bytes]) -> str:
    """Join a TXT record's character-strings. Non-UTF-8 bytes survive via surrogateescape
    so SPF/DKIM can re-encode the exact bytes and reject them themselves."""
    return b"".join(strings).decode("utf-8", "surrogateescape")


def txt_to_bytes(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _check_name(name: str, rdtype: str) -> str:
    """Canonical lookup key (escaped presentation form, lower case) or PermError."""
    try:
        return _canonical(name)
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise PermError(name, rdtype, f"invalid DNS name: {exc}") from None


@lru_cache(maxsize=65536)
def _canonical(name: str) -> str:
    # Cached: name parsing is the zone resolver's main cost and SPF asks the same names often.
    return dns.name.from_text(name.strip()).to_text(omit_final_dot=True).lower()


def reverse_name(ip: str) -> str:
    try:
        return dns.reversename.from_address(ip).to_text(omit_final_dot=True).lower()
    except (dns.exception.SyntaxError, ValueError):
        raise PermError(ip, "PTR", "not an IP address") from None


@dataclass(slots=True)
class ZoneResolver:
    """Answers from master-file zone text only; names it does not hold are NXDOMAIN.

    Never falls back to the network, so tests and offline analysis are deterministic.
    `tempfail` lists (name, rdtype) pairs (rdtype '*' for all) that raise TempError, to
    simulate timeouts; master-file syntax has no way to say "this server times out".
    """

    records: dict[str, dict[str, list]] = field(default_factory=dict)
    tempfail: frozenset[tuple[str, str]] = frozenset()
    # every owner name and all its ancestors: tells NODATA (empty non-terminal) from NXDOMAIN
    existing: set[str] = field(default_factory=set)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_text(
        cls,
        text: str,
        origin: str | None = None,
        *,
        tempfail: Iterable[tuple[str, str]] = (),
        source: str | None = None,
    ) -> "ZoneResolver":
        """Parse master-file text. Without `origin`, relative names are relative to the root
        and `$ORIGIN` lines switch zones, so one text may hold many domains."""
        resolver = cls(tempfail=frozenset((_check_name(n, t), t.upper()) for n, t in tempfail))
        resolver.add_text(text, origin, source=source)
        return resolver

    @classmethod
    def from_file(cls, *paths: str | Path, tempfail: Iterable[tuple[str, str]] = ()) -> "ZoneResolver":
        """Load one or several zone files into one resolver."""
        resolver = cls(tempfail=frozenset((_check_name(n, t), t.upper()) for n, t in tempfail))
        for path in paths:
            p = Path(path)
            try:
                if not p.is_file():
                    # a FIFO would block for ever, /dev/zero would fill memory
                    raise EdrulesError("cannot read zone file: not a regular file", Location(str(p)))
                if p.stat().st_size > MAX_ZONE_BYTES:
                    raise EdrulesError(f"cannot read zone file: larger than {MAX_ZONE_BYTES >> 20} MiB",
                                       Location(str(p)))
                data = p.read_bytes()
            except OSError as exc:
                raise EdrulesError(f"cannot read zone file: {exc.strerror}", Location(str(p))) from None
            resolver.add_text(_decode_zone(data, str(p)), None, source=str(p))
        return resolver

    def add_text(self, text: str, origin: str | None = None, *, source: str | None = None) -> None:
        # A default TTL keeps hand-written test zones short; error lines are shifted back.
        body = "$TTL 3600\n" + text
        try:
            rrsets = _parse_zone(body, origin)
        except dns.exception.SyntaxError as exc:
            line = _line_of(str(exc))
            # dnspython reports some errors after consuming the newline (one line late):
            # if the text up to the previous line already fails, that line is the culprit.
            if line and line > 2:
                head = "".join(body.splitlines(keepends=True)[: line - 1])
                try:
                    _parse_zone(head, origin)
                except dns.exception.DNSException:
                    line -= 1
            raise EdrulesError(f"bad zone file: {_strip_line(str(exc))}",
                               Location(source, line - 1 if line else None)) from None
        except (dns.exception.DNSException, ValueError, UnicodeError) as exc:
            # ValueError/UnicodeError: dnspython's rdata parsers on values the tokenizer let through
            raise EdrulesError(f"bad zone file: {exc}", Location(source)) from None
        for rrset in rrsets:
            if rrset.rdclass != dns.rdataclass.IN:
                continue
            owner = _key(rrset.name.to_text())
            bucket = self.records.setdefault(owner, {})
            labels = owner.split(".")
            self.existing.update(".".join(labels[i:]) for i in range(len(labels)))
            bucket.setdefault(dns.rdatatype.to_text(rrset.rdtype), []).extend(rrset)

    # -- lookups --------------------------------------------------------------------------
    def _exists(self, name: str) -> bool:
        # An empty non-terminal (only children exist) is NODATA, not NXDOMAIN (RFC 8020).
        return name in self.existing

    def _node(self, name: str) -> dict[str, list] | None:
        node = self.records.get(name)
        if node is not None:
            return node
        if self._exists(name):
            return {}
        # RFC 4592 wildcard: the closest existing ancestor decides; '*.' under it answers.
        labels = name.split(".")
        for i in range(1, len(labels)):
            parent = ".".join(labels[i:])
            if self._exists(parent):
                return self.records.get("*." + parent)
        return None

    def _lookup(self, name: str, rdtype: str) -> list:
        key = _check_name(name, rdtype)
        seen: list[str] = []
        while True:
            if (key, rdtype) in self.tempfail or (key, "*") in self.tempfail:
                if rdtype not in (self.records.get(key) or {}):
                    raise TempError(name, rdtype, "simulated timeout")
            node = self._node(key)
            if node is None:
                raise NXDomain(name, rdtype, "no such name in the loaded zones")
            if rdtype in node:
                return node[rdtype]
            if "CNAME" in node and rdtype != "CNAME":
                seen.append(key)
                key = _key(node["CNAME"][0].target.to_text())
                if key in seen or len(seen) > MAX_CNAME_CHAIN:
                    raise PermError(name, rdtype, "CNAME loop or chain too long")
                continue
            return []

    def txt(self, name: str) -> list[str]:
        return [txt_to_str(r.strings) for r in self._lookup(name, "TXT")]

    def a(self, name: str) -> list[str]:
        return [r.address for r in self._lookup(name, "A")]

    def aaaa(self, name: str) -> list[str]:
        return [r.address for r in self._lookup(name, "AAAA")]

    def mx(self, name: str) -> list[tuple[int, str]]:
        return [(r.preference, _key(r.exchange.to_text())) for r in self._lookup(name, "MX")]

    def ptr(self, ip: str) -> list[str]:
        return [_key(r.target.to_text()) for r in self._lookup(reverse_name(ip), "PTR")]


class _AnyOrigin(dns.name.Name):
    """Equal to every name: dnspython's 'non-origin SOA' check passes for any SOA owner.
    (A Name subclass, so Python asks its __ne__ before dns.name.Name's.)"""

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = dns.name.Name.__hash__


class _RecordsTransaction(dns.zonefile.RRsetsReaderTransaction):
    # dns.zone.Zone insists that an SOA sits at the zone's origin, and the origin here is the
    # root (so one text may hold many domains): an ordinary BIND file, `$ORIGIN example.com.`
    # then `@ IN SOA ...`, failed with "non-origin SOA". edrules never serves SOA records, so
    # the check is waived; dnspython uses _origin_information only for that check.
    def _origin_information(self):
        origin, relativize, _effective = self.manager.origin_information()
        return origin, relativize, _AnyOrigin(())


class _RecordsManager(dns.zonefile.RRSetsReaderManager):
    def writer(self, replacement=False):
        return _RecordsTransaction(self, True, False)


class OverlayResolver:
    """`base` with some names' TXT or MX answers replaced: the DNS as it will answer once
    records are published (dns-check verifies its own suggestions this way)."""

    def __init__(self, base: Resolver, *, txt: dict[str, list[str]] | None = None,
                 mx: dict[str, list[tuple[int, str]]] | None = None):
        self.base = base
        self._txt = {_check_name(k, "TXT"): list(v) for k, v in (txt or {}).items()}
        self._mx = {_check_name(k, "MX"): list(v) for k, v in (mx or {}).items()}

    def txt(self, name: str) -> list[str]:
        key = _check_name(name, "TXT")
        return list(self._txt[key]) if key in self._txt else self.base.txt(name)

    def a(self, name: str) -> list[str]:
        return self.base.a(name)

    def aaaa(self, name: str) -> list[str]:
        return self.base.aaaa(name)

    def mx(self, name: str) -> list[tuple[int, str]]:
        key = _check_name(name, "MX")
        return list(self._mx[key]) if key in self._mx else self.base.mx(name)

    def ptr(self, ip: str) -> list[str]:
        return self.base.ptr(ip)


def _parse_zone(text: str, origin: str | None) -> list:
    """Master-file text to RRsets, with $ORIGIN/$TTL/$GENERATE (no $INCLUDE: a zone file
    must not make edrules read other files). Without an origin everything hangs off the
    root, so $ORIGIN lines may switch domains."""
    root = dns.name.from_text(origin) if origin else dns.name.root
    manager = _RecordsManager(root, False, dns.rdataclass.IN)
    with manager.writer(True) as txn:
        tok = dns.tokenizer.Tokenizer(text, "<string>")
        dns.zonefile.Reader(tok, dns.rdataclass.IN, txn, allow_include=False).read()
    return manager.rrsets


def _decode_zone(data: bytes, source: str) -> str:
    """Zone file bytes as text, or a located error for a file that is not text."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise EdrulesError(f"bad zone file: not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x})",
                           Location(source, line)) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise EdrulesError("bad zone file: binary data (a NUL byte)", Location(source, line))
    return text


def _line_of(message: str) -> int | None:
    # dnspython reports "<string>:LINE: message"
    parts = message.split(":")
    if len(parts) >= 3 and parts[1].strip().isdigit():
        return int(parts[1])
    return None


def _strip_line(message: str) -> str:
    parts = message.split(":", 2)
    if len(parts) == 3 and parts[1].strip().isdigit():
        return parts[2].strip()
    return message


class DnsPythonResolver:
    """Live DNS with per-query timeouts and a per-process LRU cache (honours TTLs).

    Errors map onto the RFC words: NXDOMAIN -> NXDomain, NODATA -> [], timeouts and
    SERVFAIL -> TempError (temperror), malformed names -> PermError (permerror).
    """

    _shared_cache = dns.resolver.LRUCache(max_size=50_000)

    def __init__(self, timeout: float = 3.0, lifetime: float = 8.0, nameservers: list[str] | None = None):
        if os.environ.get(OFFLINE_ENV, "").lower() == "offline":
            raise EdrulesError(f"live DNS is disabled ({OFFLINE_ENV}=offline): pass a ZoneResolver")
        try:
            self._resolver = dns.resolver.Resolver(configure=nameservers is None)
        except dns.exception.DNSException as exc:
            raise EdrulesError(f"cannot configure DNS resolver: {exc}") from None
        if nameservers is not None:
            self._resolver.nameservers = nameservers
        self._resolver.timeout = timeout
        self._resolver.lifetime = lifetime
        self._resolver.cache = self._shared_cache

    def _query(self, name: str, rdtype: str) -> list:
        _check_name(name, rdtype)
        try:
            return list(self._resolver.resolve(name, rdtype, search=False))
        except dns.resolver.NXDOMAIN:
            raise NXDomain(name, rdtype) from None
        except dns.resolver.NoAnswer:
            return []
        except (dns.resolver.LifetimeTimeout, dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise TempError(name, rdtype, str(exc)) from None
        except dns.resolver.YXDOMAIN as exc:
            raise PermError(name, rdtype, str(exc)) from None
        except dns.exception.DNSException as exc:
            raise TempError(name, rdtype, str(exc)) from None

    def txt(self, name: str) -> list[str]:
        return [txt_to_str(r.strings) for r in self._query(name, "TXT")]

    def a(self, name: str) -> list[str]:
        return [r.address for r in self._query(name, "A")]

    def aaaa(self, name: str) -> list[str]:
        return [r.address for r in self._query(name, "AAAA")]

    def mx(self, name: str) -> list[tuple[int, str]]:
        return [(r.preference, _key(r.exchange.to_text())) for r in self._query(name, "MX")]

    def ptr(self, ip: str) -> list[str]:
        return [_key(r.target.to_text()) for r in self._query(reverse_name(ip), "PTR")]


_default_lock = threading.Lock()
_default: DnsPythonResolver | None = None


def default_resolver() -> Resolver:
    """The process-wide live resolver (one cache for the whole gateway process)."""
    global _default
    if os.environ.get(OFFLINE_ENV, "").lower() == "offline":
        raise EdrulesError(f"live DNS is disabled ({OFFLINE_ENV}=offline): pass a ZoneResolver")
    with _default_lock:
        if _default is None:
            _default = DnsPythonResolver()
        return _default


def ip_version(ip: str) -> int:
    return ipaddress.ip_address(ip).version
