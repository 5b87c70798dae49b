"""DMARC (RFC 7489): record discovery with org-domain fallback, tag validation, alignment, policy.

Hand-written: the Python DMARC packages either check records only (checkdmarc) or bundle
their own DNS and PSL handling; edrules needs the Resolver and the shared PSL (domains.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from edrules.auth.resolver import DnsError, NXDomain, PermError, Resolver
from edrules.domains import normalize_domain, org_domain
from edrules.facts import AuthResult

if TYPE_CHECKING:
    from edrules.auth.dkim import DkimOutcome


class Policy(StrEnum):
    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


class Alignment(StrEnum):
    RELAXED = "r"
    STRICT = "s"


class RecordStatus(StrEnum):
    """Whether a discovered record can be applied (ok) or DMARC ends in an error result."""

    OK = "ok"
    PERMERROR = "permerror"
    TEMPERROR = "temperror"


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """A DMARC policy record as found in DNS, with its problems as values.

    `domain` is where it was found (the From domain, or its organisational domain when
    `org_fallback`); `errors` make it unusable (status permerror); `warnings` do not.
    """

    domain: str
    text: str
    status: RecordStatus = RecordStatus.OK
    p: Policy | None = None
    sp: Policy | None = None
    pct: int = 100
    adkim: Alignment = Alignment.RELAXED
    aspf: Alignment = Alignment.RELAXED
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    org_fallback: bool = False
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def policy_for(self, from_domain: str) -> Policy | None:
        """p= for the domain that published, sp= (else p=) for its subdomains (RFC 7489 6.6.3)."""
        if self.org_fallback and normalize_domain(from_domain) != self.domain:
            return self.sp or self.p
        return self.p


_POLICIES = {p.value: p for p in Policy}
_ALIGN = {a.value: a for a in Alignment}


def parse_dmarc_record(text: str, domain: str, org_fallback: bool = False) -> DmarcRecord:
    """Parse one `v=DMARC1; ...` record; syntax problems become errors/warnings, not exceptions."""
    errors: list[str] = []
    warnings: list[str] = []
    tags: dict[str, str] = {}
    parts = [t.strip() for t in text.split(";")]
    for i, part in enumerate(parts):
        if not part:
            continue
        name, sep, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or not name:
            errors.append(f"malformed tag {part!r}")
            continue
        if i == 0 and (name != "v" or value.upper() != "DMARC1"):
            errors.append("record must start with v=DMARC1")
        if name in tags:
            errors.append(f"duplicate tag {name}=")
            continue
        tags[name] = value
    kw: dict = {}
    for name in ("p", "sp"):
        if name in tags:
            pol = _POLICIES.get(tags[name].lower())
            if pol is None:
                errors.append(f"invalid {name}={tags[name]!r} (none, quarantine or reject)")
            kw[name] = pol
    if "p" not in tags:
        # RFC 7489 6.6.3: a record without p= but with a valid rua is applied as p=none.
        if "rua" in tags:
            kw["p"] = Policy.NONE
            warnings.append("missing p=: treated as p=none because rua= is present")
        else:
            errors.append("missing required p= tag")
    if "pct" in tags:
        v = tags["pct"]
        if v.isdigit() and 0 <= int(v) <= 100:
            kw["pct"] = int(v)
        else:
            errors.append(f"invalid pct={v!r} (integer 0-100)")
    for name in ("adkim", "aspf"):
        if name in tags:
            a = _ALIGN.get(tags[name].lower())
            if a is None:
                errors.append(f"invalid {name}={tags[name]!r} (r or s)")
            else:
                kw[name] = a
    for name in ("rua", "ruf"):
        if name in tags:
            uris = tuple(u.strip() for u in tags[name].split(",") if u.strip())
            bad = [u for u in uris if not u.lower().startswith(("mailto:", "https:", "http:"))]
            if bad or not uris:
                # A bad report URI does not stop policy (RFC 7489 6.3: MUST be ignored).
                warnings.append(f"invalid {name} URI {', '.join(bad) or '(empty)'}")
            kw[name] = tuple(u for u in uris if u not in bad)
    unknown = sorted(set(tags) - {"v", "p", "sp", "pct", "adkim", "aspf", "rua", "ruf", "fo", "rf", "ri", "np", "psd", "t"})
    if unknown:
        warnings.append("unknown tags ignored: " + ", ".join(unknown))
    status = RecordStatus.PERMERROR if errors else RecordStatus.OK
    return DmarcRecord(
        domain=domain, text=text, status=status, org_fallback=org_fallback,
        errors=tuple(errors), warnings=tuple(warnings), **{k: v for k, v in kw.items() if v is not None},
    )


def _records_at(name: str, resolver: Resolver) -> list[str]:
    try:
        txts = resolver.txt(name)
    except (NXDomain, PermError):
        return []
    # Only records starting with v=DMARC1 count (RFC 7489 6.6.3 step 2).
    return [t for t in txts if t.replace(" ", "").upper().startswith("V=DMARC1")]


def lookup_dmarc(from_domain: str, resolver: Resolver) -> DmarcRecord | None:
    """Find the record for `from_domain`, falling back to its organisational domain.

    None means no DMARC record (result none). DNS trouble or several records come back as
    a record with status temperror / permerror, so callers never handle exceptions.
    """
    domain = normalize_domain(from_domain)
    if not domain:
        return None
    org = org_domain(domain) or domain
    candidates = [(domain, False)] + ([(org, True)] if org != domain else [])
    for name, fallback in candidates:
        try:
            found = _records_at("_dmarc." + name, resolver)
        except DnsError as exc:
            return DmarcRecord(name, "", RecordStatus.TEMPERROR, org_fallback=fallback,
                               errors=(f"DNS error: {exc}",))
        if len(found) > 1:
            return DmarcRecord(name, " | ".join(found), RecordStatus.PERMERROR, org_fallback=fallback,
                               errors=(f"{len(found)} DMARC records at _dmarc.{name} (exactly one allowed)",))
        if found:
            return parse_dmarc_record(found[0], name, fallback)
    return None


def aligned(identifier: str | None, from_domain: str | None, mode: Alignment) -> bool:
    """Identifier alignment (RFC 7489 3.1): strict = same domain, relaxed = same org domain."""
    a, b = normalize_domain(identifier), normalize_domain(from_domain)
    if not a or not b:
        return False
    if mode is Alignment.STRICT:
        return a == b
    return org_domain(a) == org_domain(b)


@dataclass(frozen=True, slots=True)
class DmarcOutcome:
    """DMARC result with the policy the receiver should apply (after pct sampling)."""

    result: AuthResult
    policy: Policy | None  # applied disposition: None when DMARC does not apply
    domain: str | None  # the RFC5322.From domain evaluated
    published_policy: Policy | None = None  # p= or sp= that applied before pct sampling
    spf_aligned: bool = False
    dkim_aligned: bool = False
    record: DmarcRecord | None = None
    reason: str = ""


def _downgrade(p: Policy) -> Policy:
    # RFC 7489 6.6.4: a message outside pct gets the next less severe policy.
    return {Policy.REJECT: Policy.QUARANTINE, Policy.QUARANTINE: Policy.NONE}.get(p, p)


def evaluate_dmarc(
    from_domains: Sequence[str | None] | str | None,
    spf_result: AuthResult | str | None,
    spf_domain: str | None,
    dkim: Iterable[tuple[str | None, AuthResult | str]] | Iterable["DkimOutcome"],
    resolver: Resolver,
    *,
    record: DmarcRecord | None = None,
    sample: Callable[[], float] = random.random,
) -> DmarcOutcome:
    """Evaluate DMARC for one message.

    from_domains: the domain of every RFC5322.From mailbox (one per mailbox, all headers);
    zero or several mailboxes is a fail (RFC 7489 6.6.1: such mail is not DMARC-evaluable and
    is treated as hostile, as edrules' `from_invalid` fact). spf_domain is the domain SPF
    checked (MAIL FROM, or HELO for a null sender). dkim: (d=, result) per signature, or the
    DkimOutcome list verify_dkim returned.
    `record` skips the DNS lookup; `sample` draws in [0, 1) for pct.
    """
    if isinstance(from_domains, str) or from_domains is None:
        from_domains = [from_domains] if from_domains else []
    doms = [normalize_domain(d) for d in from_domains]
    if len(doms) != 1 or not doms[0]:
        why = "no From mailbox" if not doms else (
            "From mailbox without a domain" if len(doms) == 1 else f"{len(doms)} From mailboxes")
        return DmarcOutcome(AuthResult.FAIL, None, None, reason=why)
    domain = doms[0]
    rec = record if record is not None else lookup_dmarc(domain, resolver)
    if rec is None:
        return DmarcOutcome(AuthResult.NONE, None, domain, reason="no DMARC record")
    if rec.status is not RecordStatus.OK:
        return DmarcOutcome(AuthResult(rec.status.value), None, domain, record=rec,
                            reason="; ".join(rec.errors))
    spf_ok = str(spf_result) == "pass" and aligned(spf_domain, domain, rec.aspf)
    sigs = [(x.d, x.result) if hasattr(x, "result") else x for x in dkim]
    dkim_ok = any(str(r) == "pass" and aligned(d, domain, rec.adkim) for d, r in sigs)
    published = rec.policy_for(domain)
    if spf_ok or dkim_ok:
        how = " and ".join(n for n, ok in (("SPF", spf_ok), ("DKIM", dkim_ok)) if ok)
        return DmarcOutcome(AuthResult.PASS, Policy.NONE, domain, published, spf_ok, dkim_ok, rec,
                            f"aligned {how} pass")
    applied = published
    reason = "no aligned SPF or DKIM pass"
    if published is not None and rec.pct < 100 and sample() * 100 >= rec.pct:
        applied = _downgrade(published)
        reason += f"; outside pct={rec.pct}, policy downgraded"
    return DmarcOutcome(AuthResult.FAIL, applied, domain, published, False, False, rec, reason)
