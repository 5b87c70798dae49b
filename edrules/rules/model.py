"""Typed, validated policy model shared by the YAML parser, the pack and both backends.

The semantics every backend implements are written down in docs/rules.md ("Semantics");
this module only holds the data. Values are normalised by the parser (edrules.domains), so
backends compare them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum

from edrules.facts import Action


class FromPolicy(StrEnum):
    STRICT = "strict"
    ALIGNED = "aligned"
    RELAXED = "relaxed"


class BulkPolicy(StrEnum):
    SCAN = "scan"
    ALLOW = "allow"
    BLOCK = "block"


class ListKind(StrEnum):
    ALLOW = "allow"
    BLOCK = "block"


class EntryKind(StrEnum):
    SENDER = "sender"  # a full address
    DOMAIN = "domain"
    IP = "ip"  # an address or CIDR, v4 or v6


class ViaKind(StrEnum):
    PROVIDER = "provider"
    DOMAIN = "domain"  # an envelope (or DKIM signing) domain of the infrastructure
    CIDR = "cidr"


class ScopeKind(StrEnum):
    GLOBAL = "global"
    DOMAIN = "domain"  # recipient domain equals value
    USER = "user"  # recipient address equals value


# Decision categories, in decision order; a verdict's `category` is one of these.
DECISION_CATEGORIES = (
    "inbound", "malware", "block", "allow", "bulk", "forgery", "phishing", "spam", "clean",
)

# Categories whose action the rules file may set, with defaults.
DEFAULT_ACTIONS: dict[str, Action] = {
    "malware": Action.QUARANTINE,
    "block": Action.QUARANTINE,
    "forgery": Action.QUARANTINE,
    "bulk": Action.QUARANTINE,
    "phishing": Action.QUARANTINE,
    "spam": Action.QUARANTINE,
}

DEFAULT_RETENTION_DAYS: dict[str, int] = {
    "malware": 30, "block": 30, "forgery": 30, "bulk": 30, "phishing": 30, "spam": 30,
}


@dataclass(frozen=True, slots=True)
class Scope:
    kind: ScopeKind = ScopeKind.GLOBAL
    value: str | None = None  # recipient domain or address, normalised

    def __str__(self) -> str:
        return "global" if self.kind is ScopeKind.GLOBAL else f"{self.kind.value}:{self.value}"


@dataclass(frozen=True, slots=True)
class Via:
    """The infrastructure half of a pair entry. It must be *authenticated* to match."""

    kind: ViaKind
    value: str  # canonical provider name, normalised domain, or CIDR text (network address)


@dataclass(frozen=True, slots=True)
class Entry:
    """One allow or block list entry.

    value: normalised address (SENDER), domain (DOMAIN) or CIDR text in network form (IP;
    a single address becomes /32 or /128).
    """

    id: str
    list: ListKind
    kind: EntryKind
    value: str
    subdomains: bool = False
    via: Via | None = None
    scope: Scope = field(default_factory=Scope)
    comment: str | None = None
    expires: date | None = None  # valid through this date inclusive; ignored after it
    line: int | None = None  # where it came from in the rules file


@dataclass(frozen=True, slots=True)
class ProviderDef:
    """The catalog entries a pack depends on, frozen into the pack so both backends agree."""

    name: str
    envelope_suffixes: tuple[str, ...]
    dkim_domains: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    """A compiled rules file: what a pack carries and both backends evaluate."""

    name: str
    from_policy: FromPolicy = FromPolicy.STRICT
    bulk_mailers: dict[str, BulkPolicy] = field(default_factory=dict)  # provider -> policy (scan omitted)
    actions: dict[str, Action] = field(default_factory=lambda: dict(DEFAULT_ACTIONS))
    retention_days: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_RETENTION_DAYS))
    inbound_relays: tuple[str, ...] = ()  # CIDRs
    inbound_enforce: bool = False
    allow: tuple[Entry, ...] = ()
    block: tuple[Entry, ...] = ()
    providers: dict[str, ProviderDef] = field(default_factory=dict)  # every provider the policy names
