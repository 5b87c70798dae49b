"""Read Authentication-Results (RFC 8601) and Received-SPF (RFC 7208) header fields.

Hand-written on purpose: `authres` (the reference, used by tests/test_ingest_auth.py to check
this parser field by field on every corpus header) costs about 1 ms per header, four times
the whole per-message budget of ingest, and rejects Microsoft 365's headers, which have no
authserv-id. This tokenizer follows the same grammar and also keeps comments (`p=REJECT`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Authserv-id given to headers that carry none (Microsoft 365 writes `spf=pass (...) ...`).
# Parentheses mark a comment in RFC 8601, so no real authserv-id can be spelled like this.
NO_AUTHSERV_ID = "(none)"

RESULT_WORDS = frozenset(
    {"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"}
)
# Vendor and legacy words -> RFC 8601 word. Microsoft's bestguesspass means no DMARC record.
_RESULT_MAP = {
    "hardfail": "fail",
    "bestguesspass": "none",
    "timeout": "temperror",
    "temperr": "temperror",
    "permerr": "permerror",
    "error": "temperror",
    "unknown": "permerror",
    "nxdomain": "none",
}

_METHOD = re.compile(r"\s*([A-Za-z0-9_-]+)(?:\s*/\s*\d+)?\s*=\s*([A-Za-z0-9_-]*)")
_PROP = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_.-]+)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^\s;]*)")
_KV = re.compile(r"([A-Za-z0-9_.-]+)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^\s;]*)")
_POLICY = re.compile(r"\bp=([A-Za-z]+)")


def normalize_result(word: str | None) -> str | None:
    """Lower-case RFC 8601 result word; vendor words mapped; unknown words -> None."""
    if not word:
        return None
    w = word.strip().lower()
    if w in RESULT_WORDS:
        return w
    return _RESULT_MAP.get(w)


@dataclass(frozen=True, slots=True)
class MethodResult:
    method: str  # lower-case: spf, dkim, dmarc, arc, compauth, ...
    result: str | None  # normalised word, None if not interpretable
    raw_result: str
    comment: str
    props: dict[str, str] = field(default_factory=dict)  # 'header.d' -> value (as written)


@dataclass(frozen=True, slots=True)
class AuthResults:
    authserv_id: str  # lower-case; NO_AUTHSERV_ID when the header has none
    results: tuple[MethodResult, ...]
    position: int = 0


_SPECIAL = re.compile(r'[();"\\]')


def _split(value: str) -> list[tuple[str, str]]:
    """Split on ';' outside comments/quotes; each part -> (text without comments, comments)."""
    parts: list[tuple[str, str]] = []
    text: list[str] = []
    comments: list[str] = []
    depth = 0
    quoted = False
    pos = 0  # start of the not yet copied run
    skip_to = -1
    for m in _SPECIAL.finditer(value):
        i = m.start()
        if i < skip_to:
            continue  # character escaped by a backslash
        ch = value[i]
        run = value[pos:i]
        if ch == "\\":
            (comments if depth else text).append(run + value[i + 1 : i + 2])
            pos = skip_to = i + 2
            continue
        if quoted:
            text.append(run + ch)
            pos = i + 1
            quoted = ch != '"'
            continue
        if depth:
            comments.append(run)
            pos = i + 1
            if ch == "(":
                depth += 1
                comments.append(ch)
            elif ch == ")":
                depth -= 1
                if depth:
                    comments.append(ch)
                else:
                    comments.append(" ")
                    text.append(" ")
            else:
                comments.append(ch)
            continue
        text.append(run)
        pos = i + 1
        if ch == "(":
            depth = 1
        elif ch == '"':
            quoted = True
            text.append(ch)
        elif ch == ";":
            parts.append(("".join(text), "".join(comments).strip()))
            text, comments = [], []
        else:  # a stray ')' outside any comment
            text.append(" ")
    (comments if depth else text).append(value[pos:])
    parts.append(("".join(text), "".join(comments).strip()))
    return parts


def _unquote(v: str) -> str:
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return v[1:-1]
    return v


def parse_authentication_results(value: str, position: int = 0) -> AuthResults | None:
    """Parse one Authentication-Results value; None when there is no usable structure."""
    parts = _split(value)
    head, _ = parts[0]
    head = head.strip()
    if not head and len(parts) == 1:
        return None
    if _METHOD.match(head) and "=" in head:
        authserv = NO_AUTHSERV_ID
        resinfos = parts
    else:
        authserv = head.split()[0].lower() if head.split() else ""
        if not authserv:
            return None
        resinfos = parts[1:]
    results: list[MethodResult] = []
    for text, comment in resinfos:
        m = _METHOD.match(text)
        if not m:
            continue
        method = m.group(1).lower()
        if method == "none":
            continue
        rest = text[m.end():]
        props = {f"{p.lower()}.{q.lower()}": _unquote(v) for p, q, v in _PROP.findall(rest)}
        for k, v in _KV.findall(rest):
            if "." not in k:
                props.setdefault(k.lower(), _unquote(v))
        results.append(MethodResult(method, normalize_result(m.group(2)), m.group(2), comment, props))
    return AuthResults(authserv, tuple(results), position)


def dmarc_policy(result: MethodResult) -> str | None:
    """p= from the comment or a policy.* property (Google, OpenDMARC, ExchangeDefender)."""
    for key in ("policy.published-domain-policy", "policy.dmarc", "p"):
        if result.props.get(key):
            return result.props[key].lower()
    m = _POLICY.search(result.comment)
    return m.group(1).lower() if m else None


@dataclass(frozen=True, slots=True)
class ReceivedSpf:
    result: str | None
    receiver: str | None  # lower-case; from receiver= or the comment's leading 'host:'
    client_ip: str | None
    helo: str | None
    envelope_from: str | None
    position: int = 0


_SPF_COMMENT_HOST = re.compile(r"^\s*([A-Za-z0-9._-]+):")


def parse_received_spf(value: str, position: int = 0) -> ReceivedSpf | None:
    v = value.strip()
    if not v:
        return None
    word, _, rest = v.partition(" ")
    comment = ""
    rest = rest.strip()
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    comment, rest = rest[1:i], rest[i + 1 :]
                    break
    kv = {k.lower(): _unquote(val) for k, val in _KV.findall(rest)}
    receiver = kv.get("receiver")
    if not receiver:
        cm = _SPF_COMMENT_HOST.match(comment)
        receiver = cm.group(1) if cm else None
    return ReceivedSpf(
        result=normalize_result(word.rstrip(";")),
        receiver=receiver.lower().rstrip(".") if receiver else None,
        client_ip=kv.get("client-ip") or None,
        helo=kv.get("helo") or None,
        envelope_from=kv.get("envelope-from"),
        position=position,
    )
