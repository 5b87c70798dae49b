"""Who is signed in, and the ONE predicate that decides whose mail they may see.

Every page, endpoint and dashboard asks `can_access(principal, recipient)`; nothing else
decides access to a recipient's mail, so the authorisation test can walk one rule.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["user", "domain_admin", "provider"]
ROLES: tuple[Role, ...] = ("user", "domain_admin", "provider")
ROLE_LABELS = {"user": "user", "domain_admin": "domain admin", "provider": "service provider"}


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class Principal:
    """A signed-in account: its address, role and the domains it answers for.

    user: `domains` is its own address's domain (it still sees only its own mail);
    domain_admin: the domains it administers; provider: its customers' domains.
    """

    address: str
    role: Role
    domains: frozenset[str] = field(default_factory=frozenset)

    def to_json(self) -> str:
        return json.dumps({"address": self.address, "role": self.role, "domains": sorted(self.domains)})

    @classmethod
    def from_json(cls, text: str) -> "Principal":
        d = json.loads(text)
        if d.get("role") not in ROLES:
            raise ValueError(f"unknown role {d.get('role')!r}")
        return cls(str(d["address"]).lower(), d["role"], frozenset(x.lower() for x in d.get("domains", ())))

    @property
    def label(self) -> str:
        return ROLE_LABELS[self.role]

    def administers(self, domain: str) -> bool:
        """May change this domain's policies and accounts (domain admin or provider of it)."""
        return self.role in ("domain_admin", "provider") and domain.lower().rstrip(".") in self.domains


def can_access(principal: Principal | None, recipient: str) -> bool:
    """May `principal` see and act on mail addressed to `recipient`?

    A user: only its own address. A domain admin or a service provider: any address in one of
    its domains, compared exactly (a.test grants neither sub.a.test nor a.test.evil).
    Nobody signed in: nothing.
    """
    if principal is None or not recipient or "@" not in recipient:
        return False
    recipient = recipient.strip().lower()
    if principal.role == "user":
        return recipient == principal.address.lower()
    if principal.role in ("domain_admin", "provider"):
        return domain_of(recipient) in principal.domains
    return False


# --- how a Voila dashboard learns who opened it ------------------------------------------------
# The server's Voila prelaunch hook prepends a hidden cell to the notebook that calls
# `_install(...)` with the Principal of the request that opened the page; the kernel is started
# for that one page view, so this module-level value is that viewer. The browser cannot run
# code in the kernel (only widget comm messages are allowed), so it cannot change it.
_CURRENT: Principal | None = None
ENV_PRINCIPAL = "EDRULES_PRINCIPAL"


def _install(principal_json: str) -> None:
    global _CURRENT
    _CURRENT = Principal.from_json(principal_json)


def current_principal() -> Principal | None:
    """The Principal who opened this dashboard (inside a Voila kernel started by `edrules serve`).

    Outside `edrules serve` (a notebook run by an analyst or a test) it is None unless the
    environment variable EDRULES_PRINCIPAL holds a Principal as JSON.
    """
    if _CURRENT is not None:
        return _CURRENT
    raw = os.environ.get(ENV_PRINCIPAL)
    return Principal.from_json(raw) if raw else None
