"""Quarantine-export CSV: one row per quarantined message, columns in docs/datasets.md."""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from edrules.domains import address_domain, normalize_address, normalize_ip, org_domain
from edrules.errors import EdrulesError, Location
from edrules.facts import MessageFacts
from edrules.ingest.extract import ExtractedMessage, Recipient, from_cell, normalize_category
from edrules.ingest.headers import decode_words
from edrules.ingest.readers import FileRefused, ReadFailure, Unit, max_file_bytes, read_capped
from edrules.ingest.received import parse_date

REQUIRED = ("received_at", "recipient", "envelope_from", "client_ip", "category", "score", "quarantine_state")
OPTIONAL = ("header_from", "from_display", "subject", "message_id", "helo", "eml")
STATES = frozenset({"quarantined", "released", "deleted", "expired", "delivered", "rejected"})


# The longest cell a row may hold (an eml path, a subject, ...): Python's csv default. The
# reader itself is allowed cells as long as the file, so one oversized cell makes its own row
# an error row instead of stopping the reader with every later row unaccounted for.
MAX_CELL = 131072


def _allow_long_fields() -> None:
    # csv's limit is process-wide; it only ever grows here, and the file is capped already.
    want = min(max_file_bytes() + 1, 2**31 - 1)
    if csv.field_size_limit() < want:
        csv.field_size_limit(want)


def csv_units(path: Path) -> Iterator[Unit | ReadFailure]:
    src = str(path)
    try:
        text = read_capped(path).decode("utf-8-sig")
    except FileRefused as exc:
        yield ReadFailure(src, "file", exc.error, exc.detail)
        return
    except OSError as exc:
        yield ReadFailure(src, "file", "unreadable", exc.strerror or str(exc))
        return
    except UnicodeDecodeError as exc:
        yield ReadFailure(src, f"byte {exc.start}", "csv-not-utf8", "quarantine CSV must be UTF-8")
        return
    _allow_long_fields()
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        yield ReadFailure(src, "line 1", "csv-empty", "no header row")
        return
    except csv.Error as exc:
        yield ReadFailure(src, "line 1", "csv-syntax", str(exc))
        return
    cols = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        yield ReadFailure(src, "line 1", "csv-missing-column", "missing column(s): " + ", ".join(missing))
        return
    failed_at = -1
    offset = 0  # physical lines before the text the current reader reads
    lines: list[str] | None = None
    while True:
        before = reader.line_num
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            at = offset + reader.line_num
            yield ReadFailure(src, f"line {at}", "csv-syntax", str(exc))
            if at == failed_at:  # no progress: say what is left unread, then stop
                yield ReadFailure(src, f"line {at}", "csv-unread",
                                  "the rest of the file was not read after a CSV syntax error")
                return
            failed_at = at
            continue
        line = offset + reader.line_num
        if reader.line_num - before > 1:
            # A record over several lines is a quoted cell with line breaks, or a quote never
            # closed: the reader then takes every later row into that cell, without an error.
            if lines is None:
                lines = io.StringIO(text, newline="").readlines()
            start = offset + before  # index of the record's first line
            if line == len(lines) and _quote_never_closed("".join(lines[start:])):
                yield ReadFailure(src, f"line {start + 1}", "csv-syntax",
                                  "a quote opened in this row is never closed; the lines after it are read as rows")
                offset = start + 1
                reader = csv.reader(io.StringIO("".join(lines[offset:]), newline=""))
                continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(cols):
            yield ReadFailure(src, f"line {line}", "csv-field-count", f"{len(row)} fields, header has {len(cols)}")
            continue
        long = next(((c, len(v)) for c, v in zip(cols, row) if len(v) > MAX_CELL), None)
        if long is not None:
            yield ReadFailure(src, f"line {line}", "csv-cell-too-large",
                              f"column {long[0]} holds {long[1]:,} characters; a cell may hold {MAX_CELL:,}")
            continue
        yield Unit("csv", f"{src}:{line}", src, row=tuple(zip(cols, row)), line=line)


def _quote_never_closed(record: str) -> bool:
    """The record's text runs to the end of the file inside a quoted cell (the one error the
    lenient reader never raises)."""
    try:
        for _ in csv.reader(io.StringIO(record, newline=""), strict=True):
            pass
    except csv.Error as exc:
        return "unexpected end of data" in str(exc)
    return False


def parse_csv_time(value: str, where: Location) -> datetime:
    v = value.strip()
    if not v:
        raise EdrulesError("received_at is empty", where)
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        dt = parse_date(v)
        if dt is None:
            raise EdrulesError(f"unreadable time {v!r} (use ISO 8601)", where) from None
        return dt
    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
    return dt


def check_client_ip(ip: str, where: Location) -> None:
    """A client IP given explicitly (CSV cell, transcript) must be an address the facts keep."""
    if normalize_ip(ip) is not None:
        return
    if "%" in ip:
        # Python's ipaddress accepts `2001:db8::5%eth0` and inet_pton does not: one backend
        # would match it against CIDRs and the other not. No mail client connects with a zone.
        raise EdrulesError(f"not an IP address: {ip!r} (an IPv6 zone id is not a client IP)", where)
    raise EdrulesError(f"not an IP address: {ip!r}", where)


def csv_fields(unit: Unit) -> dict:
    """Validated keyword arguments for extraction from one CSV row (errors name line and field)."""
    row = dict(unit.row)

    def loc(field: str) -> Location:
        return Location(unit.path, unit.line, field)

    out: dict = {"received_at": parse_csv_time(row["received_at"], loc("received_at"))}
    rcpts = [r.strip() for r in row["recipient"].replace(",", ";").split(";") if r.strip()]
    if not rcpts:
        raise EdrulesError("recipient is empty", loc("recipient"))
    out["recipients"] = rcpts
    env = row["envelope_from"].strip()
    out["envelope_from"] = env if env else None  # '<>' is the null sender, empty = unknown
    ip = row["client_ip"].strip()
    if ip:
        check_client_ip(ip, loc("client_ip"))
    out["client_ip"] = ip or None
    out["category"] = normalize_category(row["category"], loc("category"))
    score = row["score"].strip()
    try:
        out["score"] = float(score) if score else None
    except ValueError:
        raise EdrulesError(f"score is not a number: {score!r}", loc("score")) from None
    state = row["quarantine_state"].strip().lower()
    if state and state not in STATES:
        raise EdrulesError(
            f"unknown quarantine_state {state!r} (one of {', '.join(sorted(STATES))})", loc("quarantine_state")
        )
    out["quarantine_state"] = state or None
    out["helo"] = row.get("helo", "").strip() or None
    return out


def csv_row_key(unit: Unit) -> str:
    canon = "\x1f".join(f"{k}={v.strip()}" for k, v in sorted(unit.row))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def facts_from_csv_row(unit: Unit, dataset: str, label: str | None) -> ExtractedMessage:
    """Facts of a CSV row without a raw message: only what the gateway recorded."""
    kw = csv_fields(unit)
    row = dict(unit.row)
    env = kw["envelope_from"]
    env_from = normalize_address(env) if env is not None else None
    env_domain = address_domain(env_from)
    # Read as a From field is: a cell `Team, jehd <a@b.example>` is two mailboxes, not an address.
    hf, hf_domain, _, hf_invalid, hf_boxes = from_cell(row.get("header_from", ""))
    rcpts = tuple(
        Recipient(a, address_domain(a), "envelope")
        for a in dict.fromkeys(normalize_address(r) for r in kw["recipients"])
        if a is not None
    )
    helo = kw["helo"].lower().rstrip(".") if kw["helo"] else None
    from edrules.catalog import load_catalog

    facts = MessageFacts(
        msg_key=csv_row_key(unit),
        dataset=dataset,
        source=unit.source,
        received_at=kw["received_at"],
        message_id=row.get("message_id", "").strip() or None,
        subject=decode_words(row.get("subject", "").strip() or None),
        header_from=hf,
        header_from_domain=hf_domain,
        header_from_org=org_domain(hf_domain) if hf_domain else None,
        from_display=row.get("from_display", "").strip() or None,
        # A gateway export names at most one From; absent means unknown, which rules treat as invalid.
        from_invalid=hf_invalid,
        from_mailboxes=hf_boxes,
        envelope_from=env_from,
        envelope_from_domain=env_domain,
        envelope_from_org=org_domain(env_domain) if env_domain else None,
        client_ip=normalize_ip(kw["client_ip"]),
        helo=helo,
        helo_org=org_domain(helo) if helo and normalize_ip(helo) is None else None,
        bulk_provider=load_catalog().identify(env_domain, (), helo),
        category=kw["category"] or normalize_category(label),
        score=kw["score"],
        quarantine_state=kw["quarantine_state"],
        recipients=tuple(r.address for r in rcpts),
    )
    return ExtractedMessage(facts, (), (), (), rcpts)
