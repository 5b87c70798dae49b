"""The policy-dependent rule semantics as tables: docs/rules.md "Entry matching" and
"Decision order" as rows both backends are driven by.

The policy-independent facts these rows read (header_ok, env_ok, aligned_auth, ...) are
columns computed once by edrules/derive.py. The backends keep their own fast shapes (hash
buckets and interval indices in memory; hash joins in DuckDB) and only implement the three
matchers (exact, domain suffix, CIDR), the suffix checks and the template renderer; which
identity an entry may match and when, forgery per mode, rule ids and every reason text come
from here, so both produce the same verdict and the same words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from enum import StrEnum
from typing import Callable, Mapping

from edrules.rules.model import Entry, EntryKind, FromPolicy, ListKind, ProviderDef, ScopeKind, ViaKind


class Matcher(StrEnum):
    """How an entry's value is compared with a message value."""

    EXACT = "exact"  # equal strings
    DOMAIN = "domain"  # equal, or label-wise under it with `subdomains: true`
    CIDR = "cidr"  # the address lies in the network


class Role(StrEnum):
    """Where in the message an identity comes from; gates are per role."""

    ENVELOPE = "envelope"
    HEADER = "header"
    MAILBOX = "mailbox"  # any mailbox of a malformed From field
    NETWORK = "network"


# Entry kind -> matcher.
KIND_MATCHERS: dict[EntryKind, Matcher] = {
    EntryKind.SENDER: Matcher.EXACT,
    EntryKind.DOMAIN: Matcher.DOMAIN,
    EntryKind.IP: Matcher.CIDR,
}


@dataclass(frozen=True, slots=True)
class Identity:
    """A message value an entry kind is compared with: a `messages` column (a list column when
    `many`), its role, and how a reason names it. Table order breaks ties: when one entry
    matches two identities, the earlier row names the match."""

    kind: EntryKind
    role: Role
    field: str
    label: str
    many: bool = False


IDENTITIES: tuple[Identity, ...] = (
    Identity(EntryKind.SENDER, Role.ENVELOPE, "envelope_from", "envelope sender"),
    Identity(EntryKind.SENDER, Role.HEADER, "header_from", "header From"),
    Identity(EntryKind.SENDER, Role.MAILBOX, "from_mailboxes", "From mailbox", many=True),
    Identity(EntryKind.DOMAIN, Role.ENVELOPE, "envelope_from_domain", "envelope sender domain"),
    Identity(EntryKind.DOMAIN, Role.HEADER, "header_from_domain", "header From domain"),
    Identity(EntryKind.DOMAIN, Role.MAILBOX, "from_domains", "From mailbox domain", many=True),
    Identity(EntryKind.IP, Role.NETWORK, "client_ip", "client IP"),
)

ALWAYS = "always"  # the gate that always holds
VIA = "via"  # header_ok and the pair's infrastructure is authenticated (a proof exists)


@dataclass(frozen=True, slots=True)
class Gate:
    """When an entry of `list` and `form` ('plain', or 'pair' = with `via`) may match an
    identity of `role`, per From-policy: a boolean column of the message (derived or a fact),
    ALWAYS, VIA, or None (never)."""

    list: ListKind
    form: str
    role: Role
    strict: str | None
    aligned: str | None
    relaxed: str | None

    def under(self, mode: FromPolicy) -> str | None:
        return getattr(self, str(mode))


# docs/rules.md "Identities an allow entry may match": blocks match unauthenticated identities
# in every mode (and every mailbox of a malformed From); pairs the header From side when
# header_ok holds and the infrastructure is proven; allow entries what the mode trusts.
GATES: tuple[Gate, ...] = (
    #     list            form     role            strict      aligned           relaxed
    Gate(ListKind.ALLOW, "plain", Role.ENVELOPE, "env_ok", "env_spf_ok", "env_ok"),
    Gate(ListKind.ALLOW, "plain", Role.HEADER, None, "header_aligned", "header_ok"),
    Gate(ListKind.ALLOW, "plain", Role.NETWORK, ALWAYS, ALWAYS, ALWAYS),
    Gate(ListKind.BLOCK, "plain", Role.ENVELOPE, ALWAYS, ALWAYS, ALWAYS),
    Gate(ListKind.BLOCK, "plain", Role.HEADER, ALWAYS, ALWAYS, ALWAYS),
    Gate(ListKind.BLOCK, "plain", Role.MAILBOX, "from_invalid", "from_invalid", "from_invalid"),
    Gate(ListKind.BLOCK, "plain", Role.NETWORK, ALWAYS, ALWAYS, ALWAYS),
    Gate(ListKind.ALLOW, "pair", Role.HEADER, VIA, VIA, VIA),
    Gate(ListKind.BLOCK, "pair", Role.HEADER, VIA, VIA, VIA),
)


def entry_form(e: Entry) -> str:
    return "pair" if e.via is not None else "plain"


def gates_for(mode: FromPolicy, lst: ListKind, form: str) -> dict[str, str]:
    """Identity field -> gate, for an entry of this list and form under `mode`."""
    by_role = {g.role: g.under(mode) for g in GATES if g.list is lst and g.form == form}
    return {i.field: by_role[i.role] for i in IDENTITIES if by_role.get(i.role) is not None}


def match_rows(mode: FromPolicy) -> list[tuple[str, str, str, str, str, int]]:
    """(list, form, kind, field, gate, rank) for every identity an entry may match under
    `mode`: what the SQL backend joins its candidate hits with."""
    rows = []
    for lst in ListKind:
        for form in ("plain", "pair"):
            gates = gates_for(mode, lst, form)
            for rank, ident in enumerate(IDENTITIES):
                if ident.field in gates and not (form == "pair" and ident.kind is EntryKind.IP):
                    rows.append((str(lst), form, str(ident.kind), ident.field, gates[ident.field], rank))
    return rows


# Forgery per From-policy (docs/rules.md): an OR of terms, each a boolean column or its negation.
# Every mode is a forgery when header_ok fails, so a stricter mode never passes what a weaker stops.
FORGERY: dict[FromPolicy, tuple[tuple[str, bool], ...]] = {
    #                       (column, negated)
    FromPolicy.STRICT: (("header_ok", True), ("org_mismatch", False)),
    FromPolicy.ALIGNED: (("header_ok", True), ("aligned_auth", True)),
    FromPolicy.RELAXED: (("header_ok", True),),
}


# -- infrastructure proofs: a pair's `via` side and the bulk-mailer `allow` exemption ----------

@dataclass(frozen=True, slots=True)
class Check:
    """One way infrastructure is proven: SPF pass for a domain at or under a suffix, a
    passing DKIM d= at or under one, or the client IP in a CIDR. `proof` is the evidence a
    reason quotes."""

    name: str
    fact: str  # 'spf', 'dkim' or 'cidr'
    field: str | None  # the domain column an SPF check reads
    proof: str


CHECKS: dict[str, Check] = {c.name: c for c in (
    # Order is the order of proof: SPF before DKIM, as the first that holds is quoted.
    Check("spf_env_domain", "spf", "env_domain", "SPF pass for {env_domain}"),
    Check("spf_envelope_from_domain", "spf", "envelope_from_domain", "SPF pass for {envelope_from_domain}"),
    Check("dkim_d", "dkim", None, "DKIM pass d={dkim_d}"),
    Check("cidr", "cidr", None, "client IP {client_ip} in {via}"),
)}
PROVIDER_PROOF = "{via} authenticated by {proof}"


def provider_checks(p: ProviderDef) -> list[tuple[str, str]]:
    """(check, suffix) proving that provider P sent the message: a provider's HELO names are its
    own, so SPF reads env_domain (the HELO name for the null sender)."""
    return ([("spf_env_domain", s) for s in p.envelope_suffixes]
            + [("dkim_d", s) for s in p.dkim_domains])


def via_checks(e: Entry, providers: Mapping[str, ProviderDef]) -> list[tuple[str, str]]:
    """(check, suffix-or-CIDR) of a pair's `via` side. `via: <domain>` reads the real envelope
    domain: null-sender mail never satisfies it through SPF (docs/rules.md)."""
    via = e.via
    if via is None:
        return []
    if via.kind is ViaKind.CIDR:
        return [("cidr", via.value)]
    if via.kind is ViaKind.DOMAIN:
        return [("spf_envelope_from_domain", via.value), ("dkim_d", via.value)]
    p = providers.get(via.value)
    return provider_checks(p) if p is not None else []  # a provider the pack lacks proves nothing


# -- decision steps, rule ids, reasons ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Step:
    """One row of docs/rules.md "Decision order"; templates name fact columns and the
    placeholders below in braces; a missing value reads 'unknown'."""

    category: str
    rule_id: str
    reason: str


# Placeholders besides fact columns: {mode}; for entries {list} {entry} {identity} {value}
# {proof}; in proofs {via} and {dkim_d} (the first passing DKIM d= the check accepts).
STEPS: dict[str, Step] = {s.category: s for s in (
    Step("inbound", "inbound:relays",
         "client IP {client_ip} is outside the inbound relays and inbound.enforce is on"),
    Step("malware", "category:malware",
         "the upstream scanner found malware; allow entries never override malware"),
    Step("block", "{entry_id}", "{list} entry {entry} matched the {identity} {value}"),
    Step("allow", "{entry_id}", "{list} entry {entry} matched the {identity} {value}"),
    Step("bulk", "bulk:{bulk_provider}", "mail from the {bulk_provider} network is blocked by bulk_mailers"),
    Step("forgery", "from_policy:{mode}", ""),  # one of FORGERY_REASONS
    Step("phishing", "category:phishing", "the upstream scanner classified it as phishing"),
    Step("spam", "category:spam", "the upstream scanner classified it as spam"),
    Step("clean", "default", "no rule matched and it is not classified as malware, phishing or spam"),
)}
# Appended to an entry's reason when its infrastructure was proven.
ENTRY_PROOF = ", {proof}"

# Why a message is a forgery: the first row whose condition holds (None: always) for the mode.
FORGERY_REASONS: tuple[tuple[tuple[FromPolicy, ...], str | None, str], ...] = (
    (tuple(FromPolicy), "from_invalid",
     "the From header is missing, repeated or holds several mailboxes under the {mode} From-policy"),
    (tuple(FromPolicy), "dmarc_enforced_fail",
     "DMARC failed for header From {header_from_org}, whose owner publishes p={dmarc_policy}, "
     "under the {mode} From-policy"),
    ((FromPolicy.STRICT,), "null_sender",
     "header From {header_from_org} does not match the HELO name {env_org} under the strict From-policy"),
    ((FromPolicy.STRICT,), None,
     "header From {header_from_org} does not match the envelope sender {env_org} under the strict From-policy"),
    ((FromPolicy.ALIGNED,), None,
     "header From {header_from_org} has no aligned authentication (DMARC {dmarc}, SPF {spf} for {env_org}, "
     "no passing DKIM signature of {header_from_org}) under the aligned From-policy"),
)


def forgery_reasons(mode: FromPolicy) -> list[tuple[str | None, str]]:
    """(condition column or None, template) for `mode`, in order."""
    return [(cond, text) for modes, cond, text in FORGERY_REASONS if mode in modes]


def describe_entry(e: Entry) -> str:
    """How every report names an entry: 'otp-codes (sender x@y via amazonses for user:a@b)'."""
    target = f"{e.kind} {e.value}" + (" and subdomains" if e.subdomains else "")
    if e.via is not None:
        target += f" via {e.via.value}"
    if e.scope.kind is not ScopeKind.GLOBAL:
        target += f" for {e.scope}"
    return f"{e.id} ({target})"


# -- templates: one text, rendered by Python and by SQL ---------------------------------------

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
UNKNOWN = "unknown"


@lru_cache(maxsize=None)
def _pieces(template: str) -> tuple[tuple[str, str | None], ...]:
    """(literal text, placeholder name or None) pairs: a template is split once, not per verdict."""
    out: list[tuple[str, str | None]] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(template):
        out.append((template[pos:m.start()], m.group(1)))
        pos = m.end()
    out.append((template[pos:], None))
    return tuple(out)


def render(template: str, values: Mapping[str, object]) -> str:
    """The template with each {name} replaced by values[name] ('unknown' when None or absent)."""
    out = []
    for text, name in _pieces(template):
        out.append(text)
        if name is not None:
            v = values.get(name)
            out.append(UNKNOWN if v is None else str(v))
    return "".join(out)


def render_sql(template: str, expr: Callable[[str], str]) -> str:
    """The same text as a DuckDB expression; expr(name) gives the SQL of placeholder `name`."""
    parts: list[str] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(template):
        if m.start() > pos:
            parts.append(sql_literal(template[pos:m.start()]))
        parts.append(f"coalesce(CAST({expr(m.group(1))} AS VARCHAR), '{UNKNOWN}')")
        pos = m.end()
    if pos < len(template):
        parts.append(sql_literal(template[pos:]))
    return " || ".join(parts) if parts else "''"


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def placeholders(template: str) -> list[str]:
    return _PLACEHOLDER.findall(template)
