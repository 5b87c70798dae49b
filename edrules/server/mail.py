"""The passwordless sign-in e-mail: a magic link and the same code to type, over SMTP to the configured relay."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

from edrules.errors import EdrulesError


def send_login_code(relay: tuple[str, int] | None, mail_from: str, to: str, link: str, code: str) -> None:
    if relay is None:
        raise EdrulesError("no SMTP relay configured for sign-in codes (edrules serve --smtp HOST:PORT)")
    msg = EmailMessage()
    msg["From"] = mail_from
    msg["To"] = to
    msg["Subject"] = f"Your edrules sign-in code: {code[:4]} {code[4:]}"
    msg.set_content(
        "Someone (hopefully you) asked to sign in to edrules with this address.\n\n"
        f"Open this link and press \"Sign in\":\n{link}\n\n"
        f"or type this code on the sign-in page: {code[:4]} {code[4:]}\n\n"
        "The link and the code work once, for 10 minutes. If you did not ask, ignore this mail:\n"
        "nobody can sign in without it.\n")
    with smtplib.SMTP(relay[0], relay[1], timeout=10) as s:
        s.send_message(msg)
