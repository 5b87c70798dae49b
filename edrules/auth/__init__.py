"""Email authentication for the gateway and for analysis: SPF, DKIM, DMARC and ARC in one call."""

from __future__ import annotations

from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

from edrules.auth.arc import ArcOutcome, verify_arc
from edrules.auth.dkim import DkimOutcome, header_end, verify_dkim
from edrules.auth.dmarc import DmarcOutcome, evaluate_dmarc
from edrules.auth.resolver import Resolver, default_resolver
from edrules.auth.spf import SpfOutcome, check_spf
from edrules.domains import normalize_address, normalize_ip
from edrules.facts import DkimSignatureResult

__all__ = ["AuthResults", "authenticate", "from_domains"]


@dataclass(frozen=True, slots=True)
class AuthResults:
    """Everything the gateway learnt about one message's authenticity."""

    client_ip: str | None
    helo: str | None
    envelope_from: str | None
    header_from: tuple[str, ...]  # every From mailbox, normalised (one is the only valid case)
    spf: SpfOutcome
    dkim: tuple[DkimOutcome, ...]
    dmarc: DmarcOutcome
    arc: ArcOutcome | None

    @property
    def from_invalid(self) -> bool:
        return len(self.header_from) != 1

    def fact_fields(self) -> dict:
        """The MessageFacts fields these results fill (spf, spf_domain, dkim, dmarc, dmarc_policy)."""
        return {
            "spf": str(self.spf.result),
            "spf_domain": self.spf.domain,
            "dkim": tuple(DkimSignatureResult(o.d, o.s, str(o.result), o.org) for o in self.dkim),
            "dmarc": str(self.dmarc.result),
            "dmarc_policy": str(self.dmarc.policy) if self.dmarc.policy else None,
        }


_parser = BytesHeaderParser(policy=compat32)


def from_domains(message: bytes) -> tuple[str, ...]:
    """Addresses of all mailboxes in all From headers (headers only, compat32: fast)."""
    headers = _parser.parsebytes(message[: header_end(message)])  # the body is never needed
    values = [str(v) for v in headers.get_all("From", [])]
    out = []
    for _name, addr in getaddresses(values):
        a = normalize_address(addr)
        if a:
            out.append(a)
    return tuple(out)


def authenticate(
    message: bytes,
    client_ip: str,
    helo: str | None,
    envelope_from: str | None,
    resolver: Resolver | None = None,
) -> AuthResults:
    """SPF on the connecting IP, every DKIM signature, ARC if present, then DMARC on top.

    `envelope_from` '' or '<>' is the null sender (SPF then checks HELO). Without a resolver
    the process-wide live one is used (refused when EDRULES_DNS=offline).
    """
    r = resolver if resolver is not None else default_resolver()
    ip = normalize_ip(client_ip) or client_ip
    sender = (envelope_from or "").strip().strip("<>")
    spf = check_spf(ip, helo, sender, r)
    dkim = tuple(verify_dkim(message, r))
    arc = verify_arc(message, r) if b"arc-seal" in message[: header_end(message)].lower() else None
    mailboxes = from_domains(message)
    domains = [a.rpartition("@")[2] if "@" in a else None for a in mailboxes]
    dmarc = evaluate_dmarc(domains, spf.result, spf.domain, [(o.d, o.result) for o in dkim], r)
    return AuthResults(ip, helo, sender, mailboxes, spf, dkim, dmarc, arc)
