"""Why was this message quarantined? Facts, per-recipient verdicts and a plain-English sentence."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from edrules.backends.runtime import RuntimeEvaluator
from edrules.facts import Action, MessageFacts, Verdict
from edrules.rules.model import EntryKind, FromPolicy, Policy

_VERB = {
    Action.DELIVER: "delivered",
    Action.TAG: "tagged",
    Action.QUARANTINE: "quarantined",
    Action.REJECT: "rejected",
}
# Categories read as "quarantined as forgery"; the others read "delivered: allow entry ...".
_AS_CATEGORY = frozenset({"malware", "bulk", "forgery", "phishing", "spam"})


def sentence(verdict: Verdict) -> str:
    """One plain-English line: 'quarantined as forgery: header From ... under the strict From-policy'."""
    verb = _VERB.get(Action(verdict.action), str(verdict.action))
    if verdict.category in _AS_CATEGORY:
        return f"{verb} as {verdict.category}: {verdict.reason}"
    return f"{verb}: {verdict.reason}"


def forgery_hint(facts: MessageFacts, policy: Policy) -> str | None:
    """The classic complaint: an allow entry names the header From, yet the message is a forgery
    because the mode does not trust that header. Point at the safe fixes, never at relaxed."""
    hf, hfd = facts.header_from, facts.header_from_domain
    named = [
        e for e in policy.allow
        if e.via is None and (
            (e.kind is EntryKind.SENDER and e.value == hf)
            or (e.kind is EntryKind.DOMAIN and hfd is not None
                and (hfd == e.value or (e.subdomains and hfd.endswith("." + e.value))))
        )
    ]
    if not named:
        return None
    e = named[0]
    network = facts.bulk_provider or facts.envelope_from_domain or "its sending network"
    if policy.from_policy is FromPolicy.STRICT:
        return (
            f"allow entry {e.id} names the header From {e.value}, but the strict From-policy matches "
            f"allow entries against the envelope sender only; to trust this brand safely use "
            f"from_policy: aligned (needs DMARC-aligned SPF or DKIM) or a pair entry "
            f"'{e.kind}: {e.value}' with 'via: {network}'"
        )
    return (
        f"allow entry {e.id} names the header From {e.value}, but that header is not authenticated "
        f"for this message, so the entry does not apply"
    )


@dataclass(frozen=True, slots=True)
class Explanation:
    facts: MessageFacts
    policy_name: str
    from_policy: str
    verdicts: tuple[Verdict, ...]
    sentences: tuple[str, ...]
    hint: str | None = None
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy_name,
            "from_policy": self.from_policy,
            # Each verdict in the stable Verdict JSON shape (DESIGN.md), facts included.
            "verdicts": [
                {**v.to_json(self.facts), "explanation": s} for v, s in zip(self.verdicts, self.sentences)
            ],
            "hint": self.hint,
            "warnings": list(self.warnings),
            "facts": _facts_json(self.facts),
        }

    def to_text(self) -> str:
        f = self.facts
        dkim = ", ".join(f"d={s.d} {s.result}" for s in f.dkim) or "none"
        lines = [
            f"policy: {self.policy_name} (from_policy: {self.from_policy})",
            "facts:",
            f"  header From:   {f.header_from or '-'}{'  (INVALID: missing, repeated or several mailboxes)' if f.from_invalid else ''}",
            f"  envelope from: {_sender(f.envelope_from)}",
            f"  client IP:     {f.client_ip or '-'}   HELO: {f.helo or '-'}",
            f"  SPF: {f.spf or '-'} ({f.spf_domain or '-'})   DKIM: {dkim}",
            f"  DMARC: {f.dmarc or '-'} (p={f.dmarc_policy or '-'})   authserv-id: {f.authserv_id or '-'}",
            f"  bulk provider: {f.bulk_provider or '-'}   category: {f.category or '-'}",
        ]
        if not self.verdicts:
            lines.append("no recipients: nothing to decide (pass the envelope recipient with --rcpt)")
        for v, s in zip(self.verdicts, self.sentences):
            lines.append(f"{v.recipient}: {v.action} [{v.rule_id}]")
            lines.append(f"  {s}")
            for t in v.trace:
                lines.append(f"    - {t.step}: {t.detail}")
        if self.hint:
            lines.append(f"hint: {self.hint}")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        return "\n".join(lines)


def _sender(s: str | None) -> str:
    return "-" if s is None else ("<> (null sender)" if s == "" else s)


def _facts_json(f: MessageFacts) -> dict[str, Any]:
    row = f.to_row()
    row["received_at"] = row["received_at"].isoformat() if row["received_at"] else None
    row["recipients"] = list(f.recipients)
    return row


def explain_facts(facts: MessageFacts, policy: Policy, *, now: datetime | None = None,
                  warnings: Sequence[str] = ()) -> Explanation:
    verdicts = tuple(RuntimeEvaluator(policy).evaluate(facts, now))
    hint = None
    if any(v.category == "forgery" for v in verdicts):
        hint = forgery_hint(facts, policy)
    return Explanation(
        facts=facts,
        policy_name=policy.name,
        from_policy=str(policy.from_policy),
        verdicts=verdicts,
        sentences=tuple(sentence(v) for v in verdicts),
        hint=hint,
        warnings=tuple(warnings),
    )


def explain_message(
    data: bytes,
    *,
    source: str = "",
    pack_path: str | Path | None = None,
    pubkey_path: str | Path | None = None,
    allow_unsigned: bool = False,
    trusted_authserv_ids: Sequence[str] = (),
    envelope_from: str | None = None,
    recipients: Sequence[str] | None = None,
    client_ip: str | None = None,
    helo: str | None = None,
    category: str | None = None,
    now: datetime | None = None,
) -> Explanation:
    """Ingest one raw message (headers suffice) and explain it against a pack (or the default
    policy: strict, no entries). Authentication-Results are believed only from the given
    authserv-ids; with none given, ingest's per-message auto-detection applies."""
    from edrules.ingest import TrustConfig, facts_from_bytes  # the analyst side, imported on use

    if pack_path is not None:
        from edrules.pack import load_pack

        policy = load_pack(pack_path, pubkey_path=pubkey_path, allow_unsigned=allow_unsigned).policy
    else:
        policy = Policy(name="default")
    ids = frozenset(trusted_authserv_ids)
    trust = TrustConfig(authserv_ids=ids, auto_detect=not ids)
    extracted = facts_from_bytes(
        data, source=source, trust=trust, envelope_from=envelope_from, recipients=recipients,
        client_ip=client_ip, helo=helo, label=category,
    )
    return explain_facts(extracted.facts, policy, now=now, warnings=extracted.warnings)
