"""Write the gateway's own RFC 8601 Authentication-Results header value (via authres)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import authres
import authres.arc
import authres.dmarc

from edrules.errors import EdrulesError

if TYPE_CHECKING:
    from edrules.auth import AuthResults

# RFC 8601 2.2: authserv-id is a "value" (token or quoted-string); a hostname is the norm.
_AUTHSERV = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.\-_]*[A-Za-z0-9])?$")


def _comment(text: str) -> str:
    # Parentheses and backslashes would end or escape an RFC 5322 comment early; a reason's
    # own "(...)" and ";" become commas so it still reads as one sentence.
    text = re.sub(r"[\\\r\n]", " ", text.replace("(", ", ").replace(")", " ").replace(";", ","))
    text = re.sub(r"\s+", " ", text)
    return re.sub(r"\s*,[\s,]*", ", ", text).strip(" ,")


def format_authentication_results(authserv_id: str, results: "AuthResults") -> str:
    """The header *value* (no `Authentication-Results:` name): `id; spf=...; dkim=...; ...`."""
    if not _AUTHSERV.match(authserv_id or ""):
        raise EdrulesError(f"invalid authserv-id {authserv_id!r}: use the gateway's host name")
    parts: list[authres.BaseAuthenticationResult] = []
    spf = results.spf
    if spf is not None:
        kw = {"smtp_helo": results.helo or None}
        if spf.identity == "mailfrom":
            kw["smtp_mailfrom"] = results.envelope_from or None
        parts.append(authres.SPFAuthenticationResult(
            result=str(spf.result), result_comment=_comment(spf.explanation) or None, **kw))
    if not results.dkim:
        parts.append(authres.DKIMAuthenticationResult(result="none", result_comment="no signatures"))
    for sig in results.dkim:
        props = [authres.AuthenticationResultProperty("header", "b", sig.b)] if sig.b else None
        bits = f"{sig.key_bits}-bit key" if sig.key_bits else ""
        comment = ", ".join(x for x in (bits, _comment(sig.reason) if sig.result != "pass" else "") if x)
        parts.append(authres.DKIMAuthenticationResult(
            result=str(sig.result), result_comment=comment or None,
            header_d=sig.d, header_i=sig.i, header_s=sig.s, header_a=sig.algorithm, properties=props))
    if results.arc is not None:
        parts.append(authres.arc.ARCAuthenticationResult(result=str(results.arc.result)))
    dm = results.dmarc
    if dm is not None:
        comment = None
        if dm.record is not None and dm.published_policy is not None:
            comment = f"p={dm.published_policy.value} dis={(dm.policy or 'none')}"
        parts.append(authres.dmarc.DMARCAuthenticationResult(
            result=str(dm.result), result_comment=comment, header_from=dm.domain))
    if not parts:
        return f"{authserv_id}; none"
    # One result per folded line, as gateways usually stamp it; authres renders each result.
    return ";\r\n\t".join([authserv_id] + [str(p) for p in parts])
