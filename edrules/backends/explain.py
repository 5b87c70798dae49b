"""Why was this message quarantined? Facts, per-recipient verdicts and a plain-English sentence."""

from __future__ import annotations

import ipaddress
import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from edrules.backends.runtime import RuntimeEvaluator
from edrules.derive import DERIVED_COLUMNS, DerivedFacts, derive
from edrules.rules import semantics as sem
from edrules.facts import Action, MessageFacts, Verdict
from edrules.rules.model import Entry, EntryKind, FromPolicy, ListKind, Policy, ScopeKind, ViaKind

_VERB = {
    Action.DELIVER: "delivered",
    Action.TAG: "tagged",
    Action.QUARANTINE: "quarantined",
    Action.REJECT: "rejected",
}
# Report lines fit this many columns (a terminal, a ticket, a code review): long sentences wrap
# onto indented continuation lines. A word is never split (a broken address cannot be copied
# back), so only a single token longer than this still overflows.
WIDTH = 100

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


def _dmatch(d: str | None, e: Entry) -> bool:
    return d is not None and (d == e.value or (e.subdomains and d.endswith("." + e.value)))


def _value_matches(matcher: sem.Matcher, value, e: Entry) -> bool:
    if matcher is sem.Matcher.EXACT:
        return value == e.value
    if matcher is sem.Matcher.DOMAIN:
        return _dmatch(value, e)
    try:
        return ipaddress.ip_address(value) in ipaddress.ip_network(e.value, strict=False)
    except ValueError:
        return False


def _names_sender(e: Entry, f: MessageFacts, d: DerivedFacts) -> str | None:
    """Which identity of the message an entry names, ignoring trust ('header From', ...): the
    first identity (semantics.IDENTITIES order) that its list and form may match under some
    From-policy and whose value matches. A pair names the header From side only."""
    fields = {field for mode in FromPolicy for field in sem.gates_for(mode, ListKind(e.list), sem.entry_form(e))}
    matcher = sem.KIND_MATCHERS[e.kind]
    for ident in sem.IDENTITIES:
        if ident.kind is not e.kind or ident.field not in fields:
            continue
        raw = getattr(d, ident.field) if ident.field in DERIVED_COLUMNS else getattr(f, ident.field)
        if raw and any(_value_matches(matcher, v, e) for v in (raw if ident.many else (raw,))):
            return ident.label
    return None


def _in_scope(e: Entry, rcpt: str) -> bool:
    if e.scope.kind is ScopeKind.GLOBAL:
        return True
    if e.scope.kind is ScopeKind.USER:
        return rcpt == e.scope.value
    return rcpt.rpartition("@")[2] == e.scope.value


def _via_reason(ev: RuntimeEvaluator, f: MessageFacts, d: DerivedFacts, e: Entry) -> str | None:
    """Why a pair's infrastructure side does not hold, or None when it does."""
    if not d.header_ok:
        return ("the header From is refused (DMARC fail under p=quarantine/reject, or an invalid From), "
                "and pairs never trust such a From")
    if ev.pair_proof(e, f, d) is not None:
        return None
    via = e.via
    if via.kind is ViaKind.PROVIDER:
        return (f"via {via.value} not authenticated: no SPF pass for an envelope domain of {via.value} "
                f"(envelope {d.env_domain or '-'}, SPF {f.spf or '-'}) and no passing DKIM d= of it")
    if via.kind is ViaKind.DOMAIN:
        return (f"via {via.value} not authenticated: no SPF pass for an envelope domain under it "
                f"and no passing DKIM d= under it")
    return f"via {via.value}: client IP {f.client_ip or 'unknown'} is outside it"


def near_misses(facts: MessageFacts, policy: Policy, verdicts: Sequence[Verdict],
                now: datetime | None = None) -> tuple[str, ...]:
    """Allow entries that name this message's sender but did not decide a recipient's verdict,
    each with why: the question behind "I allow-listed it and it is still quarantined"."""
    ev = RuntimeEvaluator(policy)
    m = derive(facts)
    today = (now or datetime.now(timezone.utc)).date()
    mode = policy.from_policy
    out: list[str] = []
    for e in policy.allow:
        named = _names_sender(e, facts, m)
        if named is None:
            continue
        missed = [v for v in verdicts if v.rule_id != e.id]
        if not missed:
            continue
        rcpts = {v.recipient for v in missed}
        why: str | None
        if e.expires is not None and e.expires < today:
            why = f"expired on {e.expires.isoformat()}"
        elif not any(_in_scope(e, r) for r in rcpts):
            why = f"scoped to {e.scope}, not to {', '.join(sorted(rcpts))}"
        elif e.via is not None:
            why = _via_reason(ev, facts, m, e)
        elif e.kind is EntryKind.IP:
            why = None
        elif named.startswith("header"):
            if mode is FromPolicy.STRICT:
                why = "the strict From-policy matches allow entries against the envelope sender only"
            elif not m.header_ok:
                why = "the header From is refused (DMARC fail under p=quarantine/reject, or an invalid From)"
            elif mode is FromPolicy.ALIGNED and not m.aligned_auth:
                why = ("under aligned the header From counts only with DMARC-aligned SPF or DKIM, "
                       "and this message has none")
            else:
                why = None
        else:  # envelope identity
            if not m.env_ok:
                why = "the envelope claims the organisation DMARC disowned for this message"
            elif mode is FromPolicy.ALIGNED and not m.spf_pass:
                why = f"under aligned the envelope sender counts only with SPF pass (SPF {facts.spf or '-'})"
            else:
                why = None
        if why is None:
            earlier = sorted({f"{v.rule_id} ({v.category})" for v in missed})
            why = "an earlier step decided first: " + ", ".join(earlier)
        out.append(f"allow entry {e.id} names the {named} {e.value}"
                   + (f" via {e.via.value}" if e.via else "") + f" but did not apply: {why}")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Explanation:
    facts: MessageFacts
    policy_name: str
    from_policy: str
    verdicts: tuple[Verdict, ...]
    sentences: tuple[str, ...]
    hint: str | None = None
    warnings: tuple[str, ...] = ()
    not_applied: tuple[str, ...] = ()  # allow entries naming the sender that did not apply, and why
    now: str | None = None  # evaluation date line

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy_name,
            "from_policy": self.from_policy,
            # Each verdict in the stable Verdict JSON shape (DESIGN.md), facts included.
            "verdicts": [
                {**v.to_json(self.facts), "explanation": s} for v, s in zip(self.verdicts, self.sentences)
            ],
            "hint": self.hint,
            "not_applied": list(self.not_applied),
            "evaluation_date": self.now,
            "warnings": list(self.warnings),
            "facts": _facts_json(self.facts),
        }

    def to_text(self, width: int | None = None) -> str:
        """The report as text: one line per item, or with `width` (the CLI passes WIDTH) every
        line wrapped to fit that many columns, continuations indented under their item."""
        f = self.facts
        dkim = ", ".join(f"d={s.d} {s.result}" for s in f.dkim) or "none"
        invalid = "  (INVALID: missing, repeated or several mailboxes)" if f.from_invalid else ""
        # (text, indent of its continuation lines)
        items: list[tuple[str, int]] = [
            (f"policy: {self.policy_name} (from_policy: {self.from_policy})", 2),
            *([(self.now, 2)] if self.now else []),
            ("facts:", 2),
            (f"  header From:   {f.header_from or '-'}{invalid}", 17),
            (f"  envelope from: {_sender(f.envelope_from)}", 17),
            (f"  client IP:     {f.client_ip or '-'}   HELO: {f.helo or '-'}", 17),
            (f"  SPF: {f.spf or '-'} ({f.spf_domain or '-'})   DKIM: {dkim}", 7),
            (f"  DMARC: {f.dmarc or '-'} (p={f.dmarc_policy or '-'})   authserv-id: {f.authserv_id or '-'}", 9),
            (f"  bulk provider: {f.bulk_provider or '-'}   category: {f.category or '-'}", 17),
        ]
        if not self.verdicts:
            items.append(("no recipients: nothing to decide (pass the envelope recipient with --rcpt)", 2))
        for v, s in zip(self.verdicts, self.sentences):
            items.append((f"{v.recipient}: {v.action} [{v.rule_id}]", 2))
            items.append((f"  {s}", 4))
            for t in v.trace:
                items.append((f"    - {t.step}: {t.detail}", 8))
        items += [(f"not applied: {n}", 2) for n in self.not_applied]
        if self.hint:
            items.append((f"hint: {self.hint}", 2))
        items += [(f"warning: {w}", 2) for w in self.warnings]
        return "\n".join(line for text, indent in items for line in _wrap(text, indent, width))


def _wrap(text: str, indent: int, width: int | None) -> list[str]:
    """One report item as lines of at most `width` columns, continuations indented by `indent`
    (the item's own leading spaces are kept). Words are never split, hyphens never broken at."""
    if width is None or len(text) <= width:
        return [text]
    lead = len(text) - len(text.lstrip(" "))
    lines: list[str] = []
    # A token too long for the item's own indent (an 85-character SES envelope sender under
    # "envelope from:") moves to a shallow continuation line rather than overflow.
    for cont in dict.fromkeys((indent, min(indent, 4))):
        lines = textwrap.wrap(text.lstrip(" "), width, initial_indent=" " * lead, subsequent_indent=" " * cont,
                              break_long_words=False, break_on_hyphens=False) or [text]
        if all(len(line) <= width for line in lines):
            break
    return lines


def _sender(s: str | None) -> str:
    return "-" if s is None else ("<> (null sender)" if s == "" else s)


def _facts_json(f: MessageFacts) -> dict[str, Any]:
    row = f.to_row()
    row["received_at"] = row["received_at"].isoformat() if row["received_at"] else None
    row["recipients"] = list(f.recipients)
    return row


def explain_facts(facts: MessageFacts, policy: Policy, *, now: datetime | None = None,
                  warnings: Sequence[str] = (), now_line: str | None = None) -> Explanation:
    verdicts = tuple(RuntimeEvaluator(policy).evaluate(facts, now))
    when = now_line or (f"evaluation date {now.isoformat(sep=' ')} (given)" if now else
                        f"evaluation date {datetime.now(timezone.utc):%Y-%m-%d} (today, UTC)")
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
        not_applied=near_misses(facts, policy, verdicts, now),
        now=when,
    )


def load_policy(pack_path: str | Path | None, *, pubkey_path: str | Path | None = None,
                allow_unsigned: bool = False) -> Policy:
    """A pack (.json, signature checked as the gateway does) or a rules file (.yaml), or the
    default policy (strict, no entries) without either."""
    if pack_path is None:
        return Policy(name="default")
    if str(pack_path).endswith((".yaml", ".yml")):
        from edrules.rules.parse import parse_rules_file

        return parse_rules_file(pack_path)
    from edrules.pack import load_pack

    return load_pack(pack_path, pubkey_path=pubkey_path, allow_unsigned=allow_unsigned).policy


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

    policy = load_policy(pack_path, pubkey_path=pubkey_path, allow_unsigned=allow_unsigned)
    ids = frozenset(trusted_authserv_ids)
    trust = TrustConfig(authserv_ids=ids, auto_detect=not ids)
    extracted = facts_from_bytes(
        data, source=source, trust=trust, envelope_from=envelope_from, recipients=recipients,
        client_ip=client_ip, helo=helo, label=category,
    )
    return explain_facts(extracted.facts, policy, now=now, warnings=extracted.warnings)
