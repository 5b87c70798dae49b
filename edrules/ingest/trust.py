"""Which header writers ingest believes: trusted authserv-ids, relay ranges, the edge hop, auto-detection."""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Iterable, Sequence

from edrules.domains import org_domain
from edrules.errors import EdrulesError, Location
from edrules.ingest.authheaders import NO_AUTHSERV_ID
from edrules.ingest.received import Hop, client_names, is_ip_literal

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


# -- the edge hop: where our side's Received fields end ------------------------------------


def _chain(from_ips: Sequence[str | None], start: int, trust: TrustConfig) -> int:
    """Follow our own relays down from hop `start`: a hop is believed when the host that
    handed the message to the previous believed hop is a trusted relay."""
    i = start
    while i + 1 < len(from_ips) and trust.trusts_relay_ip(from_ips[i]):
        i += 1
    return i


def _no_client(hop: Hop) -> bool:
    return hop.from_host is None and hop.from_ip is None and hop.from_rdns is None


def _hands_over(upper: Hop, lower: Hop, trust: TrustConfig) -> str | None:
    """Did our side write `lower`, given that believed hop `upper` is ours? "gateway" when
    upper names its client by a trusted authserv-id (lower is then that gateway's field,
    whatever by-name it gives itself); "ours" when upper's relay recorded no client (a local
    hand-off such as Gmail's `by 2002:...` field) or named its client (received.client_names)
    as a host under a trusted id (TrustConfig.writes_hop) or of upper's own organisation;
    else None. A client named merely as lower's by-host proves nothing: that is how every
    chain reads, the sender's own relays included. Receiver-only ids (per-message detection
    takes them from a Received-SPF the sender may have written) never link.
    An unverified name (a HELO: the field has no reverse-DNS slot) also links when its first
    label is that of lower's by-host: Microsoft 365 names one machine
    x.namprd05.prod.outlook.com in one field and x.outlook.office365.com in the next. An
    unverified name is the client's claim, so such a link is only as good as the relay that
    recorded it (docs/datasets.md, trust)."""
    by = lower.by_host
    if by is None:
        return None
    if _no_client(upper):
        return "ours"
    own_org = org_domain(upper.by_host) if upper.by_host else None
    names, verified = client_names(upper)
    for name in names:
        if trust.trusts_id(name):
            return "gateway"
        if trust.writes_hop(name, receivers=False):
            return "ours"
        if is_ip_literal(name):
            continue
        if own_org is not None and org_domain(name) == own_org:
            return "ours"
        if not verified and "." in name and name.split(".", 1)[0] == by.split(".", 1)[0]:
            return "ours"
    return None


def edge_hop(hops: Sequence[Hop], trust: TrustConfig) -> int | None:
    """Index of the Received field written by the first trusted relay (the one that talked
    to the outside client), or None without Received fields.

    Trust only grows downwards from hop 0 (written by the system that stored the message)
    and only through hops already believed: the next field is believed when the believed
    one's client is a trusted relay IP, or, on the way to the gateway's own field, when the
    believed one names its client as a host of our side (`_hands_over`). The first
    believed field whose by-host is a trusted authserv-id, or whose writer the field above
    names by such a host, is the gateway's; from there only trusted relay IPs extend the
    chain. A field below a hop whose client is an outsider is
    that outsider's text and never becomes the edge, whatever by-host it names."""
    if not hops:
        return None
    from_ips = [h.from_ip for h in hops]
    i = 0
    gateway = False  # hops[i] is known to be the gateway's from the field above it
    while True:
        hop = hops[i]
        if gateway or trust.writes_hop(hop.by_host):
            if _no_client(hop) and i + 1 < len(hops) and hops[i + 1].by_host == hop.by_host:
                # The gateway re-injected the message (after a content filter): its SMTP
                # field is the next one down.
                i += 1
                gateway = True
                continue
            return _chain(from_ips, i, trust)
        if i + 1 >= len(hops):
            break
        if trust.trusts_relay_ip(from_ips[i]):
            i += 1
            continue
        link = _hands_over(hop, hops[i + 1], trust)
        if link is None:
            break
        gateway = link == "gateway"
        i += 1
    # No believed field was written by a trusted id: the relays alone decide.
    return _chain(from_ips, 0, trust)


def detect_authserv_ids(top_ids: Iterable[str | None]) -> frozenset[str]:
    """Ids heading the auth headers of enough sampled messages (one id per message)."""
    ids = [i for i in top_ids if i]
    if not ids:
        return frozenset()
    counts = Counter(ids)
    need = max(AUTO_MIN_MESSAGES, AUTO_MIN_SHARE * len(ids))
    return frozenset(i for i, c in counts.items() if c >= need)
