"""The tenant's current filter policy, applied per recipient to decide what it quarantined.

strict From-policy (a header From whose organisational domain differs from the envelope
sender's is a forgery) plus one user-scope allow entry for DoNotReply@someotpsite.cz. Under
strict, allow entries match the envelope sender, which is why the OTP mails stay
quarantined: this is the complaint the demo is built around.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from edrules.domains import address_domain, normalize_address, normalize_domain, org_domain
from edrules.facts import Action, Category


class Reason(StrEnum):
    MALWARE = "malware"
    ALLOW = "allow"
    FORGERY = "forgery"
    PHISHING = "phishing"
    SPAM = "spam"
    CLEAN = "clean"


@dataclass(frozen=True, slots=True)
class AllowEntry:
    recipient: str  # user scope
    sender: str  # address, matched against the envelope sender under strict


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: Reason


def decide(label: Category, header_from: str | None, envelope_from: str, helo: str, recipient: str,
           allow: tuple[AllowEntry, ...]) -> Decision:
    """DESIGN.md decision order: malware, allow, forgery, category, deliver (no blocks, no bulk policy)."""
    if label is Category.MALWARE:
        return Decision(Action.QUARANTINE, Reason.MALWARE)
    env = normalize_address(envelope_from)
    if any(e.recipient == recipient and normalize_address(e.sender) == env for e in allow):
        return Decision(Action.DELIVER, Reason.ALLOW)
    if is_forgery(header_from, env, helo):
        return Decision(Action.QUARANTINE, Reason.FORGERY)
    if label is Category.PHISHING:
        return Decision(Action.QUARANTINE, Reason.PHISHING)
    if label is Category.SPAM:
        return Decision(Action.QUARANTINE, Reason.SPAM)
    return Decision(Action.DELIVER, Reason.CLEAN)


def is_forgery(header_from: str | None, envelope_from: str | None, helo: str) -> bool:
    """strict: organisational domains of header From and envelope sender differ (with the null
    sender <> the HELO name stands in for the envelope domain)."""
    hf = org_domain(address_domain(normalize_address(header_from)))
    ef = org_domain(address_domain(normalize_address(envelope_from)) if envelope_from else normalize_domain(helo))
    return hf != ef
