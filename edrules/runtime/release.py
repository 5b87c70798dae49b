"""Release a quarantined item: re-inject it over SMTP to the next hop, for its one recipient,
exactly once, with an HMAC-signed header the milter honours (so it is not quarantined again).

The header binds item id, recipient, a fingerprint of the message and an expiry. The fingerprint
is over the From and Subject headers and the body, each canonicalised like DKIM "relaxed", rather
than over raw bytes: the MTA in front of the milter adds Received headers and may re-fold or
re-end lines, and the milter rebuilds the message from callbacks, so a byte hash would never
verify. What an attacker could change without breaking it (other headers) cannot turn a replayed
release into a different message: the body, From and Subject are what the user saw and released.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import smtplib
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from edrules.errors import EdrulesError, Location
from edrules.runtime.store import QuarantineItem, QuarantineStore

RELEASE_HEADER = "X-EDRules-Release"
DEFAULT_HEADER_TTL = 24 * 3600  # the next hop may queue the message a while before the milter sees it
_KEY_FILE = "release.key"
_WSP = re.compile(rb"[ \t]+")


def release_key(state_dir: str | Path) -> bytes:
    """The gateway's HMAC key (STATE/release.key, 0600), created on first use."""
    path = Path(state_dir) / _KEY_FILE
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{_KEY_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, base64.b64encode(os.urandom(32)) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never replaces a key another process created meanwhile
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    data = path.read_bytes().strip()
    if path.stat().st_mode & 0o077:
        raise EdrulesError("release key is readable by others: chmod 600 it", Location(str(path)))
    try:
        key = base64.b64decode(data, validate=True)
    except ValueError:
        raise EdrulesError("release key is not base64", Location(str(path))) from None
    if len(key) < 32:
        raise EdrulesError("release key is shorter than 32 bytes", Location(str(path)))
    return key


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _split(raw: bytes) -> tuple[list[bytes], bytes]:
    """(unfolded header lines, body) of a message with either line ending."""
    text = raw.replace(b"\r\n", b"\n")
    head, sep, body = text.partition(b"\n\n")
    if not sep:
        head, body = text, b""
    lines: list[bytes] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and lines:
            lines[-1] += b" " + line.strip()
        elif line:
            lines.append(line)
    return lines, body


def message_fingerprint(raw: bytes) -> str:
    """sha256 over relaxed-canonical From, Subject (all copies, in order) and body."""
    lines, body = _split(raw)
    h = hashlib.sha256()
    for line in lines:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name in (b"from", b"subject"):
            h.update(name + b":" + _WSP.sub(b" ", value).strip() + b"\n")
    h.update(b"\n")
    out = [_WSP.sub(b" ", ln).rstrip() for ln in body.split(b"\n")]
    while out and not out[-1]:
        out.pop()
    h.update(b"\n".join(out))
    return h.hexdigest()


def _mac(key: bytes, item_id: str, recipient: str, fingerprint: str, expires: int) -> str:
    msg = f"edrules-release-header/v1\0{item_id}\0{recipient.lower()}\0{fingerprint}\0{expires}".encode()
    return _b64(hmac.new(key, msg, hashlib.sha256).digest())


def sign_release_header(key: bytes, item: QuarantineItem, raw: bytes | None = None, *,
                        ttl_seconds: int = DEFAULT_HEADER_TTL, now: float | None = None) -> str:
    """The header value for re-injecting `item` (raw: its stored message)."""
    if raw is None:
        raise EdrulesError("sign_release_header needs the stored message bytes")
    exp = int((now if now is not None else time.time()) + ttl_seconds)
    fp = message_fingerprint(raw)
    return f"v=1; id={item.id}; r={item.recipient}; exp={exp}; fp={fp}; sig={_mac(key, item.id, item.recipient, fp, exp)}"


def parse_release_header(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in value.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep:
            out[k.strip()] = v.strip()
    return out


def verify_release_header(key: bytes, value: str, raw_without_header: bytes, recipient: str, *,
                          now: float | None = None) -> bool:
    """True when `value` is a release header we signed, not expired, for this recipient and this
    message (raw_without_header: the message as the milter sees it, minus the release header)."""
    if not value.isascii():  # ours are ASCII; compare_digest refuses anything else
        return False
    f = parse_release_header(value)
    try:
        exp = int(f["exp"])
        item_id, rcpt, fp, sig = f["id"], f["r"], f["fp"], f["sig"]
    except (KeyError, ValueError):
        return False
    if f.get("v") != "1" or rcpt.lower() != recipient.strip().strip("<>").lower():
        return False
    if exp < (now if now is not None else time.time()):
        return False
    if not hmac.compare_digest(sig, _mac(key, item_id, rcpt, fp, exp)):
        return False
    return hmac.compare_digest(fp, message_fingerprint(raw_without_header))


def strip_release_headers(raw: bytes) -> tuple[list[str], bytes]:
    """(values of every release header, the message without them): what the milter verifies,
    and what it removes before delivery so the header never leaks past the gateway."""
    lines = raw.split(b"\n")
    values: list[str] = []
    out: list[bytes] = []
    i, in_head, dropping = 0, True, False
    for line in lines:
        if in_head:
            if line in (b"", b"\r"):
                in_head, dropping = False, False
                out.append(line)
                continue
            if dropping and line[:1] in (b" ", b"\t"):
                values[-1] += " " + line.strip().decode("latin-1")
                continue
            dropping = False
            name, sep, value = line.partition(b":")
            if sep and name.strip().lower() == RELEASE_HEADER.lower().encode():
                values.append(value.strip().decode("latin-1"))
                dropping = True
                continue
        out.append(line)
        i += 1
    return values, b"\n".join(out)


def released_for(key: bytes, raw: bytes, recipients: list[str] | tuple[str, ...], *,
                 now: float | None = None) -> tuple[set[str], bytes]:
    """For the milter: (recipients a valid release header covers, the message without any
    release header). Every copy of the header is removed whatever it says, so a header sent
    from outside is stripped and buys nothing; only one we signed, for this message and that
    recipient, unexpired, counts."""
    values, rest = strip_release_headers(raw)
    ok = {r for r in recipients for v in values if verify_release_header(key, v, rest, r, now=now)}
    return ok, rest


@dataclass(frozen=True, slots=True)
class ReleaseOutcome:
    item_id: str
    recipient: str
    status: str  # 'released' | 'already released' | 'deleted' | 'not found' | 'failed'
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "released"


def parse_hostport(text: str, what: str = "--next-hop") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EdrulesError(f"{what} must be HOST:PORT (got {text!r})")
    return host.strip("[]"), int(port)


UNCONFIRMED_AFTER = timedelta(minutes=10)


def release(store: QuarantineStore, item_id: str, *, next_hop: tuple[str, int], actor: str, how: str,
            key: bytes, timeout: float = 30.0, retry_unconfirmed: bool = False,
            unconfirmed_after: timedelta = UNCONFIRMED_AFTER) -> ReleaseOutcome:
    """Re-inject one item for its one recipient; exactly once however many callers race.

    The claim (store.mark_released) happens before sending: only the caller that won it sends.
    A failed send gives the claim back so it can be retried. A process killed between claim and
    the next hop's answer leaves the release unconfirmed (release_confirmed False): nothing is
    sent twice on its own; retry_unconfirmed (an operator's choice, `--retry-unconfirmed`) claims
    it again after UNCONFIRMED_AFTER, accepting that the lost attempt may have got through."""
    item = store.get(item_id)
    if item is None:
        return ReleaseOutcome(item_id, "", "not found")
    if item.state == "deleted":
        return ReleaseOutcome(item_id, item.recipient, "deleted")
    claimed = store.mark_released(item_id, actor, how) or (
        retry_unconfirmed and store.reclaim_unconfirmed(item_id, actor, how, unconfirmed_after))
    if not claimed:
        current = store.get(item_id)
        if current is not None and current.state == "deleted":
            return ReleaseOutcome(item_id, item.recipient, "deleted")
        detail = ""
        if current is not None and current.release_confirmed is False:
            detail = (f"unconfirmed: claimed by {current.released_by} at {current.released_at:%Y-%m-%d %H:%M:%S} UTC "
                      "and not yet accepted by the next hop")
        return ReleaseOutcome(item_id, item.recipient, "already released", detail)
    try:
        raw = store.raw(item_id)
        header = sign_release_header(key, item, raw)
        # SMTP carries CRLF lines (smtplib sends bytes as given): a message stored with bare LF
        # would reach the next hop as one over-long line. The header's MAC reads normalised
        # line ends, so it still verifies.
        data = re.sub(rb"\r?\n", b"\r\n", f"{RELEASE_HEADER}: {header}\n".encode() + raw)
        with smtplib.SMTP(next_hop[0], next_hop[1], timeout=timeout, local_hostname="edrules-release") as smtp:
            refused = smtp.sendmail(item.envelope_from or "", [item.recipient], data)
        if refused:  # only possible with several recipients; kept for clarity
            raise smtplib.SMTPRecipientsRefused(refused)
    except (OSError, smtplib.SMTPException, EdrulesError) as exc:
        detail = f"{type(exc).__name__}: {exc}"
        store.unmark_released(item_id, actor, how, detail)
        return ReleaseOutcome(item_id, item.recipient, "failed", detail)
    store.confirm_release(item_id, actor, how, f"to {item.recipient} via {next_hop[0]}:{next_hop[1]}")
    return ReleaseOutcome(item_id, item.recipient, "released", f"via {next_hop[0]}:{next_hop[1]}")


def default_actor(how: str = "cli") -> str:
    user = os.environ.get("SUDO_USER") or os.environ.get("USER") or str(os.getuid())
    return f"{user}@{socket.gethostname()}" if how == "cli" else user


def redeem_token(store: QuarantineStore, key: bytes, token: str, purpose: str, *, actor: str, how: str = "link",
                 next_hop: tuple[str, int] | None = None, overrides=None):
    """What a confirmation page's POST does: check the token, bind it to its item and
    recipient, use it up (single use), then release (ReleaseOutcome) or trust (TrustChoice).
    Raises edrules.runtime.tokens.TokenError when the link is expired, altered or used."""
    from edrules.runtime.tokens import TokenError, check_token, consume

    claims = check_token(key, token, purpose, store=store)
    item = store.get(claims.item_id)
    if item is None or item.recipient != claims.recipient:
        raise TokenError("altered", "link does not match a quarantined item")
    consume(store, claims)
    if purpose == "release":
        if next_hop is None:
            raise EdrulesError("release needs the next hop (HOST:PORT)")
        return release(store, item.id, next_hop=next_hop, actor=actor, how=how, key=key)
    from edrules.runtime.overrides import Overrides, trust_item

    return trust_item(store, overrides or Overrides(getattr(store, "state_dir")), item.id, actor, how)
