"""Build a draft's RFC 5322 bytes and DKIM-sign them with dkimpy at the message's own time."""

from __future__ import annotations

import base64
import io
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email import message_from_string, policy
from email.charset import QP, Charset
from email.header import Header
from email.mime.application import MIMEApplication
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr, getaddresses

import dkim
from dkim.canonicalization import CanonicalizationPolicy
from dkim.crypto import HASH_ALGORITHMS, parse_pem_private_key

# LF line ends, as maildir and .eml exports store mail. compat32 with headers encoded here is
# several times faster than the default policy's header registry, which matters at ~500 messages.
_POLICY = policy.compat32.clone(linesep="\n")
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "reply-to", "sender"})
_QP = Charset("utf-8")
_QP.body_encoding = QP


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
    report: str | None = None  # message/delivery-status fields: makes a DSN (multipart/report)


def build(content: Content, sent: datetime, tz_minutes: int, message_id: str, boundary: str) -> bytes:
    local = sent.astimezone(timezone(timedelta(minutes=tz_minutes)))
    lines = [f"{name}: {encode_header(name, value)}" for name, value in content.headers]
    lines += [f"Date: {format_datetime(local)}", f"Message-ID: {message_id}"]
    body = _text_part(content.text, "plain")
    if content.html is not None:
        body = _multipart("alternative", [body, _text_part(content.html, "html")], boundary + "1")
    if content.report is not None:
        status = MIMEBase("message", "delivery-status", policy=_POLICY)
        # the generator writes message/delivery-status as a list of header blocks
        status.set_payload([message_from_string(block + "\n", policy=_POLICY)
                            for block in content.report.strip("\n").split("\n\n")])
        body = _multipart("report", [body, status], boundary + "2")
        body.set_param("report-type", "delivery-status")
    if content.attachment is not None:
        a = content.attachment
        att = MIMEApplication(a.content, a.subtype, policy=_POLICY) if a.maintype == "application" else None
        if att is None:
            raise ValueError(f"unsupported attachment type {a.maintype}/{a.subtype}")
        att.add_header("Content-Disposition", "attachment", filename=a.filename)
        att.set_param("name", a.filename)
        body = _multipart("mixed", [body, att], boundary + "0")
    if "MIME-Version" not in body:
        body["MIME-Version"] = "1.0"
    return ("\n".join(lines) + "\n").encode("ascii") + body.as_bytes(policy=_POLICY)


def encode_header(name: str, value: str) -> str:
    """RFC 2047-encode what is not ASCII: display names in address fields, else the whole value."""
    if value.isascii():
        return value
    if name.lower() in _ADDRESS_HEADERS:
        return ", ".join(
            formataddr((n, a), charset="utf-8") if n else f"<{a}>" for n, a in getaddresses([value])
        )
    return Header(value, "utf-8", header_name=name).encode()


def _text_part(text: str, subtype: str) -> MIMEText:
    return MIMEText(text, subtype, "us-ascii" if text.isascii() else _QP, policy=_POLICY)


def _multipart(subtype: str, parts: list, boundary: str) -> MIMEMultipart:
    # fixed boundaries: email picks random ones, which would make every run differ
    return MIMEMultipart(subtype, boundary=boundary, _subparts=parts, policy=_POLICY)


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
