"""The demo tenant's DNS as an in-memory zone: lookups for signing/verifying, master-file output."""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field

from edrules.domains import org_domain

# RFC 1035 character-strings hold at most 255 bytes; longer TXT values are split into
# several strings that resolvers concatenate (DKIM RFC 6376 3.6.2.2).
_TXT_CHUNK = 250


@dataclass(slots=True)
class Zone:
    """Records keyed by (lower-case name without trailing dot, type), values in insertion order.

    Mutable on purpose: the generator adds host records as it meets them in the drafts.
    """

    records: dict[tuple[str, str], list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, name: str, rtype: str, value: str) -> None:
        values = self.records[(name.lower().rstrip("."), rtype)]
        if value not in values:
            values.append(value)

    def add_host(self, name: str, ip: str, ptr: bool = True) -> None:
        """A/AAAA for a host name, and its PTR so the Received rDNS names are truthful."""
        addr = ipaddress.ip_address(ip)
        self.add(name, "A" if addr.version == 4 else "AAAA", str(addr))
        if ptr:
            self.add(addr.reverse_pointer, "PTR", name.rstrip(".") + ".")

    def get(self, name: str, rtype: str) -> list[str]:
        return list(self.records.get((name.lower().rstrip("."), rtype), ()))

    def txt(self, name: str) -> list[str]:
        return self.get(name, "TXT")

    def dkim_dnsfunc(self, name: bytes | str, timeout: int = 5) -> bytes | None:
        """dkimpy `dnsfunc`: the first TXT record at name, or None."""
        key = name.decode("ascii") if isinstance(name, bytes) else name
        values = self.txt(key)
        return values[0].encode("ascii") if values else None

    def to_master(self, header: str) -> str:
        """Standard master-file text: one $ORIGIN block per organisational domain."""
        blocks: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        for (name, rtype), values in self.records.items():
            origin = _origin_of(name)
            for value in values:
                blocks[origin].append((name, rtype, value))
        lines = [*(f"; {h}" if h else ";" for h in header.splitlines()), "$TTL 3600", ""]
        for origin in sorted(blocks, key=_origin_sort_key):
            lines.append(f"$ORIGIN {origin}.")
            for name, rtype, value in sorted(blocks[origin], key=lambda r: (r[0] != origin, _rel(r[0], origin), r[1])):
                owner = _rel(name, origin)
                lines.append(f"{owner:<40} IN {rtype:<5} {_rdata(rtype, value)}")
            lines.append("")
        return "\n".join(lines)


def _origin_of(name: str) -> str:
    if name.endswith(".in-addr.arpa"):
        return "in-addr.arpa"
    if name.endswith(".ip6.arpa"):
        return "ip6.arpa"
    labels = [label for label in name.split(".") if not label.startswith("_")]
    return org_domain(".".join(labels)) or name


def _origin_sort_key(origin: str) -> tuple[int, str]:
    return (origin.endswith(".arpa"), origin)


def _rel(name: str, origin: str) -> str:
    if name == origin:
        return "@"
    return name[: -len(origin) - 1]


def _rdata(rtype: str, value: str) -> str:
    if rtype != "TXT":
        return value
    chunks = [value[i : i + _TXT_CHUNK] for i in range(0, len(value), _TXT_CHUNK)] or [""]
    quoted = " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)
    return quoted if len(chunks) == 1 else f"( {quoted} )"
