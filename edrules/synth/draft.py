"""A message before it exists: the sender's content, the SMTP route, the signers, the label."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from edrules.facts import Category
from edrules.synth.mime import Content


@dataclass(frozen=True, slots=True)
class Route:
    """The SMTP session as the gateway saw it."""

    envelope_from: str
    helo: str
    ip: str
    rdns: str | None


@dataclass(frozen=True, slots=True)
class Draft:
    scenario: str
    label: Category
    sent: datetime  # UTC, when the sender's system wrote Date
    tz_minutes: int
    route: Route
    recipients: tuple[str, ...]
    content: Content
    signers: tuple[tuple[str, str], ...]  # (d, s), innermost (first applied) first
    message_id: str
    # text appended after the first signature (a mailing-list footer breaks the author's DKIM)
    footer: str | None = None
    resign: tuple[tuple[str, str], ...] = ()
    list_headers: tuple[tuple[str, str], ...] = ()
