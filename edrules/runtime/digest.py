"""Quarantine digests: one mail per user listing what was held for them since the last one,
with signed, expiring, single-use release and trust links to confirmation pages (a GET on a
link only shows the page; the POST from that page acts). What was listed is recorded, so a
schedule (daily, weekly, off; per user, per domain, or the default) never lists an item twice.
"""

from __future__ import annotations

import html
import smtplib
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Sequence
from urllib.parse import quote

from edrules.errors import EdrulesError
from edrules.runtime.store import QuarantineItem, QuarantineStore
from edrules.runtime.tokens import make_token

# Paths of the confirmation pages (edrules/server/): they take ?token=... and show a form.
RELEASE_PATH = "/quarantine/release"
TRUST_PATH = "/quarantine/trust"
FREQUENCIES = {"daily": timedelta(days=1), "weekly": timedelta(days=7), "off": None}
DEFAULT_SUBJECT = "*"  # the schedule key for everyone without a user or domain schedule
DEFAULT_FREQUENCY = "daily"
DEFAULT_LINK_TTL = 7 * 24 * 3600
# Categories a user may not let out alone (the pages refuse them too): listed without links.
NO_SELF_SERVICE = frozenset({"malware"})
_NO_LINK = "Malware is never released from a link: ask your administrator if you need it."
# A cron job started at the same hour each day finds the last digest a few seconds short of
# 24 h old; without slack it would send only every other day.
_SLACK = timedelta(hours=1)


def schedule_for(recipient: str, schedules: dict[str, str]) -> str:
    """User schedule, else the recipient domain's, else the default, else daily."""
    domain = recipient.rpartition("@")[2]
    for key in (recipient, domain, DEFAULT_SUBJECT):
        if key in schedules:
            return schedules[key]
    return DEFAULT_FREQUENCY


def set_schedule(store: QuarantineStore, frequency: str, *, user: str | None = None,
                 domain: str | None = None) -> str:
    if frequency not in FREQUENCIES:
        raise EdrulesError(f"schedule must be one of {', '.join(FREQUENCIES)} (got {frequency!r})")
    if user and domain:
        raise EdrulesError("give --user or --domain, not both")
    subject = (user or domain or DEFAULT_SUBJECT).strip().lower()
    if user and "@" not in subject:
        raise EdrulesError(f"--user must be an address (got {user!r})")
    store.set_schedule(subject, frequency)
    return subject


@dataclass(frozen=True, slots=True)
class DigestReport:
    recipient: str
    status: str  # 'sent' | 'not due' | 'off' | 'nothing new' | 'failed'
    item_ids: tuple[str, ...] = ()
    detail: str = ""


def _link(base_url: str, path: str, token: str) -> str:
    return f"{base_url.rstrip('/')}{path}?token={quote(token)}"


def _when(t: datetime | None) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if t else "(no date)"


def build_digest(items: Sequence[QuarantineItem], recipient: str, *, key: bytes, base_url: str,
                 sender: str, now: datetime, ttl_seconds: int = DEFAULT_LINK_TTL) -> EmailMessage:
    """The digest mail (plain text + HTML) for one recipient's items."""
    rows: list[tuple[QuarantineItem, str | None, str | None]] = []
    for it in items:
        if it.category in NO_SELF_SERVICE:  # listed so the user knows, but no link to let it out
            rows.append((it, None, None))
            continue
        rows.append((it, _link(base_url, RELEASE_PATH, make_token(key, "release", it.id, recipient, ttl_seconds)),
                     _link(base_url, TRUST_PATH, make_token(key, "trust", it.id, recipient, ttl_seconds))))
    expires = _when(now + timedelta(seconds=ttl_seconds))
    n = len(items)
    text = [f"{n} message{'s' if n != 1 else ''} addressed to {recipient} {'were' if n != 1 else 'was'} held in quarantine.",
            "Each link opens a confirmation page; nothing happens until you confirm there.",
            f"Links expire {expires} and work once.", ""]
    for it, rel, tru in rows:
        text += [f"From:    {it.header_from or it.envelope_from or '(unknown)'}",
                 f"Subject: {it.subject or '(no subject)'}",
                 f"Date:    {_when(it.date or it.quarantined_at)}",
                 f"Reason:  {it.reason}"]
        text += ([f"Release: {rel}", f"Trust sender: {tru}"] if rel else [_NO_LINK]) + [""]
    e = html.escape
    trs = "".join(
        f"<tr><td>{e(it.header_from or it.envelope_from or '(unknown)')}</td><td>{e(it.subject or '(no subject)')}</td>"
        f"<td>{e(_when(it.date or it.quarantined_at))}</td><td>{e(it.reason)}</td>"
        + (f"<td><a href=\"{e(rel)}\">Release</a> · <a href=\"{e(tru)}\">Trust sender</a></td></tr>" if rel
           else f"<td>{e(_NO_LINK)}</td></tr>")
        for it, rel, tru in rows)
    body = (f"<html><body><p>{n} message{'s' if n != 1 else ''} addressed to {e(recipient)} held in quarantine.</p>"
            "<p>Each link opens a confirmation page; nothing happens until you confirm there. "
            f"Links expire {e(expires)} and work once.</p>"
            "<table border=\"1\" cellpadding=\"4\" cellspacing=\"0\"><tr><th>Sender</th><th>Subject</th>"
            f"<th>Date</th><th>Reason</th><th></th></tr>{trs}</table></body></html>")
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = f"Quarantine digest: {n} new message{'s' if n != 1 else ''} held for you"
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to a digest
    msg.set_content("\n".join(text))
    msg.add_alternative(body, subtype="html")
    return msg


def send_digests(store: QuarantineStore, *, smtp: tuple[str, int], base_url: str, key: bytes,
                 sender: str | None = None, user: str | None = None, domain: str | None = None,
                 now: datetime | None = None, force: bool = False,
                 ttl_seconds: int = DEFAULT_LINK_TTL) -> list[DigestReport]:
    """Send every due digest (or only `user`'s / `domain`'s). force ignores the schedule's
    timing and 'off' but still never lists an item a previous digest listed."""
    now = now or datetime.now(timezone.utc)
    sender = sender or f"quarantine@{socket.getfqdn()}"
    schedules = store.schedules()
    recipients = store.recipients(state="quarantined")
    if user:
        recipients = [r for r in recipients if r == user.strip().lower()]
    if domain:
        d = domain.strip().lower().rstrip(".")
        recipients = [r for r in recipients if r.rpartition("@")[2] == d]
    reports = []
    for rcpt in recipients:
        freq = schedule_for(rcpt, schedules)
        if not force:
            if FREQUENCIES[freq] is None:
                reports.append(DigestReport(rcpt, "off"))
                continue
            last = store.last_digest(rcpt)
            if last is not None and now - last < FREQUENCIES[freq] - _SLACK:
                reports.append(DigestReport(rcpt, "not due", detail=f"{freq}; last sent {_when(last)}"))
                continue
        seen = store.digested_ids(rcpt)
        fresh = [it for it in store.list(recipients=[rcpt], state="quarantined", order="quarantined_at", limit=None)
                 if it.id not in seen]
        claimed = set(store.record_digest(rcpt, [it.id for it in fresh], now)) if fresh else set()
        items = [it for it in fresh if it.id in claimed]
        if not items:
            reports.append(DigestReport(rcpt, "nothing new"))
            continue
        msg = build_digest(items, rcpt, key=key, base_url=base_url, sender=sender, now=now, ttl_seconds=ttl_seconds)
        try:
            with smtplib.SMTP(smtp[0], smtp[1], timeout=30, local_hostname="edrules-digest") as s:
                s.send_message(msg, from_addr=sender, to_addrs=[rcpt])
        except (OSError, smtplib.SMTPException) as exc:
            store.forget_digest(rcpt, [it.id for it in items], now)
            reports.append(DigestReport(rcpt, "failed", detail=f"{type(exc).__name__}: {exc}"))
            continue
        store.audit("digest", "digest", "digest", None, f"{rcpt}: {len(items)} items")
        reports.append(DigestReport(rcpt, "sent", tuple(it.id for it in items)))
    return reports
