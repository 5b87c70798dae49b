"""Parse Received header fields into hops (Postfix, sendmail, Exim, qmail, Microsoft, Google)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from functools import lru_cache

from edrules.domains import normalize_domain
from edrules.domains import normalize_ip as _normalize_ip

_IPISH = re.compile(r"(?:IPv6:)?[0-9A-Fa-f:.]+", re.I)


@lru_cache(maxsize=65536)
def normalize_ip(value: str | None) -> str | None:
    """edrules.domains.normalize_ip behind a cheap shape check and a cache: Received fields
    repeat the same relays, and ipaddress parsing dominated the profile."""
    if not value or not _IPISH.fullmatch(value.strip().strip("[]")):
        return None
    return _normalize_ip(value)


def is_ip_literal(value: str) -> bool:
    return normalize_ip(value) is not None


@dataclass(frozen=True, slots=True)
class Hop:
    """One Received field. idx 0 is the top-most (written last, closest to the mailbox)."""

    idx: int
    position: int  # index of the field among all header fields
    from_host: str | None  # HELO name as the client announced it (or an address literal)
    from_rdns: str | None
    from_ip: str | None
    by_host: str | None
    protocol: str | None
    received_at: datetime | None
    raw: str
    trusted: bool = False  # written by a trusted relay (at or above the edge hop)


_BY_TOKEN = re.compile(r"\s*([^\s;()]+)")
_WITH_TOKEN = re.compile(r"\s*([A-Za-z0-9_-]+)")
_BRACKET_IP = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]")
_PAREN_IP = re.compile(r"\(\s*(?:IPv6:)?([0-9A-Fa-f:.]{3,})\s*\)")
_EXIM_HELO = re.compile(r"\bhelo=([^\s)]+)", re.I)
_QMAIL_HELO = re.compile(r"\(HELO\s+([^\s)]+)\)", re.I)
_RDNS_BEFORE_IP = re.compile(r"\(\s*([A-Za-z0-9._-]+)\.?\s+\[")


def _date(value: str) -> datetime | None:
    _, sep, tail = value.rpartition(";")
    if not sep:
        return None
    return parse_date(tail)


_FAST_DATE = re.compile(
    r"\s*(?:[A-Za-z]{3},?\s*)?(\d{1,2})\s+([A-Za-z]{3})\s+(\d{4})\s+(\d{1,2}):(\d\d)(?::(\d\d))?(?:\.\d+)?\s+([+-])(\d\d)(\d\d)\b"
)
_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}


def parse_date(text: str | None) -> datetime | None:
    """RFC 5322 date to naive UTC, or None when unparsable or absurd. The common numeric-zone
    form takes a regex path (Received dates are a quarter of the extraction profile)."""
    if not text:
        return None
    m = _FAST_DATE.match(text)
    if m is not None:
        mon = _MONTHS.get(m.group(2).lower())
        if mon is not None:
            try:
                local = datetime(int(m.group(3)), mon, int(m.group(1)), int(m.group(4)), int(m.group(5)),
                                 int(m.group(6) or 0))
                offset = timedelta(hours=int(m.group(8)), minutes=int(m.group(9)))
                dt = local - offset if m.group(7) == "+" else local + offset
            except (ValueError, OverflowError):
                return None
            return dt if 1970 <= dt.year <= 2200 else None
    try:
        dt = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if dt is None:
        return None
    try:
        if dt.tzinfo is not None:
            dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
    except (OverflowError, ValueError):
        return None
    return dt if 1970 <= dt.year <= 2200 else None


def _host(token: str | None) -> str | None:
    if not token:
        return None
    t = token.strip().strip("[]").rstrip(".")
    if not t or t.lower() == "unknown":
        return None
    ip = normalize_ip(t)
    return ip if ip else normalize_domain(t)


def _find_word(lv: str, word: str) -> int:
    """Index of ' word ' (or ')word ') in lower-cased text; str.find beats a regex scan here."""
    i = lv.find(" " + word + " ")
    j = lv.find(")" + word + " ")
    if i < 0:
        return j
    return i if j < 0 else min(i, j)


def parse_received(value: str, idx: int = 0, position: int = 0, trusted: bool = False) -> Hop:
    """Best-effort parse; fields that cannot be found are None, never an exception."""
    return Hop(idx, position, *received_fields(value), raw=value, trusted=trusted)


def received_fields(value: str) -> tuple:
    """(from_host, from_rdns, from_ip, by_host, protocol, received_at) of a Received value.
    Cheap substring tests gate each regex: Received parsing was the largest share of ingest."""
    v = " ".join(value.split())
    lv = v.lower()
    by_at = 0 if lv.startswith("by ") else _find_word(lv, "by")
    by_host = None
    if by_at >= 0:
        by_m = _BY_TOKEN.match(v, by_at + (2 if by_at == 0 else 3))
        by_host = _host(by_m.group(1)) if by_m else None
    from_host = from_rdns = from_ip = None
    if lv.startswith("from "):
        from_clause = v[5:by_at] if by_at > 0 else v[5:]
        token, _, rest = from_clause.strip().partition(" ")
        helo_m = None
        if "helo" in lv:
            helo_m = _EXIM_HELO.search(rest) or _QMAIL_HELO.search(rest)
        # The peer address is what the MTA saw (the comment, or Exim's leading token); the
        # HELO name is the client's own claim and may be any address literal, so it is cut
        # out before searching and never preferred to the comment.
        peer = rest if helo_m is None else rest[:helo_m.start()] + rest[helo_m.end():]
        m = _BRACKET_IP.search(peer) if "[" in peer else None
        if m is None and "(" in peer:
            m = _PAREN_IP.search(peer)
        if m is None and token.startswith("["):
            m = _BRACKET_IP.match(token)
        if m:
            from_ip = normalize_ip(m.group(1))
        if helo_m:
            # Exim / qmail: the leading token is the reverse-DNS name, HELO is in the comment.
            from_host = helo_m.group(1).strip("[]").rstrip(".") or None
            if not token.startswith("[") and token.lower() != "unknown":
                from_rdns = _host(token)
        else:
            from_host = token.strip("[]").rstrip(".") or None
            if "[" in rest:
                rd = _RDNS_BEFORE_IP.search(rest)
                if rd:
                    from_rdns = _host(rd.group(1))
        if from_host:
            ip = normalize_ip(from_host)
            if from_ip is None and ip:
                from_ip = ip
            from_host = ip or normalize_domain(from_host)
        if from_rdns and is_ip_literal(from_rdns):
            from_rdns = None
    w = _find_word(lv, "with")
    with_m = _WITH_TOKEN.match(v, w + 5) if w >= 0 else None
    return (from_host, from_rdns, from_ip, by_host,
            with_m.group(1).upper() if with_m else None, _date(v))


# A Postfix/sendmail `(name [ip])`, `(unknown [ip])` or `([ip])` comment, or Exim's `helo=` /
# qmail's `(HELO x)`: the relay recorded the client's verified name (or that it had none)
# apart from its HELO claim.
_RDNS_SLOT = re.compile(r"\(\s*(?:[A-Za-z0-9._-]+\.?\s+)?\[(?:IPv6:)?[0-9A-Fa-f:.]+\]|\bhelo[= ]", re.I)
# Exim prints `from NAME ([ip])` only for a verified host name equal to the HELO.
_EXIM_VERIFIED = re.compile(r"from\s+[A-Za-z0-9._-]+\s+\(\[[0-9A-Fa-f:.]+\](?::\d+)?\)")


def client_names(hop: Hop) -> tuple[frozenset[str], bool]:
    """(names, verified): the names under which the relay that wrote `hop` recorded its SMTP
    client, for matching against the `by` host of the field below (the client wrote that one).
    Where the relay records a reverse-DNS slot, only that name counts (verified): the HELO
    next to it is the client's own claim. Forms without the slot (Microsoft, `from host (ip)`)
    give one name, unverified. The address is never a name here: a sender knows its own and
    could write `by <its ip>` into a forged field."""
    if hop.from_rdns:
        return frozenset((hop.from_rdns,)), True
    if hop.from_host and "Exim" in hop.raw and _EXIM_VERIFIED.match(" ".join(hop.raw.split())):
        return frozenset((hop.from_host,)), True
    if hop.from_host and not _RDNS_SLOT.search(hop.raw):
        return frozenset((hop.from_host,)), False
    return frozenset(), True
