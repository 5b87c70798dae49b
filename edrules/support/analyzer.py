"""Header analyzer: why was this pasted header block (or .eml) quarantined, in plain English, and the safe fix.

Facts come from the same extraction the gateway uses (edrules.ingest.extract.facts_from_bytes),
verdicts from the runtime backend under the domain's current pack (edrules.backends.explain), and
fixes from the workbench's suggestions over the domain's history. Nothing here re-implements a
rule: the explanation is read off the verdict, its trace and the evaluator's answer to "and
under another From-policy?".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Sequence

from edrules.errors import EdrulesError, Location
from edrules.facts import Action, MessageFacts, Verdict
from edrules.backends.explain import Explanation, explain_facts
from edrules.rules.model import FromPolicy, Policy

if TYPE_CHECKING:
    import pandas as pd

    from edrules.support.site import Site
    from edrules.workbench import Workbench

# A header block from a ticket is a few KB; even a message with hundreds of Received lines is
# well under this. More is not a header block, and parsing it would only tie up the kernel.
MAX_HEADER_BYTES = 1 << 20
# An uploaded .eml may carry attachments; only its header part is read, but we do not accept
# arbitrarily large uploads either.
MAX_UPLOAD_BYTES = 25 << 20
_HEADER_LINE = re.compile(rb"^[!-9;-~]{1,100}:", re.MULTILINE)
_VERB = {Action.DELIVER: "delivers", Action.TAG: "delivers (tagged)", Action.QUARANTINE: "quarantines",
         Action.REJECT: "rejects"}


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB"


def header_part(data: bytes, source: str = "input") -> bytes:
    """The header section of `data`, or an EdrulesError saying in one line why it is not one."""
    where = Location(source)
    if len(data) > MAX_UPLOAD_BYTES:
        raise EdrulesError(f"the input is {_mb(len(data))}; the analyzer accepts at most {_mb(MAX_UPLOAD_BYTES)}", where)
    if not data.strip():
        raise EdrulesError("the input is empty: paste a header block or upload an .eml file", where)
    cut = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
    head = data[: min(cut)] if cut else data
    if len(head) > MAX_HEADER_BYTES:
        raise EdrulesError(
            f"the header block is {_mb(len(head))}; real headers are a few KB and the analyzer reads at most "
            f"{_mb(MAX_HEADER_BYTES)}: paste only the headers of the message", where)
    control = sum(1 for b in head if b < 0x20 and b not in (0x09, 0x0A, 0x0D)) + head.count(0x7F)
    if b"\x00" in head or control > max(2, len(head) // 200):
        raise EdrulesError(
            f"this is binary data, not e-mail headers ({control} control bytes in {len(head)} bytes): "
            f"upload the .eml file or paste the header text", where)
    lines = _HEADER_LINE.findall(head)
    if not lines:
        raise EdrulesError(
            "no header lines found (lines like 'From: ...', 'Received: ...'): paste the message's "
            "header block, not its body", where)
    names = {ln[:-1].lower() for ln in lines}
    if not names & {b"from", b"received", b"authentication-results", b"received-spf", b"return-path", b"to"}:
        raise EdrulesError(
            "no mail headers found (no From, To, Received or Authentication-Results line): paste the "
            "message's header block", where)
    return data


@dataclass(frozen=True, slots=True)
class RecipientAnswer:
    """One recipient's verdict in words, and what the other From-policies would do with it."""

    verdict: Verdict
    sentence: str  # the one-liner of edrules explain
    plain: str  # the support-desk paragraph
    alternatives: dict[str, str]  # from_policy -> action under it (same pack otherwise)


@dataclass(frozen=True, slots=True)
class Analysis:
    domain: str
    policy_name: str
    from_policy: str
    explanation: Explanation
    answers: tuple[RecipientAnswer, ...]
    suggestions: Any = None  # edrules.workbench.Suggestions, or None
    suggestion_note: str = ""
    history: "pd.DataFrame | None" = field(default=None, repr=False)  # similar messages found

    @property
    def recommended(self):
        """The first-ranked candidate that is safe and durable (still matches the next such
        message): what support proposes. A non-durable fix, e.g. one VERP envelope address,
        delivers the history but not tomorrow's mail."""
        if self.suggestions is None:
            return None
        return next((c for c in self.suggestions.candidates if c.safe and c.durable and c.delivers), None)

    @property
    def facts(self) -> MessageFacts:
        return self.explanation.facts

    def fact_rows(self) -> list[tuple[str, str]]:
        f = self.facts
        dkim = ", ".join(f"d={s.d} {s.result}" for s in f.dkim) or "none"
        return [
            ("header From", f.header_from or ("(missing or invalid)" if f.from_invalid else "-")),
            ("envelope sender", "-" if f.envelope_from is None else (f.envelope_from or "<> (null sender)")),
            ("client IP / HELO", f"{f.client_ip or '-'} / {f.helo or '-'}"),
            ("SPF", f"{f.spf or '-'} ({f.spf_domain or '-'})"),
            ("DKIM", dkim),
            ("DMARC", f"{f.dmarc or '-'} (p={f.dmarc_policy or '-'})"),
            ("trusted authserv-id", f.authserv_id or "- (no Authentication-Results from a trusted host)"),
            ("bulk provider", f.bulk_provider or "-"),
            ("scanner category", f.category or "-"),
            ("subject", f.subject or "-"),
            ("recipients", ", ".join(f.recipients) or "-"),
        ]


def _org(domain: str | None) -> str:
    return domain or "(unknown)"


def plain_english(facts: MessageFacts, verdict: Verdict, policy: Policy, hint: str | None,
                  alternatives: dict[str, str]) -> str:
    """The paragraph support reads to the customer. Built from the verdict's category and the
    facts it used; the 'what would change it' part is the evaluator's own answer."""
    verb = _VERB.get(Action(verdict.action), str(verdict.action))
    who = verdict.recipient
    mode = policy.from_policy.value
    env, hdr = facts.envelope_from_org or facts.envelope_from_domain, facts.header_from_org or facts.header_from_domain
    cat = verdict.category
    if cat == "forgery" and facts.from_invalid:
        text = (f"The message has no single valid From address (it is missing, repeated or lists several "
                f"mailboxes), which is treated as forged, so the gateway {verb} it for {who}.")
    elif cat == "forgery" and policy.from_policy is FromPolicy.STRICT:
        text = (f"The envelope sender is {_org(env)} while the From says {_org(hdr)}, and your From-policy is "
                f"strict, so the gateway treats the From as forged and {verb} the message for {who}.")
    elif cat == "forgery":
        text = (f"The From says {_org(hdr)}, but nothing authenticates that domain for this message "
                f"(DMARC {facts.dmarc or 'unknown'}, SPF {facts.spf or 'unknown'} for {_org(env)}, no passing "
                f"DKIM signature of {_org(hdr)}), and your From-policy is {mode}, so the gateway treats the From "
                f"as forged and {verb} the message for {who}.")
    elif cat == "malware":
        text = (f"The scanner found malware in this message, so the gateway {verb} it for {who}. No allow "
                f"entry overrides malware, and only a domain admin or the service provider may release it.")
    elif cat == "block":
        text = f"A block entry matches this message ({verdict.reason}), so the gateway {verb} it for {who}."
    elif cat == "allow":
        text = f"An allow entry matches an identity your {mode} From-policy trusts ({verdict.reason}), so the gateway {verb} it for {who}."
    elif cat == "bulk":
        text = (f"The message was sent through {facts.bulk_provider or 'a bulk-mail network'}, which your "
                f"bulk-mailer policy blocks, so the gateway {verb} it for {who}.")
    elif cat in ("spam", "phishing"):
        score = f" (score {facts.score:g})" if facts.score is not None else ""
        text = f"The upstream scanner classified this message as {cat}{score}, so the gateway {verb} it for {who}."
    elif cat == "inbound":
        text = (f"The message did not arrive through one of your inbound relays ({facts.client_ip or 'unknown IP'}) "
                f"and inbound relay enforcement is on, so the gateway {verb} it for {who}.")
    else:
        text = f"Nothing in the policy stops this message, so the gateway {verb} it for {who}."
    if cat == "forgery":
        if facts.dmarc == "pass" or any(d.result == "pass" and d.org and d.org == hdr for d in facts.dkim):
            text += (f" The message does authenticate as {_org(hdr)} (DMARC {facts.dmarc or '-'}"
                     f"{', DKIM d=' + hdr if any(d.org == hdr and d.result == 'pass' for d in facts.dkim) else ''}),"
                     f" so it is very likely genuine.")
        others = [f"{m}: {a}" for m, a in alternatives.items() if m != mode]
        if others:
            text += " With the same entries, other From-policies would give " + ", ".join(others) + "."
    if hint:
        text += " " + hint[0].upper() + hint[1:] + "."
    return text


def _alternatives(facts: MessageFacts, policy: Policy, recipient: str, now: datetime | None) -> dict[str, str]:
    from edrules.backends.runtime import RuntimeEvaluator

    out = {}
    one = replace(facts, recipients=(recipient,))
    for mode in FromPolicy:
        v = RuntimeEvaluator(replace(policy, from_policy=mode)).evaluate(one, now)
        out[mode.value] = str(v[0].action) if v else "-"
    return out


def analyze_bytes(data: bytes, policy: Policy, *, domain: str = "", source: str = "pasted headers",
                  trusted_authserv: Sequence[str] = (), trusted_relays: Sequence[str] = (),
                  recipients: Sequence[str] | None = None, now: datetime | None = None) -> Analysis:
    """Facts, verdicts and plain-English answers for one header block under `policy`.

    Authentication-Results are believed only from `trusted_authserv` (the domain's gateway);
    with none configured nothing is believed, so a pasted forged A-R header changes nothing."""
    from edrules.ingest import TrustConfig, facts_from_bytes

    raw = header_part(data, source)
    trust = TrustConfig(authserv_ids=frozenset(trusted_authserv), relays=tuple(trusted_relays), auto_detect=False)
    try:
        extracted = facts_from_bytes(raw, source=source, trust=trust, recipients=recipients)
    except EdrulesError:
        raise
    except Exception as exc:  # a parser corner we did not foresee must still read as one line
        raise EdrulesError(f"cannot read these headers: {exc.__class__.__name__}: {exc}", Location(source)) from None
    facts = extracted.facts
    explanation = explain_facts(facts, policy, now=now, warnings=extracted.warnings)
    answers = []
    for v, s in zip(explanation.verdicts, explanation.sentences):
        alts = _alternatives(facts, policy, v.recipient, now)
        answers.append(RecipientAnswer(v, s, plain_english(facts, v, policy, explanation.hint, alts), alts))
    return Analysis(domain=domain, policy_name=policy.name, from_policy=policy.from_policy.value,
                    explanation=explanation, answers=tuple(answers))


# Messages in the domain's history "like this one": the same header From to the same
# recipients, else the same From anywhere in the domain. The suggestions are measured on
# these, so a fix is ranked by what it would have done to the domain's real mail.
_SIMILAR_SQL = """
SELECT f.msg_key, r.recipient, f.received_at, f.header_from, f.envelope_from, f.bulk_provider, f.label
FROM wb_facts f JOIN recipients r ON r.dataset = f.dataset AND r.msg_key = f.msg_key
WHERE f.dataset = $ds AND f.header_from = $hf AND r.recipient_domain = $dom {rcpt}
ORDER BY f.received_at NULLS LAST, f.msg_key, r.recipient
"""


def similar_history(wb: "Workbench", facts: MessageFacts, domain: str) -> "pd.DataFrame":
    import pandas as pd

    if not facts.header_from or wb.dataset is None:
        return pd.DataFrame(columns=["msg_key", "recipient"])
    params = {"ds": wb.dataset, "hf": facts.header_from, "dom": domain}
    mine = [r for r in facts.recipients if r.endswith("@" + domain)]
    if mine:
        df = wb.sql(_SIMILAR_SQL.format(rcpt="AND r.recipient IN (SELECT unnest($rcpts))"), {**params, "rcpts": mine})
        if len(df):
            return df
    return wb.sql(_SIMILAR_SQL.format(rcpt=""), params)


def add_suggestions(analysis: Analysis, wb: "Workbench", policy: Policy) -> Analysis:
    """The workbench's ranked safe fixes, measured on the domain's history of similar mail that
    the current pack does not deliver."""
    if not any(a.verdict.action in (Action.QUARANTINE, Action.REJECT) for a in analysis.answers):
        return replace(analysis, suggestion_note="every recipient gets this message: nothing to fix")
    if any(a.verdict.category == "malware" for a in analysis.answers):
        return replace(analysis, suggestion_note="malware is never allow-listed: no fix is suggested")
    history = similar_history(wb, analysis.facts, analysis.domain)
    if not len(history):
        return replace(analysis, history=history, suggestion_note=(
            f"no mail from {analysis.facts.header_from or 'this sender'} to {analysis.domain} in the domain's "
            f"history: suggestions are measured on history, so there is nothing to rank yet"))
    verdicts = wb.evaluate(policy)
    held = verdicts[verdicts["action"].isin(["quarantine", "reject"])][["msg_key", "recipient"]]
    targets = history.merge(held, on=["msg_key", "recipient"])
    if not len(targets):
        return replace(analysis, history=history, suggestion_note=(
            f"the current pack already delivers the {len(history)} similar messages in the domain's history"))
    suggestions = wb.suggest(targets[["msg_key", "recipient"]].drop_duplicates(), policy)
    return replace(analysis, history=history, suggestions=suggestions, suggestion_note=(
        f"measured on {len(targets)} held recipient rows from {analysis.facts.header_from} in the "
        f"{analysis.domain} history ({wb.dataset}); blast radius = other mail each change would newly deliver"))


def analyze_for_domain(data: bytes, site: "Site", domain: str, *, source: str = "pasted headers",
                       workbench: "Workbench | None" = None, now: datetime | None = None) -> Analysis:
    """The analyzer page's one call: the domain's current pack and trust, plus suggestions."""
    cfg = site.config(domain)
    policy = site.current_policy(domain)
    analysis = analyze_bytes(data, policy, domain=cfg.domain, source=source, trusted_authserv=cfg.trusted_authserv,
                             trusted_relays=cfg.trusted_relays, now=now)
    if workbench is None and site.dataset_db is not None and cfg.dataset and site.dataset_db.exists():
        from edrules.workbench import Workbench

        workbench = Workbench(site.dataset_db, dataset=cfg.dataset)
    if workbench is None:
        return replace(analysis, suggestion_note="this domain has no history dataset configured: no suggestions")
    return add_suggestions(analysis, workbench, policy)
