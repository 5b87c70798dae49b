"""Signed, expiring, single-use tokens for release/trust links (digests, confirmation pages).

A token is `payload.mac`, both base64url: payload = JSON {p: purpose, i: item id, r: recipient,
e: expiry (unix s), n: nonce}. The HMAC key is the gateway's release key with a purpose-bound
domain separator, so a token can never pass as a release header or vice versa. Checking a token
never changes state (pages show a confirmation on GET); `consume` on the POST makes it single-use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from edrules.errors import EdrulesError

PURPOSES = ("release", "trust")


class TokenError(EdrulesError):
    """A token refused: `reason` is 'expired', 'altered', 'used' or 'wrong purpose'."""

    def __init__(self, reason: str, message: str | None = None):
        super().__init__(message or f"link {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TokenClaims:
    purpose: str
    item_id: str
    recipient: str
    expires_at: datetime
    nonce: str

    @property
    def token_id(self) -> str:
        return self.nonce


def _b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _mac(key: bytes, payload: str) -> str:
    return _b64e(hmac.new(key, b"edrules-token/v1\0" + payload.encode(), hashlib.sha256).digest())


def make_token(key: bytes, purpose: str, item_id: str, recipient: str, ttl_seconds: int, *,
               now: float | None = None) -> str:
    if purpose not in PURPOSES:
        raise EdrulesError(f"token purpose must be one of {', '.join(PURPOSES)} (got {purpose!r})")
    body = {"p": purpose, "i": item_id, "r": recipient.lower(),
            "e": int((now if now is not None else time.time()) + ttl_seconds), "n": _b64e(os.urandom(16))}
    payload = _b64e(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
    return f"{payload}.{_mac(key, payload)}"


def check_token(key: bytes, token: str, purpose: str, *, now: float | None = None, store=None) -> TokenClaims:
    """The claims of a valid token; TokenError otherwise. Does not consume it (safe on GET);
    pass `store` to also refuse a token already used."""
    token = (token or "").strip()
    payload, sep, mac = token.partition(".")
    if not token.isascii() or not sep or not hmac.compare_digest(mac, _mac(key, payload)):
        raise TokenError("altered", "link altered or not ours")
    try:
        body = json.loads(_b64d(payload))
        claims = TokenClaims(str(body["p"]), str(body["i"]), str(body["r"]),
                             datetime.fromtimestamp(int(body["e"]), timezone.utc), str(body["n"]))
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise TokenError("altered", "link altered or not ours") from None
    if claims.purpose != purpose:
        raise TokenError("wrong purpose", f"this link is for {claims.purpose}, not {purpose}")
    if claims.expires_at.timestamp() < (now if now is not None else time.time()):
        raise TokenError("expired", "link expired")
    if store is not None and store.token_used(claims.nonce):
        raise TokenError("used", "link already used")
    return claims


def consume(store, claims: TokenClaims) -> None:
    """Mark the token used; TokenError('used') when someone already did (atomic in the store)."""
    if not store.use_token(claims.nonce, claims.purpose, claims.item_id, claims.expires_at):
        raise TokenError("used", "link already used")
