"""Which header writers ingest believes: trusted authserv-ids, relay ranges, auto-detection."""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Iterable

from edrules.domains import org_domain
from edrules.errors import EdrulesError, Location
from edrules.ingest.authheaders import NO_AUTHSERV_ID

# Auto-detection: an authserv-id is the receiving system's own when it heads the
# Authentication-Results of at least this share of the sampled messages (and MIN_MESSAGES).
AUTO_MIN_SHARE = 0.10
AUTO_MIN_MESSAGES = 1
AUTO_SAMPLE = 500


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """authserv_ids: A-R authserv-ids / Received-SPF receivers to believe (lower-case; '(none)'
    stands for id-less Microsoft 365 headers). relays: CIDRs of our own relays: a Received
    field written by a host we received from through such a relay is believed too.
    auto_detect: with no authserv_ids configured, detect them per dataset (docs/datasets.md);
    it also trusts private/loopback relay addresses. receiver_ids: believed as Received-SPF
    receivers and Received by-hosts only, never as A-R authserv-ids (per-message detection
    puts the top-most Received-SPF's receiver here: the sender may have written it)."""

    authserv_ids: frozenset[str] = frozenset()
    relays: tuple[str, ...] = ()
    auto_detect: bool = True
    receiver_ids: frozenset[str] = frozenset()
    _networks: tuple = field(default=(), init=False, compare=False, repr=False)
    _hosts: frozenset = field(default=frozenset(), init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        ids = frozenset(i.strip().lower().rstrip(".") for i in self.authserv_ids if i and i.strip())
        object.__setattr__(self, "authserv_ids", ids)
        receivers = frozenset(i.strip().lower().rstrip(".") for i in self.receiver_ids if i and i.strip())
        object.__setattr__(self, "receiver_ids", receivers - ids)
        object.__setattr__(self, "_hosts", ids | receivers)
        nets = []
        for cidr in self.relays:
            try:
                nets.append(ipaddress.ip_network(cidr.strip(), strict=False))
            except ValueError:
                raise EdrulesError(f"not an IP network: {cidr!r}", Location(field="trusted-relay")) from None
        object.__setattr__(self, "relays", tuple(str(n) for n in nets))
        object.__setattr__(self, "_networks", tuple(nets))

    def with_ids(self, ids: Iterable[str]) -> "TrustConfig":
        return replace(self, authserv_ids=frozenset(ids), receiver_ids=frozenset())

    def trusts_id(self, authserv_id: str | None) -> bool:
        return bool(authserv_id) and authserv_id in self.authserv_ids

    def trusts_receiver(self, receiver: str | None) -> bool:
        """Received-SPF receiver: a trusted id itself, or the same organisation (Google writes
        A-R as mx.google.com but Received-SPF as google.com)."""
        if not receiver:
            return False
        if receiver in self._hosts:
            return True
        org = org_domain(receiver)
        return any(org_domain(i) == org for i in self._hosts if i != NO_AUTHSERV_ID and "." in i)

    def writes_hop(self, by_host: str | None, receivers: bool = True) -> bool:
        """A Received field's by-host belongs to a trusted authserv-id: equal, or a subdomain of
        an id of three or more labels (Microsoft stamps receiver=protection.outlook.com, its edge
        is *.mail.protection.outlook.com). A two-label id such as google.com (Google's
        Received-SPF receiver) does not cover every host of that company: Google's outbound
        relays also write Received fields, on the sender's side. receivers=False leaves out
        receiver_ids (the sender may have named them)."""
        if not by_host:
            return False
        for i in self._hosts if receivers else self.authserv_ids:
            if by_host == i or (i.count(".") >= 2 and by_host.endswith("." + i)):
                return True
        return False

    def trusts_relay_ip(self, ip: str | None) -> bool:
        if not ip:
            return False
        if self.auto_detect and _is_internal(ip):
            return True
        if not self._networks:
            return False
        addr = _addr(ip)
        return addr is not None and any(addr.version == n.version and addr in n for n in self._networks)


# Addresses only a site's own hosts use (RFC 1918, loopback, link-local, IPv6 ULA). Python's
# is_private would also take the documentation ranges, which are not internal hosts.
_INTERNAL = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16",
              "::1/128", "fc00::/7", "fe80::/10")
)


@lru_cache(maxsize=65536)
def _is_internal(ip: str) -> bool:
    addr = _addr(ip)
    return addr is not None and any(addr.version == n.version and addr in n for n in _INTERNAL)


@lru_cache(maxsize=4096)
def _addr(ip: str):
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None


def detect_authserv_ids(top_ids: Iterable[str | None]) -> frozenset[str]:
    """Ids heading the auth headers of enough sampled messages (one id per message)."""
    ids = [i for i in top_ids if i]
    if not ids:
        return frozenset()
    counts = Counter(ids)
    need = max(AUTO_MIN_MESSAGES, AUTO_MIN_SHARE * len(ids))
    return frozenset(i for i, c in counts.items() if c >= need)
