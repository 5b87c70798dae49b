"""TOTP (pyotp) and its enrolment QR code (segno: pure Python, no Pillow)."""

from __future__ import annotations

import time

import pyotp
import segno

ISSUER = "edrules"


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, address: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=address, issuer_name=ISSUER)


def qr_svg_data_uri(uri: str) -> str:
    # An inline data: URI keeps the secret out of any URL the browser could cache or log.
    return segno.make(uri, error="m").svg_data_uri(scale=5, border=2)


def spaced(secret: str) -> str:
    """The text secret in groups of four, as authenticator apps show it."""
    return " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))


def totp_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step (30-s counter) at which `code` is valid, allowing one step of clock drift
    each way; None when it matches none. The caller refuses a step it has already accepted."""
    code = "".join(code.split())
    if not code.isdigit() or len(code) != 6:
        return None
    totp = pyotp.TOTP(secret)
    now = time.time() if now is None else now
    for drift in (0, -1, 1):
        t = now + drift * totp.interval
        if pyotp.utils.strings_equal(totp.at(t), code):
            return totp.timecode(_dt(t))
    return None


def _dt(t: float):
    import datetime as _d
    return _d.datetime.fromtimestamp(t, tz=_d.timezone.utc)
