"""ARC (RFC 8617) chain validation and sealing through dkimpy, keys served by a Resolver."""

from __future__ import annotations

from dataclasses import dataclass

import dkim as dkimpy

from edrules.auth.dkim import MIN_RSA_BITS, _quiet, usable_key
from edrules.auth.resolver import DnsError, NXDomain, PermError, Resolver
from edrules.errors import EdrulesError
from edrules.facts import AuthResult


@dataclass(frozen=True, slots=True)
class ArcOutcome:
    """Chain validation status (RFC 8617 5.2): pass, fail or none, with the newest sealer."""

    result: AuthResult
    instances: int
    reason: str
    sealer: str | None = None  # d= of the newest ARC-Seal
    oldest_pass: int | None = None  # lowest instance whose AMS still validates (RFC 8617 5.2)
    # An upstream sealer already recorded cv=fail: the chain is dead and MUST NOT be sealed
    # again (RFC 8617 5.1.2); the ValiMail suite writes this state as an empty cv.
    terminated: bool = False


class _ArcTempError(Exception):
    pass


def _arc_dnsfunc(resolver: Resolver):
    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        qname = name.decode("ascii", "replace").rstrip(".")
        try:
            records = resolver.txt(qname)
        except (NXDomain, PermError):
            return None  # dkimpy then reports the set as not validating: chain fails
        except DnsError as exc:
            raise _ArcTempError(str(exc)) from None
        key = usable_key(qname, records)
        # A record dkimpy must not see (s=web, v=DKIM2, junk) fails that set, not the verifier.
        return key.for_dkimpy() if not isinstance(key, str) else None

    return lookup


def verify_arc(message: bytes, resolver: Resolver) -> ArcOutcome:
    """Validate the ARC chain of `message`. No ARC sets gives `none`."""
    try:
        arc = dkimpy.ARC(message, logger=_quiet, minkey=MIN_RSA_BITS)
        cv, results, reason = arc.verify(dnsfunc=_arc_dnsfunc(resolver))
    except _ArcTempError as exc:
        # RFC 8617 registers only none/pass/fail for arc; an unreachable key fails the chain
        # for now, and the reason says it was temporary so a caller may retry.
        return ArcOutcome(AuthResult.FAIL, 0, f"temporary DNS error: {exc}")
    except (dkimpy.DKIMException, IndexError) as exc:
        # IndexError: dkimpy's parser on a header block that starts with a continuation line
        return ArcOutcome(AuthResult.FAIL, 0, f"unparsable ARC chain: {exc}")
    instances = max((r.get("instance", 0) for r in results), default=0)
    sealer = results[0].get("as-domain").decode() if results and results[0].get("as-domain") else None
    oldest = None
    for r in sorted(results, key=lambda r: r.get("instance", 0)):
        if r.get("ams-valid"):
            oldest = r["instance"]
            break
    if cv == dkimpy.CV_Pass:
        return ArcOutcome(AuthResult.PASS, instances, reason, sealer, oldest)
    if cv == dkimpy.CV_None:
        return ArcOutcome(AuthResult.NONE, 0, reason)
    # cv None means an earlier sealer already said cv=fail: the chain stays failed.
    return ArcOutcome(AuthResult.FAIL, instances, reason, sealer, oldest, terminated=cv is None)


def seal_arc(
    message: bytes,
    selector: str,
    domain: str,
    private_key_pem: bytes | str,
    authserv_id: str,
    timestamp: int | None = None,
    headers: list[str] | None = None,
    standardize: bool = False,
) -> list[bytes]:
    """The next ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results lines)
    to prepend. The message must carry this ADMD's Authentication-Results (authserv_id),
    which dkimpy copies into the AAR and from which it takes the chain status.
    `headers` picks the signed header fields; `standardize` writes tags in the fixed layout
    of the ValiMail signing suite (alphabetical, unfolded) so output is comparable."""
    key = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
    try:
        return dkimpy.arc_sign(
            message, selector.encode(), domain.encode(), key, authserv_id.encode(),
            include_headers=[h.encode() for h in headers] if headers else None,
            timestamp=timestamp, logger=_quiet, standardize=standardize,
        )
    except dkimpy.DKIMException as exc:
        raise EdrulesError(f"cannot ARC-seal: {exc}") from None
