"""Find the messages inside the given paths: .eml files, directories, maildir, mbox, header dumps, CSV."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

# Files a directory walk passes over as not mail (counted and reported as skipped).
SKIP_SUFFIXES = frozenset(
    ".md .rst .json .yml .yaml .xml .pem .key .private .pub .dns .zip .gz .bz2 .xz .tar .tgz .7z "
    ".pdf .png .jpg .jpeg .gif .svg .ico .py .pyc .sh .html .htm .js .css .parquet .duckdb .db "
    ".sqlite .wal .lock .toml .ini .cfg".split()
)
SKIP_NAME_PREFIXES = ("license", "licence", "copying", "readme", "notice", "authors", "changes")
SKIP_NAME_SUFFIXES = ("-license", ".license", "-licence")
# Maildir bookkeeping written by Dovecot / Courier next to cur/ new/ tmp/.
MAILDIR_META = frozenset(
    {"maildirfolder", "maildirsize", "subscriptions", "courierimapkeywords", "courierimapuiddb"}
)

# An mbox separator: "From " + sender + asctime date, at the start of the file or after a blank line.
_MBOX_FROM = re.compile(rb"^From (\S*)[ \t]+(?:[A-Z][a-z]{2}[ \t]+){1,2}[ \d]?\d", re.M)


# The most bytes ingest and explain read from one file (a message, an mbox, a quarantine CSV).
# A larger file is an error row ("file-too-large"), never a read that exhausts memory (a symlink
# to /dev/zero, a file that keeps growing). docs/datasets.md documents it; EDRULES_MAX_FILE_MB
# moves it.
DEFAULT_MAX_FILE_MB = 512
MAX_FILE_ENV = "EDRULES_MAX_FILE_MB"


def max_file_bytes() -> int:
    raw = os.environ.get(MAX_FILE_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MAX_FILE_MB
    except ValueError:
        mb = DEFAULT_MAX_FILE_MB
    return int(mb * 1024 * 1024) if mb > 0 else DEFAULT_MAX_FILE_MB * 1024 * 1024


class FileRefused(Exception):
    """A path ingest will not read: not a regular file, or over the per-file limit."""

    def __init__(self, error: str, detail: str):
        super().__init__(detail)
        self.error, self.detail = error, detail


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _not_regular(mode: int) -> FileRefused:
    return FileRefused("not-a-regular-file", f"{_kind_of(mode)} is not read; only regular files are")


def _too_large(size: int, limit: int) -> FileRefused:
    return FileRefused("file-too-large", f"over the per-file limit of {limit / 1048576:g} MiB ({size:,} bytes "
                                         f"or more; {MAX_FILE_ENV} raises it)")


def open_regular(path: str | Path):
    """Open a regular file for reading. O_NONBLOCK: opening a FIFO must not wait for a writer
    (fstat then refuses it); it changes nothing for regular files. Checking the open file,
    not the name, leaves no window to swap a FIFO in after the check."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(st.st_mode)
        limit = max_file_bytes()
        if st.st_size > limit:
            raise _too_large(st.st_size, limit)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_capped(path: str | Path, start: int = 0, length: int = -1) -> bytes:
    """Bytes of a regular file (a slice when start/length are given), at most the per-file
    limit: a file that grew past it since it was sized is refused, not read on."""
    limit = max_file_bytes()
    with open_regular(path) as fh:
        if start:
            fh.seek(start)
        want = limit + 1 if length < 0 else min(length, limit + 1)
        # read(n) allocates n bytes up front: ask for the file's size (+1 to see it grow),
        # never for the limit, which may be larger than the machine's memory.
        size = os.fstat(fh.fileno()).st_size - start
        data = _read_upto(fh, want, max(size, 0) + 1)
    if len(data) > limit:
        raise _too_large(len(data), limit)
    return data


def _read_upto(fh, want: int, first: int) -> bytes:
    """At most `want` bytes: one read of `first`, then 1 MiB chunks only if there is more."""
    data = fh.read(min(want, first))
    if len(data) < min(want, first):
        return data
    parts = [data]
    got = len(data)
    while got < want:
        chunk = fh.read(min(want - got, 1 << 20))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts) if len(parts) > 1 else data


def read_message_file(name: str) -> bytes:
    """One message for `explain`: a path or '-' (stdin), under the same rules as ingest."""
    from edrules.errors import EdrulesError, Location

    limit = max_file_bytes()
    if name == "-":
        import sys

        data = _read_upto(sys.stdin.buffer, limit + 1, 1 << 20)
        if len(data) > limit:
            raise EdrulesError(f"cannot read message: {_too_large(len(data), limit).detail}", Location("<stdin>"))
        return data
    try:
        return read_capped(name)
    except FileRefused as exc:
        raise EdrulesError(f"cannot read message: {exc.detail}", Location(name)) from None
    except OSError as exc:
        raise EdrulesError(f"cannot read message: {exc.strerror or exc}", Location(name)) from None


@dataclass(frozen=True, slots=True)
class Unit:
    """One message to read: a whole file, a slice of an mbox, or a quarantine CSV row."""

    kind: str  # file | mbox | smtp | csv
    source: str  # path, plus '#N' inside an mbox/SMTP transcript or ':LINE' inside a CSV
    path: str
    start: int = 0
    end: int = -1
    mbox_from: str | None = None
    row: tuple[tuple[str, str], ...] = ()  # CSV cells (column, value)
    line: int = 0
    # What an SMTP transcript says about the session (MAIL FROM, RCPT TO, client, HELO).
    envelope_from: str | None = None
    recipients: tuple[str, ...] = ()
    client_ip: str | None = None
    helo: str | None = None
    data: bytes | None = None  # the file's bytes, when already read while sniffing


@dataclass(frozen=True, slots=True)
class Skipped:
    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class ReadFailure:
    source: str
    position: str
    error: str
    detail: str


def is_skipped_name(name: str) -> str | None:
    low = name.lower()
    if low.startswith("."):
        return "hidden file"
    if low in MAILDIR_META or low.startswith("dovecot"):
        return "maildir metadata"
    if low.startswith(SKIP_NAME_PREFIXES) or low.endswith(SKIP_NAME_SUFFIXES):
        return "licence/readme"
    suffix = os.path.splitext(low)[1]
    if suffix in SKIP_SUFFIXES:
        return f"not mail ({suffix})"
    return None


def walk(paths: Sequence[str | Path]) -> Iterator[Path | Skipped | ReadFailure]:
    """Files to read, in a deterministic (sorted) order. A named file is always read; a
    directory walk skips non-mail files by name and maildir tmp/ folders. A FIFO, device or
    socket (or a symlink to one) is an error row and is never opened: reading one hangs or
    never ends."""
    for p in paths:
        path = Path(p)
        try:
            mode = os.stat(path).st_mode
        except OSError:
            yield ReadFailure(str(path), "file", "not-found", "no such file or directory")
            continue
        if stat.S_ISREG(mode):
            yield path
        elif stat.S_ISDIR(mode):
            yield from _walk_dir(str(path))
        else:
            refused = _not_regular(mode)
            yield ReadFailure(str(path), "file", refused.error, refused.detail)


def _walk_dir(root: str) -> Iterator[Path | Skipped | ReadFailure]:
    """os.walk's top-down order (files of a folder, then its sorted subfolders; symlinked
    folders not followed), on scandir entries: their cached file type tells a regular file
    without a stat() per file; only symlinks and the rare non-regular entry are stat'ed."""
    try:
        with os.scandir(root) as it:
            entries = list(it)
    except OSError as exc:
        yield ReadFailure(str(Path(root)), "file", "unreadable", exc.strerror or str(exc))
        return
    dirs, files = [], []
    for e in entries:
        try:
            is_dir = e.is_dir()
        except OSError:
            is_dir = False
        (dirs if is_dir else files).append(e)
    names = {d.name for d in dirs}
    is_maildir = "cur" in names and "new" in names
    for e in sorted(files, key=lambda e: e.name):
        full = Path(e.path)
        reason = is_skipped_name(e.name)
        if reason:
            yield Skipped(str(full), reason)
            continue
        try:
            if e.is_file():
                yield full
                continue
            mode = e.stat().st_mode
        except OSError as exc:
            yield ReadFailure(str(full), "file", "unreadable", exc.strerror or str(exc))
            continue
        refused = _not_regular(mode)
        yield ReadFailure(str(full), "file", refused.error, refused.detail)
    for d in sorted(dirs, key=lambda e: e.name):
        if (is_maildir and d.name == "tmp") or d.is_symlink():
            continue
        yield from _walk_dir(d.path)


def _head(path: Path, n: int = 4096) -> bytes:
    with open_regular(path) as fh:
        return fh.read(n)


def mbox_sender(token: bytes) -> str:
    s = token.decode("latin-1").strip()
    # MAILER-DAEMON in the From_ line is how MDAs record the null sender <>.
    return "" if s.upper() in ("MAILER-DAEMON", "<>", "") else s


def split_mbox(data: bytes) -> list[tuple[int, int, str]]:
    """(start, end, envelope sender) of each message after its From_ line. A separator is a
    From_ line at the start (after blank lines) or after a blank line."""
    seps = []
    lead = _lead(data)
    first = _MBOX_FROM.match(data, lead) or _LOOSE_FROM.match(data, lead)
    if first:
        seps.append(first)
    # bytes.find is far cheaper than a multi-line regex scan over every message body
    pos = data.find(b"\nFrom ", lead)
    while pos >= 0:
        s0 = pos + 1
        if data[s0 - 2 : s0] == b"\n\n" or data[s0 - 3 : s0] == b"\n\r\n":
            m = _MBOX_FROM.match(data, s0)
            if m:
                seps.append(m)
        pos = data.find(b"\nFrom ", s0)
    out = []
    for i, m in enumerate(seps):
        nl = data.find(b"\n", m.start())
        start = len(data) if nl < 0 else nl + 1
        end = seps[i + 1].start() if i + 1 < len(seps) else len(data)
        out.append((start, end, mbox_sender(m.group(1))))
    return out


def _lead(data: bytes) -> int:
    i = 0
    while i < len(data) and data[i : i + 1] in (b"\n", b"\r", b" ", b"\t"):
        i += 1
    return i


def is_mbox(head: bytes) -> bool:
    """An mbox, or a single message saved with its From_ line (some tools omit the date)."""
    lead = _lead(head)
    return _MBOX_FROM.match(head, lead) is not None or _LOOSE_FROM.match(head, lead) is not None


_LOOSE_FROM = re.compile(rb"From (\S+)[^:\n]*\r?\n[\x21-\x39\x3b-\x7e]+[ \t]*:")
_SMTP_VERB = re.compile(rb"(?i)(?:HELO|EHLO|LHLO)[ \t]")
_ADDR_ARG = re.compile(rb"(?i)^(?:MAIL FROM|RCPT TO)[ \t]*:[ \t]*<?([^>\s]*)>?")


def is_smtp_transcript(head: bytes) -> bool:
    return _SMTP_VERB.match(head, _lead(head)) is not None


def split_smtp(data: bytes) -> list[tuple[int, int, dict]]:
    """(start, end, envelope) of each DATA section of an SMTP session transcript (the format
    of authentication_milter and SpamAssassin BSMTP test files)."""
    out: list[tuple[int, int, dict]] = []
    env: dict = {"helo": None, "client_ip": None, "xhelo": None, "from": None, "rcpts": []}
    pos = 0
    n = len(data)
    while pos < n:
        nl = data.find(b"\n", pos)
        nxt = n if nl < 0 else nl + 1
        line = data[pos:nxt].rstrip(b"\r\n")
        verb = line[:4].upper()
        if verb in (b"HELO", b"EHLO", b"LHLO"):
            env["helo"] = line[5:].strip().decode("latin-1") or None
        elif verb == b"XFOR":
            for k, _, v in (kv.partition(b"=") for kv in line.split()[1:]):
                if k.upper() == b"ADDR":
                    env["client_ip"] = v.decode("latin-1")
                elif k.upper() == b"HELO":
                    env["xhelo"] = v.decode("latin-1")
        elif verb in (b"MAIL", b"RCPT"):
            m = _ADDR_ARG.match(line)
            if m:
                addr = m.group(1).decode("latin-1")
                if verb == b"MAIL":
                    env["from"] = addr
                else:
                    env["rcpts"].append(addr)
        elif verb == b"RSET":
            env["from"], env["rcpts"] = None, []
        elif verb == b"DATA":
            end = data.find(b"\n.\n", nxt - 1)
            end_crlf = data.find(b"\n.\r\n", nxt - 1)
            ends = [e for e in (end, end_crlf) if e >= 0]
            stop = min(ends) + 1 if ends else n
            out.append((nxt, stop, {
                "envelope_from": env["from"], "recipients": tuple(env["rcpts"]),
                "client_ip": env["client_ip"], "helo": env["xhelo"] or env["helo"],
            }))
            env["from"], env["rcpts"] = None, []
            if not ends:
                break
            nl = data.find(b"\n", stop)
            nxt = n if nl < 0 else nl + 1
        elif verb == b"QUIT":
            break
        pos = nxt
    return out


def is_csv(path: Path) -> bool:
    """A quarantine export is known by its name: its content is not mail to sniff."""
    return path.suffix.lower() == ".csv"


# Files up to this size are read whole while sniffing (one open() instead of two).
READ_WHOLE = 1 << 20


def units_of_file(path: Path, keep_data: bool = False) -> Iterator[Unit | ReadFailure]:
    """Split one mail file (message, mbox, SMTP transcript) into units. Unreadable files become
    failures, never exceptions. keep_data: a small single-message file's bytes ride along in the
    unit. A quarantine CSV is not mail: edrules.ingest.pipeline.units_of sends it to its reader."""
    src = str(path)
    try:
        head = _head(path, READ_WHOLE if keep_data else 4096)
    except FileRefused as exc:
        yield ReadFailure(src, "file", exc.error, exc.detail)
        return
    except OSError as exc:
        yield ReadFailure(src, "file", "unreadable", exc.strerror or str(exc))
        return
    if is_smtp_transcript(head):
        try:
            data = read_capped(path)
        except FileRefused as exc:
            yield ReadFailure(src, "file", exc.error, exc.detail)
            return
        except OSError as exc:
            yield ReadFailure(src, "file", "unreadable", exc.strerror or str(exc))
            return
        parts = split_smtp(data)
        if not parts:
            yield ReadFailure(src, "file", "smtp-no-data", "SMTP transcript without a DATA section")
        for n, (start, end, env) in enumerate(parts, 1):
            yield Unit("smtp", f"{src}#{n}" if len(parts) > 1 else src, src, start, end, **env)
        return
    if is_mbox(head):
        try:
            data = head if len(head) < READ_WHOLE and keep_data else read_capped(path)
        except FileRefused as exc:
            yield ReadFailure(src, "file", exc.error, exc.detail)
            return
        except OSError as exc:
            yield ReadFailure(src, "file", "unreadable", exc.strerror or str(exc))
            return
        parts = split_mbox(data)
        for n, (start, end, sender) in enumerate(parts, 1):
            yield Unit("mbox", f"{src}#{n}" if len(parts) > 1 else src, src, start, end, sender,
                       data=_unescape_mbox(data[start:end]) if keep_data else None)
        return
    whole = keep_data and len(head) < READ_WHOLE
    yield Unit("file", src, src, data=head if whole else None)


def read_unit_bytes(unit: Unit) -> bytes:
    """Raises FileRefused (not regular, over the limit) or OSError."""
    if unit.data is not None:
        return unit.data
    if unit.kind == "smtp":
        data = read_capped(unit.path, unit.start, unit.end - unit.start)
        # SMTP dot-stuffing: a line starting with '..' carries a single '.'.
        return re.sub(rb"(?m)^\.\.", b".", data) if b"\n.." in data or data.startswith(b"..") else data
    if unit.kind == "mbox":
        return _unescape_mbox(read_capped(unit.path, unit.start, unit.end - unit.start))
    return read_capped(unit.path)


def _unescape_mbox(data: bytes) -> bytes:
    # mboxrd escaping: '>From ' at a line start stands for 'From '.
    if b"\n>From " in data or data.startswith(b">From "):
        data = re.sub(rb"(?m)^>(>*From )", rb"\1", data)
    return data
