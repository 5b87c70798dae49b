"""Split a raw message into unfolded header fields, tolerating pastes and broken mail."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.utils import getaddresses

# Patterns start with a literal '\n' so the regex engine can scan with memchr.
_BLANK_LINE = re.compile(rb"\n[ \t]*\r?\n")
# A single field longer than this is cut (a 1 MB Subject must not stall every later step).
MAX_FIELD_CHARS = 65536
MAX_FIELDS = 2000


@dataclass(frozen=True, slots=True)
class HeaderBlock:
    """Unfolded (name, value) fields in message order; names keep their spelling."""

    fields: tuple[tuple[str, str], ...]
    header_bytes: int
    has_body: bool
    warnings: tuple[str, ...]
    index: dict[str, list[int]]  # lower-case name -> field positions, top first
    # position -> the value before a repair joined a lost-fold or no-break-space line onto it
    # (what an MTA would have delivered: it ends the header at such a line)
    original: dict[int, str] = field(default_factory=dict)

    def get_all(self, lname: str) -> list[tuple[int, str]]:
        """(index, value) of every field whose lower-cased name is lname, top first."""
        return [(i, self.fields[i][1]) for i in self.index.get(lname, ())]

    def first(self, lname: str) -> str | None:
        pos = self.index.get(lname)
        return self.fields[pos[0]][1] if pos else None


# RFC 5322 field name: printable ASCII except colon; obsolete syntax allows blanks before ':'.
_FIELD_S = re.compile(r"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_LOGICAL = re.compile(r"\n(?![ \t])")
# A line that is neither a field nor a continuation sends parsing down the careful path.
_BAD_LINE = re.compile(r"\n(?![ \t]|[\x21-\x39\x3b-\x7e]+[ \t]*:|\r?$)")
_UNFOLD = re.compile(r"\n(?=[ \t])")
_NBSP_FOLD = re.compile(r"(^|\n)\xa0+")
# Marks where a repair joined a line onto a field (never left in a value: see _finish).
_REPAIR = "\x1d"


def _decode_block(block: bytes, warnings: list[str]) -> str:
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        # 8-bit headers with no declared charset: per line, UTF-8 where valid, else latin-1
        # (never fails and keeps every byte visible).
        warnings.append("8bit-header")
        out = []
        for line in block.split(b"\n"):
            try:
                out.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(line.decode("latin-1"))
        return "\n".join(out)


def split_header_block(raw: bytes) -> HeaderBlock:
    """Header fields of a message or of a pasted header dump.

    A line without a colon that is not indented is a continuation whose folding whitespace
    was lost (typical of pastes) when another header field follows it; otherwise it starts
    the body (a message missing its blank separator line). Pastes that fold with no-break
    spaces are unfolded like ordinary folding.
    """
    warnings: list[str] = []
    start = 0
    # Leading blank lines come from pastes; skip them rather than reading an empty header.
    while start < len(raw) and raw[start] in b" \t\r\n":
        start += 1
    m = _BLANK_LINE.search(raw, start)
    end = m.start() if m else len(raw)
    if end and raw[end - 1 : end] == b"\r":
        end -= 1
    has_body = m is not None and m.end() < len(raw)
    text = _decode_block(raw[start:end], warnings)
    # NUL and the ASCII record/unit separators (used to ship fields to DuckDB) never occur
    # in real header text; hostile input gets U+FFFD instead.
    for ch in ("\x00", "\x1e", "\x1f", _REPAIR):
        if ch in text:
            text = text.replace(ch, "\ufffd")
    if "\xa0" in text:
        _note_nbsp_folds(text, warnings)
        text = _NBSP_FOLD.sub(lambda mm: mm.group(1) + " " + (_REPAIR if mm.group(1) else ""), text)
    if _BAD_LINE.search(text) is None and _FIELD_S.match(text):
        # Fast path (nearly every message): every line is a field or a continuation.
        unfolded = _UNFOLD.sub("", text)
        if "\r" in unfolded:
            unfolded = unfolded.replace("\r", "")
        pairs = []
        for line in unfolded.split("\n"):
            if line:
                name, _, value = line.partition(":")
                pairs.append((name.rstrip(), value.strip()))
        if len(pairs) > MAX_FIELDS:
            pairs = pairs[:MAX_FIELDS]
            warnings.append("too-many-fields")
        return _finish(pairs, end, has_body, warnings, len(text) > MAX_FIELD_CHARS, _REPAIR in text)
    chunks = _LOGICAL.split(text)
    names: list[str] = []
    values: list[str] = []
    n = len(chunks)
    for i in range(n):
        chunk = chunks[i]
        fm = _FIELD_S.match(chunk)
        if fm:
            if len(names) >= MAX_FIELDS:
                warnings.append("too-many-fields")
                has_body = True
                break
            names.append(fm.group(1))
            values.append(chunk[fm.end():])
            continue
        if not chunk.strip():
            continue
        if chunk[0] in " \t":
            warnings.append("leading-continuation")
            continue
        if names and (i + 1 >= n or _FIELD_S.match(chunks[i + 1])):
            values[-1] += " " + _REPAIR + chunk
            warnings.append(f"unfolded-line:{names[-1]}")
            continue
        if names:
            warnings.append(f"no-separator:{names[-1]}")
        has_body = True
        break
    pairs = [(name, value.replace("\r", "").replace("\n", "").strip()) for name, value in zip(names, values)]
    return _finish(pairs, end, has_body, warnings, True, True)


def _note_nbsp_folds(text: str, warnings: list[str]) -> None:
    """Warn `nbsp-fold:<field>` for each field continued by a no-break-space line: a repair
    an MTA never made (extract.py holds a From repaired this way invalid in mail)."""
    current = None
    for line in text.split("\n"):
        if line.startswith("\xa0"):
            if current is not None and f"nbsp-fold:{current}" not in warnings:
                warnings.append(f"nbsp-fold:{current}")
        elif line and line[0] not in " \t":
            fm = _FIELD_S.match(line)
            current = fm.group(1) if fm else None


def _finish(
    pairs: list[tuple[str, str]], end: int, has_body: bool, warnings: list[str], maybe_long: bool,
    repaired: bool = False,
) -> HeaderBlock:
    original: dict[int, str] = {}
    if repaired:
        for pos, (name, value) in enumerate(pairs):
            if _REPAIR in value:
                original[pos] = value[: value.index(_REPAIR)].strip()
                pairs[pos] = (name, value.replace(_REPAIR, ""))
    if maybe_long:  # only a block longer than the cap can hold an over-long field
        for pos, (name, value) in enumerate(pairs):
            if len(value) > MAX_FIELD_CHARS:
                pairs[pos] = (name, value[:MAX_FIELD_CHARS])
                warnings.append("long-field")
    index: dict[str, list[int]] = {}
    for pos, lname in enumerate([name.lower() for name, _ in pairs]):
        got = index.get(lname)
        if got is None:
            index[lname] = [pos]
        else:
            got.append(pos)
    return HeaderBlock(tuple(pairs), end, has_body, tuple(warnings), index, original)


def decode_words(value: str | None) -> str | None:
    """RFC 2047 decoding that never raises: broken encoded-words stay as written."""
    if value is None:
        return None
    if "=?" not in value:
        return " ".join(value.split())
    try:
        out = " ".join(str(make_header(decode_header(value))).split())
    except (UnicodeError, LookupError, ValueError, AssertionError, IndexError):
        return " ".join(value.split())
    # Decoded words may carry NULs or lone surrogates (unknown-8bit); Arrow needs valid UTF-8.
    if "\x00" in out:
        out = out.replace("\x00", "\ufffd")
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:
        out = out.encode("utf-8", "replace").decode("utf-8")
    return out


_ATOMS = r"[^<>\s,;:()\"\\@]+"
# One list element: optional display name (quoted or plain words), then <addr>, or a bare addr.
_LIST_ITEM = re.compile(
    rf"\s*(?:(?:\"((?:[^\"\\]|\\.)*)\"|([^\"<>,;:()\\@]*?))\s*<({_ATOMS}@{_ATOMS})>"
    rf"|({_ATOMS}@{_ATOMS})(?:\s*\(([^()\\]*)\))?)\s*(?:,\s*|$)|\s*,\s*"
)


# Comments nest (RFC 5322 3.2.2) and the stdlib parses them recursively: a From of 50,000
# '(' would raise RecursionError. No real header nests deeper than a few levels.
MAX_COMMENT_DEPTH = 32
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")


def comment_depth(value: str) -> int:
    """Deepest nesting of parentheses outside quoted strings (escapes honoured)."""
    if "(" not in value:
        return 0
    depth = deepest = 0
    for ch in _QUOTED.sub("", value):
        if ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")" and depth:
            depth -= 1
    return deepest


_PLAIN_FROM = re.compile(r'[^<>()";:,\\]*(?:<[^<>()";:,\\]*>)?\s*')


def mailbox_syntax_ok(value: str) -> bool:
    """The structure an address field must have before anything is read from it: balanced
    quotes and comments, no deeper nesting than MAX_COMMENT_DEPTH, no group or source route
    (`:` or `;` outside quotes and comments), and at most one `<...>` per mailbox with `<`
    before `>`. `<<a@b>>`, an unclosed `<` or `(` are not repaired
    into an address a DMARC verifier never saw."""
    if _PLAIN_FROM.fullmatch(value):
        return True  # the common `Name <a@b>` / `a@b` needs none of the work below
    if comment_depth(value) > MAX_COMMENT_DEPTH:
        return False
    v = _QUOTED.sub('""', value)
    if '"' in v.replace('""', ""):
        return False
    for _ in range(MAX_COMMENT_DEPTH + 1):
        stripped = _COMMENT.sub(" ", v)
        if stripped == v:
            break
        v = stripped
    if "(" in v or ")" in v or ";" in v or ":" in v:
        return False  # a group (`name: a@b;`) or source route: a From holds mailboxes only
    for part in v.split(","):
        opens, closes = part.count("<"), part.count(">")
        if opens != closes or opens > 1 or (opens and part.index("<") > part.index(">")):
            return False
    return True


def mailboxes(value: str) -> list[tuple[str, str]]:
    """(display, address) pairs of an address-list field; empty entries dropped.

    Plain lists (`a@x, "Name, Jr" <b@y>`) take a regex path: spam To: fields list hundreds of
    addresses and the stdlib parser cost more than the rest of extraction together. Comments,
    groups, escapes outside quotes and anything unusual go to email.utils.getaddresses."""
    out: list[tuple[str, str]] = []
    if ";" not in value:
        pos, n = 0, len(value)
        while pos < n:
            m = _LIST_ITEM.match(value, pos)
            if m is None or m.end() == pos:
                break
            addr = m.group(3) or m.group(4)
            if addr:
                # quoted phrase, plain phrase, or the old `addr (Name)` comment form
                display = m.group(1) if m.group(1) is not None else (m.group(2) or m.group(5) or "")
                out.append((display.replace('\\"', '"').strip(), addr))
            pos = m.end()
        else:
            return out
        if pos and value[:pos].rstrip().endswith(","):
            value = value[pos:]  # the parsed prefix ended at a comma: only the rest goes slow
        else:
            out = []
    if comment_depth(value) > MAX_COMMENT_DEPTH:
        return []
    try:
        pairs = out + getaddresses([value])
    except (ValueError, IndexError, TypeError, RecursionError):
        return []
    return [(d, a) for d, a in pairs if a]
