"""Acceptance scenarios: real corpus messages through ingest, a rules file, the expected verdict.

Each row is one sentence of docs/rules.md made concrete. Messages come from ../shared/corpus
(read in place, never copied); a few rows edit the seed message's header block the way an
attacker's copy of it would differ (no DKIM signature of the brand, DMARC fail), so the same
real headers show both sides of a rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pytest

from edrules.backends.runtime import RuntimeEvaluator
from edrules.facts import MessageFacts
from edrules.ingest import TrustConfig, facts_from_bytes
from edrules.rules.parse import parse_rules

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
SEED = "seed_example/otp-headers-pasted.txt"
SEED_ID = "inbound10.exchangedefender.com"
DMARC_REJECT = "authentication_milter_tdata/example/dmarc_reject.eml"  # SPF and DMARC fail, p=reject
GOOD = "authentication_milter_tdata/example/google_apps_good_cn.eml"  # SPF, DKIM, DMARC pass
SPF_SOFTFAIL = "authentication_milter_tdata/example/google_apps_bad_spf_fail.eml"  # softfail, DKIM fail, DMARC fail p=none
MILTER_ID = "test.module"
NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)

pytestmark = pytest.mark.skipif(not (CORPUS / SEED).exists(), reason=f"corpus not present at {CORPUS}")


# -- edits of the seed header block ---------------------------------------------------------


def _drop_lines(raw: bytes, needle: bytes) -> bytes:
    return b"\n".join(line for line in raw.split(b"\n") if needle not in line)


def no_dmarc_result(raw: bytes) -> bytes:
    """Only DKIM d=someotpsite.cz can vouch for the header From."""
    return _drop_lines(raw, b"dmarc=pass")


def forged_via_ses(raw: bytes) -> bytes:
    """What an attacker with an SES account sends: same From, no signature of the brand, DMARC fails."""
    return _drop_lines(raw, b"header.d=someotpsite.cz").replace(b"dmarc=pass", b"dmarc=fail")


def forged_no_dmarc(raw: bytes) -> bytes:
    """Unauthenticated header From, and no DMARC verdict to refuse it either."""
    return _drop_lines(_drop_lines(raw, b"header.d=someotpsite.cz"), b"dmarc=pass")


# -- attacks on the trust rules (issue 8): what an outside sender can write below the edge ------

_FROM = b"From: <DoNotReply@someotpsite.cz>"
_SPF_LINE = next(line for line in (CORPUS / SEED).read_bytes().split(b"\n") if line.startswith(b"Received-SPF:")) \
    if (CORPUS / SEED).exists() else b""


def _below_edge(raw: bytes, *lines: bytes) -> bytes:
    """Fields written by the sender: they sit under the edge hop, just above its From."""
    return raw.replace(_FROM, b"\n".join(lines) + b"\n" + _FROM, 1)


def forged_edge_below_renamed_gateway(raw: bytes) -> bytes:
    """The gateway's own field names another host than its authserv-id, and the sender wrote
    a Received `by` that id below it, naming the partner's address as the client."""
    raw = raw.replace(b"by inbound10.exchangedefender.com (8.14.7", b"by mta.exchangedefender.com (8.14.7")
    return _below_edge(raw, b"Received: from mail.partner.example ([198.51.100.7]) by "
                            b"inbound10.exchangedefender.com with ESMTP id F1; Thu, 29 Jun 2023 05:22:00 -0400")


def _helo_spf(raw: bytes, spf: bytes) -> bytes:
    """The trusted SPF result is for the HELO (or names no identity) and the sender wrote a
    Return-Path of the partner; the From is the SES forgery (no brand signature, DMARC fail)."""
    raw = forged_via_ses(raw).replace(_SPF_LINE, b"Authentication-Results: inbound10.exchangedefender.com; " + spf)
    return _below_edge(raw, b"Return-Path: <billing@partner.example>")


def helo_spf_and_senders_return_path(raw: bytes) -> bytes:
    return _helo_spf(raw, b"spf=pass smtp.helo=mail.evil.example")


def bare_spf_and_senders_return_path(raw: bytes) -> bytes:
    return _helo_spf(raw, b"spf=pass")


def helo_spf_only(raw: bytes) -> bytes:
    return forged_via_ses(raw).replace(
        _SPF_LINE, b"Authentication-Results: inbound10.exchangedefender.com; spf=pass smtp.helo=mail.evil.example")


def forged_dmarc_below_edge(raw: bytes) -> bytes:
    """The gateway stamped no DMARC result; the sender wrote one of the gateway's id below it."""
    raw = _drop_lines(_drop_lines(raw, b"header.d=someotpsite.cz"), b"dmarc=pass")
    return _below_edge(raw, b"Authentication-Results: inbound10.exchangedefender.com; dmarc=pass header.from=someotpsite.cz")


def dmarc_for_another_from(raw: bytes) -> bytes:
    """The DMARC pass is about another header From domain than the one this message shows."""
    raw = _drop_lines(raw, b"header.d=someotpsite.cz")
    return raw.replace(b"header.from=someotpsite.cz", b"header.from=amazonses.com")


def _from(value: bytes) -> Callable[[bytes], bytes]:
    def edit(raw: bytes) -> bytes:
        return forged_no_dmarc(raw).replace(_FROM, b"From: " + value)
    edit.__doc__ = f"the forged From written as {value!r}"
    return edit


@dataclass(frozen=True)
class Row:
    says: str
    message: str
    rules: str
    expect: tuple[str, str, str]  # action, category, rule_id
    edit: Callable[[bytes], bytes] | None = None
    trusted: str = SEED_ID
    ingest: dict = field(default_factory=dict)


ALLOW_SEED = "allow:\n  - sender: DoNotReply@someotpsite.cz\n"
PAIR = "allow:\n  - {sender: DoNotReply@someotpsite.cz, via: amazonses, id: otp}\n"

ROWS = [
    # -- the seed story, acceptance rows ------------------------------------------------
    Row("the seed case is quarantined as forgery under strict despite the allow entry",
        SEED, ALLOW_SEED, ("quarantine", "forgery", "from_policy:strict")),
    Row("the seed case is delivered under strict with bulk_mailers amazonses: allow",
        SEED, "bulk_mailers: {amazonses: allow}\n" + ALLOW_SEED, ("deliver", "clean", "default")),
    Row("the seed case is delivered under aligned when DKIM d=someotpsite.cz passes (no DMARC result)",
        SEED, "from_policy: aligned\n" + ALLOW_SEED, ("deliver", "allow", "allow[0]"), edit=no_dmarc_result),
    Row("the seed case is delivered under aligned with its DMARC pass",
        SEED, "from_policy: aligned\n" + ALLOW_SEED, ("deliver", "allow", "allow[0]")),
    Row("the seed case is delivered under strict by a via amazonses pair",
        SEED, PAIR, ("deliver", "allow", "otp")),
    Row("the same allow entry does not deliver a forged unauthenticated header From under aligned",
        SEED, "from_policy: aligned\n" + ALLOW_SEED, ("quarantine", "forgery", "from_policy:aligned"),
        edit=forged_via_ses),
    Row("a forged header From without any DMARC verdict is still a forgery under aligned",
        SEED, "from_policy: aligned\n" + ALLOW_SEED, ("quarantine", "forgery", "from_policy:aligned"),
        edit=forged_no_dmarc),
    Row("relaxed lets that unauthenticated forgery through the allow entry (what-if must show this)",
        SEED, "from_policy: relaxed\n" + ALLOW_SEED, ("deliver", "allow", "allow[0]"), edit=forged_no_dmarc),
    Row("a pair refuses the forgery sent through SES because DMARC fails under p=quarantine",
        SEED, PAIR, ("quarantine", "forgery", "from_policy:strict"), edit=forged_via_ses),
    Row("bulk allow does not rescue a From that DMARC disowns: anyone with an SES account could send it",
        SEED, "from_policy: aligned\nbulk_mailers: {ses: allow}\n", ("quarantine", "forgery", "from_policy:aligned"),
        edit=forged_via_ses),
    Row("bulk allow waives the forgery check for an authenticated provider when DMARC does not disown it",
        SEED, "from_policy: aligned\nbulk_mailers: {ses: allow}\n", ("deliver", "clean", "default"),
        edit=forged_no_dmarc),
    Row("Authentication-Results from an untrusted authserv-id are ignored, so the pair cannot match "
        "(and with no trusted hop the envelope is unknown, so strict has nothing to compare)",
        SEED, PAIR, ("deliver", "clean", "default"), trusted="mx.somebody-else.example"),
    Row("untrusted Authentication-Results leave the header From unauthenticated under aligned",
        SEED, "from_policy: aligned\n" + ALLOW_SEED, ("quarantine", "forgery", "from_policy:aligned"),
        trusted="mx.somebody-else.example"),
    # -- each decision step ---------------------------------------------------------------
    Row("step 0: enforced inbound relays reject a client outside them",
        SEED, "inbound: {relays: [192.0.2.0/24], enforce: true}\n" + PAIR,
        ("reject", "inbound", "inbound:relays")),
    Row("step 0: a client inside the enforced relays goes on to the next steps",
        SEED, "inbound: {relays: [54.240.0.0/16], enforce: true}\n" + PAIR, ("deliver", "allow", "otp")),
    Row("step 1: malware is never delivered by an allow entry, in any mode",
        SEED, "from_policy: relaxed\nbulk_mailers: {amazonses: allow}\n" + PAIR + "  - domain: someotpsite.cz\n",
        ("quarantine", "malware", "category:malware"), ingest={"label": "malware"}),
    Row("step 1: malware takes actions.malware",
        SEED, "actions: {malware: reject}\n" + PAIR, ("reject", "malware", "category:malware"),
        ingest={"label": "malware"}),
    Row("step 2: a block entry beats the allow pair",
        SEED, PAIR + "block:\n  - {domain: someotpsite.cz, id: no-otp}\n", ("quarantine", "block", "no-otp")),
    Row("step 2: a block on the client IP applies in strict mode too",
        SEED, "block:\n  - {ip: 54.240.77.0/24}\n", ("quarantine", "block", "block[0]")),
    Row("step 3: an allow entry on the client IP delivers",
        SEED, "allow:\n  - {ip: 54.240.77.69}\n", ("deliver", "allow", "allow[0]")),
    Row("step 4: a blocked bulk network takes actions.bulk before the forgery check",
        SEED, "bulk_mailers: {amazonses: block}\nactions: {bulk: reject}\n", ("reject", "bulk", "bulk:amazonses")),
    Row("step 5 strict: same-organisation From and envelope is not a forgery",
        GOOD, "name: t\n", ("deliver", "clean", "default"), trusted=MILTER_ID),
    Row("step 5 relaxed: DMARC fail under p=reject is a forgery even though the sender is allow-listed",
        DMARC_REJECT, "from_policy: relaxed\nallow:\n  - sender: test@goestheweasel.com\n",
        ("quarantine", "forgery", "from_policy:relaxed"), trusted=MILTER_ID),
    Row("step 5 strict: the same DMARC p=reject failure is a forgery and the allow entry does not apply",
        DMARC_REJECT, "allow:\n  - sender: test@goestheweasel.com\n",
        ("quarantine", "forgery", "from_policy:strict"), trusted=MILTER_ID),
    Row("step 5 aligned: the same message is a forgery under aligned",
        DMARC_REJECT, "from_policy: aligned\nallow:\n  - sender: test@goestheweasel.com\n",
        ("quarantine", "forgery", "from_policy:aligned"), trusted=MILTER_ID),
    Row("strict trusts an allow-listed envelope sender without SPF when DMARC does not disown it (p=none)",
        SPF_SOFTFAIL, "allow:\n  - sender: marc@marcbradshaw.net\n", ("deliver", "allow", "allow[0]"),
        trusted=MILTER_ID),
    Row("aligned does not: the envelope needs SPF pass, the header From an aligned pass",
        SPF_SOFTFAIL, "from_policy: aligned\nallow:\n  - sender: marc@marcbradshaw.net\n",
        ("quarantine", "forgery", "from_policy:aligned"), trusted=MILTER_ID),
    Row("step 6: spam takes actions.spam",
        GOOD, "actions: {spam: tag}\n", ("tag", "spam", "category:spam"), trusted=MILTER_ID,
        ingest={"label": "spam"}),
    Row("step 6: phishing takes actions.phishing",
        GOOD, "from_policy: aligned\nactions: {phishing: reject}\n", ("reject", "phishing", "category:phishing"),
        trusted=MILTER_ID, ingest={"label": "phishing"}),
    Row("step 7: authenticated mail with nothing against it is delivered under aligned",
        GOOD, "from_policy: aligned\n", ("deliver", "clean", "default"), trusted=MILTER_ID),
    # -- scopes and expiry ----------------------------------------------------------------
    Row("a pair scoped to the recipient's domain applies",
        SEED, "allow:\n  - {sender: DoNotReply@someotpsite.cz, via: ses, scope: 'domain:exchangedefenderdemo.com'}\n",
        ("deliver", "allow", "allow[0]")),
    Row("a pair scoped to another user does not apply",
        SEED, "allow:\n  - {sender: DoNotReply@someotpsite.cz, via: ses, scope: 'user:boss@exchangedefenderdemo.com'}\n",
        ("quarantine", "forgery", "from_policy:strict")),
    Row("an expired pair is ignored",
        SEED, "allow:\n  - {sender: DoNotReply@someotpsite.cz, via: ses, expires: 2026-05-31}\n",
        ("quarantine", "forgery", "from_policy:strict")),
    # -- attacks on the trust rules (issue 8) ------------------------------------------------
    Row("a forged Received naming the trusted id below the gateway's field does not pick the client an ip entry allows",
        SEED, "allow:\n  - {ip: 198.51.100.7}\n", ("quarantine", "forgery", "from_policy:strict"),
        edit=forged_edge_below_renamed_gateway),
    Row("a forged Received naming the trusted id does not get a client past enforced inbound relays",
        SEED, "inbound: {relays: [198.51.100.0/24], enforce: true}\n" + PAIR, ("reject", "inbound", "inbound:relays"),
        edit=forged_edge_below_renamed_gateway),
    Row("a forged Received naming the trusted id does not satisfy a via-CIDR pair",
        SEED, "allow:\n  - {sender: DoNotReply@someotpsite.cz, via: 198.51.100.0/24}\n",
        ("quarantine", "forgery", "from_policy:strict"), edit=forged_edge_below_renamed_gateway),
    Row("aligned does not believe the sender's Return-Path when the trusted SPF pass is for the HELO",
        SEED, "from_policy: aligned\nallow:\n  - sender: billing@partner.example\n",
        ("quarantine", "forgery", "from_policy:aligned"), edit=helo_spf_and_senders_return_path),
    Row("nor for a domain entry when the trusted SPF pass names no identity at all",
        SEED, "from_policy: aligned\nallow:\n  - domain: partner.example\n",
        ("quarantine", "forgery", "from_policy:aligned"), edit=bare_spf_and_senders_return_path),
    Row("an SPF pass for the HELO does not count for an envelope sender of another domain",
        SEED, "from_policy: aligned\nallow:\n  - sender: billing@partner.example\n",
        ("quarantine", "forgery", "from_policy:aligned"), edit=helo_spf_only,
        ingest={"mbox_from": "billing@partner.example"}),
    Row("a forged DMARC pass of the gateway's id below the edge hop fills in no result",
        SEED, "from_policy: aligned\n" + ALLOW_SEED, ("quarantine", "forgery", "from_policy:aligned"),
        edit=forged_dmarc_below_edge),
    Row("a DMARC pass whose header.from is another domain does not authenticate this From",
        SEED, "from_policy: aligned\n" + ALLOW_SEED, ("quarantine", "forgery", "from_policy:aligned"),
        edit=dmarc_for_another_from),
    Row("a From that needed folding repair is invalid, so relaxed does not deliver it by the allow entry",
        SEED, "from_policy: relaxed\n" + ALLOW_SEED, ("quarantine", "forgery", "from_policy:relaxed"),
        edit=_from(b"(\n) <DoNotReply@someotpsite.cz>")),
    Row("a From domain with a trailing empty label is invalid, not someotpsite.cz",
        SEED, "from_policy: relaxed\nallow:\n  - domain: someotpsite.cz\n", ("quarantine", "forgery", "from_policy:relaxed"),
        edit=_from(b"<DoNotReply@someotpsite.cz..>")),
    Row("a From domain with a leading dot is invalid, not a subdomain of someotpsite.cz",
        SEED, "from_policy: relaxed\nallow:\n  - {domain: someotpsite.cz, subdomains: true}\n",
        ("quarantine", "forgery", "from_policy:relaxed"), edit=_from(b"DoNotReply@.someotpsite.cz")),
    Row("a From in doubled angle brackets is invalid",
        SEED, "from_policy: relaxed\n" + ALLOW_SEED, ("quarantine", "forgery", "from_policy:relaxed"),
        edit=_from(b"<<DoNotReply@someotpsite.cz>>")),
    Row("a From with an unclosed angle bracket is invalid",
        SEED, "from_policy: relaxed\n" + ALLOW_SEED, ("quarantine", "forgery", "from_policy:relaxed"),
        edit=_from(b"Support <DoNotReply@someotpsite.cz")),
    Row("a From at an address literal cannot escape the strict forgery check",
        SEED, "name: t\n", ("quarantine", "forgery", "from_policy:strict"), edit=_from(b"<ceo@[54.240.77.69]>")),
    Row("a quoted local part that needs no quotes is the same sender to a block entry",
        SEED, "from_policy: relaxed\nblock:\n  - sender: DoNotReply@someotpsite.cz\n", ("quarantine", "block", "block[0]"),
        edit=_from(b'<"DoNotReply"@someotpsite.cz>')),
    # -- issue 13: a block entry matches every mailbox of a malformed From ----------------
    Row("a block entry on the domain of a mailbox in a From with an unquoted comma rejects it as blocked",
        SEED, "actions: {block: reject}\nblock:\n  - domain: stayfriends.de\n", ("reject", "block", "block[0]"),
        edit=_from(b"Ihr Gewinner Team, jehd <service@stayfriends.de>")),
    Row("a block entry on the second mailbox of a From with two mailboxes blocks it",
        SEED, "block:\n  - sender: service@stayfriends.de\n", ("quarantine", "block", "block[0]"),
        edit=_from(b"<DoNotReply@someotpsite.cz>, <service@stayfriends.de>")),
    Row("an allow entry never matches a mailbox of a malformed From",
        SEED, "from_policy: relaxed\nallow:\n  - domain: stayfriends.de\n", ("quarantine", "forgery", "from_policy:relaxed"),
        edit=_from(b"Ihr Gewinner Team, jehd <service@stayfriends.de>")),
    # -- issue 13: no envelope sender known (no MAIL FROM, Return-Path or From_ line) -------
    Row("with no envelope sender known, strict cannot call the SES forgery a forgery (reported as blind spot)",
        SEED, "name: t\n", ("deliver", "clean", "default"),
        edit=lambda raw: _drop_lines(forged_no_dmarc(raw), b"Received-SPF:")),
]


def _facts(row: Row) -> MessageFacts:
    raw = (CORPUS / row.message).read_bytes()
    if row.edit is not None:
        edited = row.edit(raw)
        assert edited != raw, "the edit must change the message"
        raw = edited
    trust = TrustConfig(authserv_ids=frozenset({row.trusted}), auto_detect=False)
    return facts_from_bytes(raw, source=row.message, trust=trust, **row.ingest).facts


@pytest.mark.parametrize("row", ROWS, ids=[r.says for r in ROWS])
def test_scenario(row: Row):
    f = _facts(row)
    assert f.recipients, "every scenario message has a recipient"
    verdicts = RuntimeEvaluator(parse_rules(row.rules)).evaluate(f, NOW)
    got = [(str(v.action), v.category, v.rule_id) for v in verdicts]
    assert got == [row.expect] * len(f.recipients), [v.reason for v in verdicts]


def test_ingest_reads_the_seed_facts_the_scenarios_rely_on():
    f = _facts(ROWS[0])
    assert (f.header_from, f.envelope_from_domain, f.client_ip, f.spf, f.dmarc, f.bulk_provider) == (
        "donotreply@someotpsite.cz", "amazonses.com", "54.240.77.69", "pass", "pass", "amazonses")
    assert {(s.d, s.result) for s in f.dkim} == {("someotpsite.cz", "pass"), ("amazonses.com", "pass")}
    assert f.recipients == ("demo@exchangedefenderdemo.com",)
    forged = _facts(ROWS[5])
    assert (forged.dmarc, [s.d for s in forged.dkim]) == ("fail", ["amazonses.com"])


def test_the_scenario_table_covers_every_decision_category_and_from_policy_mode():
    categories = {r.expect[1] for r in ROWS}
    assert categories == {"inbound", "malware", "block", "allow", "bulk", "forgery", "phishing", "spam", "clean"}
    modes = {r.expect[2] for r in ROWS if r.expect[1] == "forgery"}
    assert modes == {"from_policy:strict", "from_policy:aligned", "from_policy:relaxed"}


def test_the_sql_backend_gives_the_same_verdict_for_every_scenario():
    import duckdb

    con = duckdb.connect()
    for i, row in enumerate(ROWS):
        f = _facts(row)
        got = [v[:3] for v in _sql_verdicts(con, f, parse_rules(row.rules))]
        # On a mismatch, compare the SQL with docs/rules.md "Semantics" (env_ok, and NOT header_ok
        # in every mode's forgery, were added there for issue 3).
        assert got == [row.expect] * len(f.recipients), (i, row.says)


def _sql_verdicts(con, f: MessageFacts, policy) -> list[tuple[str, str, str, str]]:
    """(action, category, rule_id, reason) per recipient of `f`, in its order, from the SQL backend."""
    from edrules.backends.sql import evaluate_sql, facts_tables

    messages, recipients = facts_tables([f])
    con.register("messages", messages)
    con.register("recipients", recipients)
    try:
        by_rcpt = {r["recipient"]: (r["action"], r["category"], r["rule_id"], r["reason"])
                   for r in evaluate_sql(con, policy, now=NOW).to_pylist()}
    finally:
        con.unregister("messages")
        con.unregister("recipients")
    return [by_rcpt[r] for r in f.recipients]


GOLDEN = Path(__file__).parent / "golden" / "scenario_reasons.txt"


def _golden_lines() -> list[str]:
    """One line per scenario and recipient: the verdict and its reason, from both backends."""
    import duckdb

    con = duckdb.connect()
    lines = []
    for row in ROWS:
        f = _facts(row)
        policy = parse_rules(row.rules)
        runtime = [(str(v.action), v.category, v.rule_id, v.reason) for v in RuntimeEvaluator(policy).evaluate(f, NOW)]
        assert _sql_verdicts(con, f, policy) == runtime, row.says
        lines += [f"{row.says} | {a} {c} {rid} | {reason}" for a, c, rid, reason in runtime]
    return lines


def test_reason_texts_of_the_scenario_table_are_pinned_by_the_golden_file_in_both_backends():
    """tests/golden/scenario_reasons.txt pins every reason a user reads; a change of wording is a
    reviewed diff of that file (EDRULES_UPDATE_GOLDEN=1 rewrites it)."""
    import os

    lines = _golden_lines()
    if os.environ.get("EDRULES_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text("\n".join(lines) + "\n")
    want = GOLDEN.read_text().splitlines()
    assert lines == want, "\n".join(f"- {w}\n+ {g}" for w, g in zip(want, lines) if w != g)


_VERBS = {"deliver": "delivered", "tag": "tagged", "quarantine": "quarantined", "reject": "rejected"}


@pytest.mark.parametrize("row", ROWS, ids=[r.says for r in ROWS])
def test_explain_gives_one_plain_english_sentence_per_recipient(row: Row):
    from edrules.backends.explain import explain_facts

    exp = explain_facts(_facts(row), parse_rules(row.rules), now=NOW)
    action, category, rule_id = row.expect
    (sentence,) = exp.sentences
    as_category = category in ("malware", "bulk", "forgery", "phishing", "spam")
    assert sentence.startswith(f"{_VERBS[action]} as {category}: " if as_category else f"{_VERBS[action]}: ")
    if category in ("allow", "block"):
        assert f"entry {rule_id} " in sentence
    text = exp.to_text()
    assert sentence in text and rule_id in text


def test_explain_names_the_safe_fix_when_an_allow_entry_names_a_header_from_strict_ignores():
    from edrules.backends.explain import explain_facts

    seed = _facts(ROWS[0])
    exp = explain_facts(seed, parse_rules(ALLOW_SEED), now=NOW)
    assert exp.sentences == ("quarantined as forgery: header From someotpsite.cz does not match the "
                             "envelope sender amazonses.com under the strict From-policy",)
    assert "from_policy: aligned" in exp.hint and "'via: amazonses'" in exp.hint
    assert explain_facts(seed, parse_rules("name: t"), now=NOW).hint is None
    forged = _facts(ROWS[5])
    exp = explain_facts(forged, parse_rules("from_policy: aligned\n" + ALLOW_SEED), now=NOW)
    assert "not authenticated for this message" in exp.hint
