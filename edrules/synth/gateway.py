"""The tenant's gateway: checks SPF, DKIM and DMARC against the demo zone and stamps the headers.

The results written into Received-SPF and Authentication-Results are computed, not
declared: pyspf and dkimpy evaluate each message against the zone, so the headers stay
truthful when a scenario changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import dkim
import spf

from edrules.domains import address_domain, normalize_address, normalize_domain, org_domain
from edrules.facts import AuthResult
from edrules.synth.calendar import prague_offset_minutes
from edrules.synth.zone import Zone


@dataclass(frozen=True, slots=True)
class DkimCheck:
    d: str
    s: str
    result: AuthResult
    bits: int | None
    b: str


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    spf: AuthResult
    spf_header: str  # Received-SPF value
    dkim: tuple[DkimCheck, ...]
    dmarc: AuthResult
    dmarc_policy: str | None
    from_domain: str | None
    helo: str


class _ZoneSpfQuery(spf.query):
    """pyspf with its DNS served from the demo zone, so no lookup leaves the process."""

    zone: Zone

    def dns(self, name, qtype, cnames=None, ignore_void=False):  # noqa: ANN001 - pyspf API
        values = self.zone.get(str(name), qtype)
        if qtype in ("TXT", "SPF"):
            result = [(v.encode("ascii"),) for v in values]
        elif qtype == "MX":
            result = [(int(p), host.rstrip(".")) for p, host in (v.split() for v in values)]
        elif qtype == "PTR":
            result = [v.rstrip(".") for v in values]
        else:
            result = values
        if not result and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return result


def check_spf(zone: Zone, ip: str, envelope_from: str, helo: str, receiver: str) -> tuple[AuthResult, str]:
    q = _ZoneSpfQuery(i=ip, s=envelope_from, h=helo, receiver=receiver)
    q.zone = zone
    result, _code, _text = q.check()
    return AuthResult(result), q.get_header(result, receiver=receiver)


def check_dkim(zone: Zone, message: bytes) -> tuple[DkimCheck, ...]:
    """Verify every DKIM-Signature, top-most first, as a receiving gateway does."""
    d = dkim.DKIM(message, linesep=b"\n")
    checks = []
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    for idx in range(count):
        try:
            ok = d.verify(idx=idx, dnsfunc=zone.dkim_dnsfunc)
        except dkim.DKIMException:
            ok = False
        sig = d.signature_fields
        checks.append(
            DkimCheck(
                d=sig[b"d"].decode("ascii").lower(),
                s=sig[b"s"].decode("ascii"),
                result=AuthResult.PASS if ok else AuthResult.FAIL,
                bits=d.keysize or None,
                b=sig[b"b"].decode("ascii").replace(" ", "").replace("\n", "")[:8],
            )
        )
    return tuple(checks)


def dmarc_record(zone: Zone, domain: str) -> dict[str, str] | None:
    """The DMARC record for domain: at _dmarc.domain, else at its organisational domain."""
    for name in dict.fromkeys((domain, org_domain(domain))):
        for txt in zone.txt(f"_dmarc.{name}"):
            if txt.startswith("v=DMARC1"):
                tags = (part.strip().partition("=") for part in txt.split(";") if part.strip())
                return {k.strip(): v.strip() for k, _, v in tags}
    return None


def check_dmarc(
    zone: Zone, from_domain: str | None, envelope_domain: str | None, spf_result: AuthResult,
    dkim_checks: tuple[DkimCheck, ...],
) -> tuple[AuthResult, str | None]:
    """Relaxed alignment (the default adkim/aspf) of SPF or DKIM with the From domain."""
    if not from_domain:
        return AuthResult.NONE, None
    record = dmarc_record(zone, from_domain)
    if record is None:
        return AuthResult.NONE, None
    org = org_domain(from_domain)
    spf_aligned = spf_result is AuthResult.PASS and org_domain(envelope_domain) == org
    dkim_aligned = any(c.result is AuthResult.PASS and org_domain(c.d) == org for c in dkim_checks)
    result = AuthResult.PASS if (spf_aligned or dkim_aligned) else AuthResult.FAIL
    return result, record.get("p")


def evaluate(zone: Zone, message: bytes, ip: str, helo: str, envelope_from: str,
             header_from: str | None, receiver: str) -> AuthOutcome:
    spf_result, spf_header = check_spf(zone, ip, envelope_from, helo, receiver)
    checks = check_dkim(zone, message)
    from_domain = normalize_domain(address_domain(normalize_address(header_from)))
    # a null sender <> has SPF checked on the HELO name, and DMARC aligns that (RFC 7489 3.1.2)
    env_domain = address_domain(normalize_address(envelope_from)) if envelope_from else normalize_domain(helo)
    dmarc_result, policy = check_dmarc(zone, from_domain, env_domain, spf_result, checks)
    return AuthOutcome(spf_result, spf_header, checks, dmarc_result, policy, from_domain, helo)


def authentication_results(authserv_id: str, outcome: AuthOutcome, envelope_from: str) -> str:
    """RFC 8601 header value, one method per folded line like common milters write it."""
    identity = f"smtp.mailfrom={envelope_from}" if envelope_from else f"smtp.helo={outcome.helo}"
    parts = [f"spf={outcome.spf} {identity}"]
    if not outcome.dkim:
        parts.append("dkim=none")
    for c in outcome.dkim:
        comment = f" ({c.bits}-bit key)" if c.bits and c.result is AuthResult.PASS else (
            "" if c.result is AuthResult.PASS else " (signature verification failed)"
        )
        parts.append(f'dkim={c.result}{comment} header.d={c.d} header.i=@{c.d} header.s={c.s} header.b="{c.b}"')
    if outcome.from_domain:
        if outcome.dmarc_policy:
            dis = " dis=none" if outcome.dmarc is AuthResult.PASS else ""
            comment = f" (p={outcome.dmarc_policy}{dis})"
        else:
            comment = ""
        parts.append(f"dmarc={outcome.dmarc}{comment} header.from={outcome.from_domain}")
    return authserv_id + ";\n\t" + ";\n\t".join(parts)


def received(helo: str, ip: str, rdns: str | None, by: str, queue_id: str, recipient: str | None,
             when: datetime) -> str:
    """A Postfix-style Received header written by the gateway (the trusted hop), in Prague time."""
    literal = f"IPv6:{ip}" if ":" in ip else ip
    rcpt = f"\n\tfor <{recipient}>" if recipient else ""
    offset = prague_offset_minutes(when)
    local = when.astimezone(timezone(timedelta(minutes=offset)))
    return (
        f"from {helo} ({rdns or 'unknown'} [{literal}])\n"
        f"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\n"
        f"\t(No client certificate requested)\n"
        f"\tby {by} (Postfix) with ESMTPS id {queue_id}{rcpt};\n"
        f"\t{format_datetime(local)} ({'CEST' if offset == 120 else 'CET'})"
    )
