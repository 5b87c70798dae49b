"""Derived facts: what docs/rules.md "Derived facts" computes from a message's facts, written once.

Policy-independent, so computed once per message: by ingest (stored as columns of `messages`,
edrules/schema.py) and by the gateway for a live message. Neither rule backend nor the workbench
derives them again; the policy-dependent semantics (which identity an entry may match, forgery
per mode, reasons) are the tables of edrules/rules/semantics.py, read over these columns.

A missing fact (None) makes every comparison that reads it false; the flags below combine those
atoms with two-valued logic, so no flag is ever None.
"""

from __future__ import annotations

from typing import NamedTuple

from edrules.facts import MessageFacts

DMARC_ENFORCING = ("quarantine", "reject")


class DerivedFacts(NamedTuple):
    """One message's derived facts; field names are the `messages` column names. A NamedTuple:
    the gateway builds one per message, and tuple construction is ~4x cheaper than a frozen
    dataclass's."""

    env_domain: str | None  # the envelope domain; the HELO name for the null sender
    env_org: str | None  # organisation of env_domain
    null_sender: bool  # envelope_from = '' (a bounce): env_* are the HELO's
    spf_pass: bool
    dmarc_enforced_fail: bool  # DMARC fail under p=quarantine|reject: the owner disowns the message
    header_ok: bool  # the header From may be trusted at all
    env_ok: bool  # the envelope does not claim the organisation DMARC disowned here
    env_spf_ok: bool  # spf_pass AND env_ok: an envelope identity under `aligned`
    spf_aligned: bool
    dkim_aligned: bool
    aligned_auth: bool
    header_aligned: bool  # header_ok AND aligned_auth: a header identity under `aligned`
    org_mismatch: bool  # header From and envelope organisations both known and different
    from_domains: tuple[str, ...]  # the domain of each mailbox the From field names
    forged: bool  # analyst flag (workbench): the header From is not backed by its own domain
    network: str  # the network it came through, for traffic reports

    def values(self) -> tuple:
        """The column values in DERIVED_COLUMNS order."""
        return tuple(self)


DERIVED_COLUMNS: tuple[str, ...] = DerivedFacts._fields
# DuckDB types of the derived columns (never NULL but the names, though not declared so).
DERIVED_TYPES: dict[str, str] = {
    name: ("VARCHAR" if name in ("env_domain", "env_org", "network")
           else "VARCHAR[]" if name == "from_domains" else "BOOLEAN")
    for name in DERIVED_COLUMNS
}


def derive(f: MessageFacts) -> DerivedFacts:
    """The derived facts of one message (docs/rules.md "Derived facts")."""
    null_sender = f.envelope_from == ""
    if null_sender:
        env_domain, env_org = f.helo, f.helo_org
    else:
        env_domain, env_org = f.envelope_from_domain, f.envelope_from_org
    hfo = f.header_from_org
    enforced_fail = f.dmarc == "fail" and f.dmarc_policy in DMARC_ENFORCING
    header_ok = not f.from_invalid and not enforced_fail
    same_org = env_org is not None and env_org == hfo
    env_ok = not (enforced_fail and same_org)
    spf_pass = f.spf == "pass"
    spf_aligned = spf_pass and same_org
    dkim_aligned = hfo is not None and any(s.result == "pass" and s.org == hfo for s in f.dkim)
    aligned_auth = f.dmarc == "pass" or spf_aligned or dkim_aligned
    org_mismatch = hfo is not None and env_org is not None and hfo != env_org
    boxes = f.from_mailboxes
    if len(boxes) == 1:
        from_domains: tuple[str, ...] = (boxes[0].rpartition("@")[2],) if "@" in boxes[0] else ()
    else:
        from_domains = tuple(dict.fromkeys(a.rpartition("@")[2] for a in boxes if "@" in a))
    return DerivedFacts(
        env_domain, env_org, null_sender, spf_pass, enforced_fail, header_ok, env_ok,
        spf_pass and env_ok, spf_aligned, dkim_aligned, aligned_auth, header_ok and aligned_auth,
        org_mismatch, from_domains, _forged(f, env_org, aligned_auth), _network(f, env_org),
    )


def _forged(f: MessageFacts, env_org: str | None, aligned_auth: bool) -> bool:
    """Independent of the From-policy under test, so a what-if can show what a looser policy
    lets in: malformed, DMARC-failed, or unauthenticated while the envelope names another
    organisation (or SPF failed)."""
    if f.from_invalid or f.dmarc == "fail":
        return True
    return (not aligned_auth and f.header_from_org is not None
            and (env_org != f.header_from_org or f.spf in ("fail", "softfail")))


def _network(f: MessageFacts, env_org: str | None) -> str:
    """The bulk provider when known, else the client's HELO organisation, else its /24 (IPv4)
    or the address itself, else the envelope organisation."""
    if f.bulk_provider:
        return f.bulk_provider
    if f.helo_org:
        return f.helo_org
    ip = f.client_ip
    if ip:
        parts = ip.split(".")
        if len(parts) == 4 and all(p.isascii() and p.isdigit() for p in parts):
            return f"{parts[0]}.{parts[1]}.{parts[2]}.0/24"
        return ip
    return env_org or "(unknown)"
