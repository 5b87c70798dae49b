"""DMARC (RFC 7489): record discovery with org-domain fallback, tag validation, alignment, policy.

Hand-written: the Python DMARC packages either check records only (checkdmarc) or bundle
their own DNS and PSL handling; edrules needs the Resolver and the shared PSL (domains.py).
"""

from __future__ import annotations

import random
import re
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
    """Whether a discovered record is applied (ok), DMARC is not applied (none), or DNS failed."""

    OK = "ok"
    NONE = "none"  # RFC 7489 6.6.3 steps 5-6: several records, or no usable p= and no rua=
    TEMPERROR = "temperror"


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """A DMARC policy record as found in DNS, with its problems as values.

    `domain` is where it was found (the From domain, or its organisational domain when
    `org_fallback`); `errors` say why DMARC is not applied (status none / temperror);
    `warnings` are tags receivers ignore in favour of their defaults (RFC 7489 6.3).
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
    # set when p= was missing/invalid (or sp= invalid) and rua= made receivers act as p=none
    as_p_none: str | None = None

    def policy_for(self, from_domain: str) -> Policy | None:
        """p= for the domain that published, sp= (else p=) for its subdomains (RFC 7489 6.6.3)."""
        if self.org_fallback and normalize_domain(from_domain) != self.domain:
            return self.sp or self.p
        return self.p


_POLICIES = {p.value: p for p in Policy}
_ALIGN = {a.value: a for a in Alignment}
# RFC 7489 6.3: "v" MUST be the first tag and its value MUST match "DMARC1" precisely (the
# ABNF spells it %x44 %x4d %x41 %x52 %x43 %x31: case-sensitive); anything else is no DMARC record.
_VERSION = re.compile(r"\s*[vV]\s*=\s*DMARC1\s*(;|$)")
# RFC 3986 3.1 scheme ":" something, with DMARC's optional "!size" suffix (RFC 7489 6.4)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[\x22-\x2b\x2d-\x3a\x3c-\x7e]+(![0-9]+[kmgtKMGT]?)?")  # ASCII only
_REPORT_SCHEMES = ("mailto:", "https:", "http:")
_KNOWN = {"v", "p", "sp", "pct", "adkim", "aspf", "rua", "ruf", "fo", "rf", "ri"}
# DMARCbis tags: not RFC 7489, ignored without a warning
_LATER = {"np", "psd", "t"}


def is_dmarc_record(text: str) -> bool:
    """Whether a TXT record is a DMARC record at all (RFC 7489 6.6.3 steps 2 and 4)."""
    return _VERSION.match(text) is not None


def parse_dmarc_record(text: str, domain: str, org_fallback: bool = False) -> DmarcRecord:
    """Parse one `v=DMARC1; ...` record; syntax problems become errors/warnings, not exceptions.

    RFC 7489 6.3: only v= and p= decide whether the record is used; a syntax error in any
    other tag is ignored in favour of that tag's default (a warning). 6.6.3 step 6: without
    a valid p= (or with an invalid sp=) the record acts as p=none when rua= holds a valid
    URI, and otherwise DMARC is not applied (status none)."""
    if not is_dmarc_record(text):
        return DmarcRecord(domain, text, RecordStatus.NONE, org_fallback=org_fallback,
                           errors=("not a DMARC record: it must start with v=DMARC1 (exactly; RFC 7489 6.3)",))
    warnings: list[str] = []
    tags: dict[str, str] = {}
    for part in (t.strip() for t in text.split(";")[1:]):
        if not part:
            continue
        name, sep, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or not name:
            warnings.append(f"malformed tag {part!r} ignored")
        elif name == "v":
            warnings.append("second v= tag ignored")
        elif name in tags:
            warnings.append(f"duplicate tag {name}= ignored (the first one applies)")
        else:
            tags[name] = value
    kw: dict = {}
    problems: list[str] = []
    for name in ("p", "sp"):
        if name in tags:
            pol = _POLICIES.get(tags[name].lower())
            if pol is None:
                problems.append(f"invalid {name}={tags[name]!r} (none, quarantine or reject)")
            kw[name] = pol
    if "p" not in tags:
        problems.append("no p= tag")
    uris = {n: tuple(u.strip() for u in tags.get(n, "").split(",") if u.strip()) for n in ("rua", "ruf")}
    for name, found in uris.items():
        if name not in tags:
            continue
        bad = [u for u in found if not _URI.fullmatch(u) or not u.lower().startswith(_REPORT_SCHEMES)]
        if bad or not found:
            # A bad report URI does not stop policy (RFC 7489 6.3: MUST be ignored).
            warnings.append(f"invalid {name} URI {', '.join(bad) or '(empty)'} ignored")
        kw[name] = tuple(u for u in found if u not in bad)
    if problems:
        if not any(_URI.fullmatch(u) for u in uris["rua"]):
            return DmarcRecord(domain, text, RecordStatus.NONE, org_fallback=org_fallback,
                               errors=tuple(problems) + ("no valid rua= either: DMARC is not applied "
                                                         "(RFC 7489 6.6.3 step 6)",),
                               warnings=tuple(warnings))
        # RFC 7489 6.6.3 step 6.1: act as if the record were v=DMARC1; p=none (and rua= is kept).
        kw["p"], kw["sp"] = Policy.NONE, None
        kw["as_p_none"] = "; ".join(problems) + ": treated as p=none because rua= is present (RFC 7489 6.6.3)"
    if "pct" in tags:
        v = tags["pct"]
        if v.isascii() and v.isdigit() and 0 <= int(v) <= 100:
            kw["pct"] = int(v)
        else:
            warnings.append(f"invalid pct={v!r} ignored: 100 applies (integer 0-100)")
    for name in ("adkim", "aspf"):
        if name in tags:
            a = _ALIGN.get(tags[name].lower())
            if a is None:
                warnings.append(f"invalid {name}={tags[name]!r} ignored: r applies (r or s)")
            else:
                kw[name] = a
    unknown = sorted(set(tags) - _KNOWN - _LATER)
    if unknown:
        warnings.append("unknown tags ignored: " + ", ".join(unknown))
    return DmarcRecord(
        domain=domain, text=text, org_fallback=org_fallback, warnings=tuple(warnings),
        **{k: v for k, v in kw.items() if v is not None},
    )


def _records_at(name: str, resolver: Resolver) -> list[str]:
    try:
        txts = resolver.txt(name)
    except (NXDomain, PermError):
        return []
    # Records not starting with v=DMARC1 are discarded (RFC 7489 6.6.3 steps 2 and 4).
    return [t for t in txts if is_dmarc_record(t)]


def lookup_dmarc(from_domain: str, resolver: Resolver) -> DmarcRecord | None:
    """Policy discovery (RFC 7489 6.6.3): the From domain, then its organisational domain
    only when the From domain has no DMARC record at all.

    None means no DMARC record (result none). Several records, or one that cannot be used,
    come back with status none and no fallback (step 5); DNS trouble as temperror; callers
    never handle exceptions.
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
            return DmarcRecord(name, " | ".join(found), RecordStatus.NONE, org_fallback=fallback,
                               errors=(f"{len(found)} DMARC records at _dmarc.{name}: DMARC is not applied "
                                       "(RFC 7489 6.6.3 step 5)",))
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
    is treated as hostile, as edrules' `from_invalid` fact); with several, the policy is the
    most strict one of the author domains whose check fails (RFC 7489 6.6.1). spf_domain is
    the domain SPF checked (MAIL FROM, or HELO for a null sender). dkim: (d=, result) per
    signature, or the DkimOutcome list verify_dkim returned.
    `record` skips the DNS lookup; `sample` draws in [0, 1) for pct.
    """
    if isinstance(from_domains, str) or from_domains is None:
        from_domains = [from_domains] if from_domains else []
    doms = [normalize_domain(d) for d in from_domains]
    sigs = [(x.d, x.result) if hasattr(x, "result") else x for x in dkim]
    if len(doms) == 1 and doms[0]:
        return _evaluate_one(doms[0], spf_result, spf_domain, sigs, resolver, record, sample)
    if len(doms) <= 1:
        why = "no From mailbox" if not doms else "From mailbox without a domain"
        return DmarcOutcome(AuthResult.FAIL, None, None, reason=why)
    # RFC 7489 6.6.1: evaluate every author domain and apply the most strict policy among
    # the checks that fail. The result stays fail: such a From is `from_invalid` for the rules.
    each = [_evaluate_one(d, spf_result, spf_domain, sigs, resolver, record, sample)
            for d in dict.fromkeys(doms) if d]
    failing = [o for o in each if o.result is AuthResult.FAIL and o.policy is not None]
    worst = max(failing, key=lambda o: _STRICTNESS[o.policy], default=None)
    why = f"{len(doms)} From mailboxes"
    if worst is None:
        return DmarcOutcome(AuthResult.FAIL, None, None, reason=why + "; no author domain's DMARC check fails")
    return DmarcOutcome(AuthResult.FAIL, worst.policy, None, worst.published_policy, False, False, worst.record,
                        f"{why}; most strict policy of the failing author domains: {worst.domain} "
                        f"p={worst.policy} (RFC 7489 6.6.1)")


_STRICTNESS = {Policy.NONE: 0, Policy.QUARANTINE: 1, Policy.REJECT: 2}


def _evaluate_one(domain: str, spf_result, spf_domain: str | None, sigs: list, resolver: Resolver,
                  record: DmarcRecord | None, sample: Callable[[], float]) -> DmarcOutcome:
    rec = record if record is not None else lookup_dmarc(domain, resolver)
    if rec is None:
        return DmarcOutcome(AuthResult.NONE, None, domain, reason="no DMARC record")
    if rec.status is not RecordStatus.OK:
        return DmarcOutcome(AuthResult(rec.status.value), None, domain, record=rec,
                            reason="; ".join(rec.errors))
    spf_ok = str(spf_result) == "pass" and aligned(spf_domain, domain, rec.aspf)
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
