"""The typed records every layer passes along: message facts in, verdicts out.

`MessageFacts` fields carry the same names as the columns of the DuckDB `messages` table
(see edrules/schema.py and docs/datasets.md), so a row converts to facts with
`MessageFacts.from_row(row, recipients)` and both rule backends see identical inputs.
Values are normalised at extraction (edrules.domains); no later layer lower-cases again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, Mapping


class AuthResult(StrEnum):
    """RFC 8601 result words (SPF, DKIM, DMARC, ARC)."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"
    POLICY = "policy"


class Category(StrEnum):
    """Upstream classification of a message (dataset label, quarantine record, scanner header)."""

    MALWARE = "malware"
    PHISHING = "phishing"
    SPAM = "spam"
    HAM = "ham"


class Action(StrEnum):
    DELIVER = "deliver"
    TAG = "tag"
    QUARANTINE = "quarantine"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class DkimSignatureResult:
    """One DKIM signature's outcome: signing domain d=, selector s=, result, org domain of d=."""

    d: str | None
    s: str | None
    result: str
    org: str | None = None


_COLUMNS: dict[type, frozenset[str]] = {}


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What rules see about one message. Missing facts are None; a missing fact makes a
    condition false in both backends.

    envelope_from: '' is the null sender `<>`; None means unknown.
    """

    msg_key: str
    dataset: str = "default"
    source: str = ""
    received_at: datetime | None = None
    message_id: str | None = None
    subject: str | None = None
    header_from: str | None = None
    header_from_domain: str | None = None
    header_from_org: str | None = None
    from_display: str | None = None
    from_invalid: bool = False
    # Every mailbox address the From field(s) name, normalised, in order: [header_from] for a
    # valid From; what a lenient reading finds in a malformed one (block entries match them).
    from_mailboxes: tuple[str, ...] = ()
    reply_to: str | None = None
    envelope_from: str | None = None
    envelope_from_domain: str | None = None
    envelope_from_org: str | None = None
    client_ip: str | None = None
    helo: str | None = None
    helo_org: str | None = None
    spf: str | None = None
    spf_domain: str | None = None
    dkim: tuple[DkimSignatureResult, ...] = ()
    dmarc: str | None = None
    dmarc_policy: str | None = None
    authserv_id: str | None = None
    bulk_provider: str | None = None
    list_unsubscribe: str | None = None
    category: str | None = None
    score: float | None = None
    size: int | None = None
    quarantine_state: str | None = None
    recipients: tuple[str, ...] = field(default=())

    @classmethod
    def column_names(cls) -> list[str]:
        """Columns of the `messages` table (everything but recipients)."""
        return [f.name for f in fields(cls) if f.name != "recipients"]

    @classmethod
    def from_row(cls, row: Mapping[str, Any], recipients: tuple[str, ...] = ()) -> "MessageFacts":
        """Build facts from a `messages` row (dict); unknown keys are ignored."""
        names = _COLUMNS.get(cls)
        if names is None:  # fields() walks the class each call: read once (upgrade and replay read millions)
            names = _COLUMNS[cls] = frozenset(cls.column_names())
        kwargs = {k: v for k, v in row.items() if k in names}
        dk = kwargs.get("dkim") or ()
        kwargs["dkim"] = tuple(
            x if isinstance(x, DkimSignatureResult) else DkimSignatureResult(**x) for x in dk
        )
        if kwargs.get("from_invalid") is None:
            kwargs["from_invalid"] = False
        kwargs["from_mailboxes"] = tuple(kwargs.get("from_mailboxes") or ())
        return cls(**kwargs, recipients=tuple(recipients))

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row.pop("recipients")
        return row


@dataclass(frozen=True, slots=True)
class TraceStep:
    """One piece of evidence a decision used, e.g. ('from_policy', 'strict: someotpsite.cz != amazonses.com')."""

    step: str
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision for one recipient of one message, with why.

    category is the decision category that chose the action: malware, block, allow,
    bulk, forgery, phishing, spam, or clean.
    """

    recipient: str
    action: Action
    category: str
    reason: str
    rule_id: str | None
    trace: tuple[TraceStep, ...] = ()

    def to_json(self, facts: MessageFacts | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action": str(self.action),
            "category": self.category,
            "reason": self.reason,
            "rule_id": self.rule_id,
            "recipient": self.recipient,
            "trace": [{"step": t.step, "detail": t.detail} for t in self.trace],
        }
        if facts is not None:
            f = facts.to_row()
            f["received_at"] = f["received_at"].isoformat() if f["received_at"] else None
            f["recipients"] = list(facts.recipients)
            out["facts"] = f
        return out
