"""Build a draft's RFC 5322 bytes and DKIM-sign them with dkimpy at the message's own time."""

from __future__ import annotations

import base64
import io
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime

import dkim
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import HASH_ALGORITHMS, parse_pem_private_key

# LF line ends, as maildir and .eml exports store mail; 78-column folding like real MUAs.
_POLICY = policy.SMTP.clone(linesep="\n", max_line_length=78)


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    maintype: str
    subtype: str
    content: bytes


@dataclass(frozen=True, slots=True)
class Content:
    """What the sender's software writes: headers in order, bodies, optional attachment."""

    headers: tuple[tuple[str, str], ...]
    text: str
    html: str | None = None
    attachment: Attachment | None = None


def build(content: Content, sent: datetime, tz_minutes: int, message_id: str, boundary: str) -> bytes:
    msg = EmailMessage(policy=_POLICY)
    local = sent.astimezone(timezone(timedelta(minutes=tz_minutes)))
    for name, value in content.headers:
        msg[name] = value
    msg["Date"] = format_datetime(local)
    msg["Message-ID"] = message_id
    msg["MIME-Version"] = "1.0"
    msg.set_content(content.text, cte=_cte(content.text))
    if content.html is not None:
        msg.add_alternative(content.html, subtype="html", cte=_cte(content.html))
    if content.attachment is not None:
        a = content.attachment
        msg.add_attachment(a.content, maintype=a.maintype, subtype=a.subtype, filename=a.filename)
    # EmailMessage picks random boundaries; fixed ones keep the output reproducible.
    for i, part in enumerate(msg.walk()):
        if part.is_multipart():
            part.set_boundary(f"{boundary}{i}")
    return msg.as_bytes(policy=_POLICY)


def _cte(text: str) -> str:
    return "7bit" if text.isascii() else "quoted-printable"


def zip_bytes(name: str, payload: bytes, when: datetime) -> bytes:
    """A zip with a fixed timestamp so the archive bytes are reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        zf.writestr(info, payload)
    return buf.getvalue()


class _DatedDKIM(dkim.DKIM):
    """dkimpy's signer with t= taken from the message time instead of the clock.

    DKIM.sign() stamps time.time(), which would make every run differ; this repeats its
    field assembly with a given timestamp and leaves hashing and RSA to dkimpy.
    """

    def sign_at(self, timestamp: int, selector: bytes, domain: bytes, privkey: bytes) -> bytes:
        pk = parse_pem_private_key(privkey)
        canon = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
        include = tuple(x.lower() for x in self.default_sign_headers())
        self.include_headers = include
        self.hasher = HASH_ALGORITHMS[self.signature_algorithm]
        bodyhash = base64.b64encode(self.hasher(canon.canonicalize_body(self.body)).digest())
        fields = [
            (b"v", b"1"),
            (b"a", self.signature_algorithm),
            (b"c", canon.to_c_value()),
            (b"d", domain),
            (b"i", b"@" + domain),
            (b"q", b"dns/txt"),
            (b"s", selector),
            (b"t", str(timestamp).encode("ascii")),
            (b"h", b" : ".join(include)),
            (b"bh", bodyhash),
            (b"b", b"0" * 60),
        ]
        return b"DKIM-Signature: " + self.gen_header(fields, include, canon, b"DKIM-Signature", pk)


def sign(message: bytes, domain: str, selector: str, privkey: bytes, when: datetime) -> bytes:
    """Prepend a DKIM-Signature for (domain, selector), as the signing MTA does."""
    signer = _DatedDKIM(message, linesep=b"\n")
    header = signer.sign_at(int(when.timestamp()), selector.encode(), domain.encode(), privkey)
    return header + message
