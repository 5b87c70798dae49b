"""Quarantine store: raw messages kept once by content hash, an index of items per recipient.

The raw bytes live under STATE/messages/ab/cdef... (sha256 of the message); the index is SQLite
in WAL mode (STATE/quarantine.sqlite). `QuarantineStore` is the seam a PostgreSQL index (for
several gateways sharing one store) plugs into later: callers only ever see the Protocol.

Crash safety, in order: the message file is written to a temp name, fsynced, renamed into place
and its directory fsynced; only then is the index row committed. So a crash leaves at worst an
orphan file (never a half-written one under its final name) and never a row without its file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol, Sequence

from edrules.errors import EdrulesError, Location

STATES = ("quarantined", "released", "deleted")
_ORDERS = {
    "quarantined_at": "quarantined_at ASC, id ASC",
    "-quarantined_at": "quarantined_at DESC, id DESC",
    "date": "date ASC, id ASC",
    "-date": "date DESC, id DESC",
    "recipient": "recipient ASC, quarantined_at DESC",
    "size": "size ASC, id ASC",
    "-size": "size DESC, id ASC",
}
_TMP_PREFIX = ".tmp-"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    if t.tzinfo is None:  # naive datetimes are UTC throughout edrules
        t = t.replace(tzinfo=timezone.utc)
    # Fixed width, UTC: text order is time order, so SQL compares them directly.
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _from_iso(s: str | None) -> datetime | None:
    if not s:
        return None
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


@dataclass(frozen=True, slots=True)
class QuarantinedRecipient:
    """One recipient the gateway quarantined, with the verdict that did it."""

    recipient: str
    category: str
    reason: str
    rule_id: str | None = None


@dataclass(frozen=True, slots=True)
class QuarantineItem:
    """One quarantined message for one recipient (the unit a user releases or trusts)."""

    id: str
    message_sha256: str
    recipient: str
    envelope_from: str | None
    header_from: str | None
    subject: str | None
    date: datetime | None  # the message's Date header
    category: str
    reason: str
    rule_id: str | None
    pack_name: str | None
    pack_version: str | None
    client_ip: str | None
    helo: str | None
    queue_id: str | None
    quarantined_at: datetime
    state: str
    released_at: datetime | None
    released_by: str | None
    size: int
    # Authentication facts seen at quarantine time (spf, spf_domain, dkim_pass, dmarc,
    # bulk_provider, envelope_from_domain, header_from_domain), so "trust sender" can name the
    # authenticated network without re-checking DNS later. Empty when the caller gave none.
    auth: Mapping[str, Any] | None = None
    # While released: False from the claim until the next hop accepted the message. A release
    # left unconfirmed for long means the releasing process died mid-way (see release()).
    release_confirmed: bool | None = None

    @property
    def recipient_domain(self) -> str:
        return self.recipient.rpartition("@")[2]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = _iso(v) if isinstance(v, datetime) else (dict(v) if isinstance(v, Mapping) else v)
        return out


@dataclass(frozen=True, slots=True)
class AuditRow:
    at: datetime
    actor: str
    action: str
    how: str
    item_id: str | None
    detail: str


class QuarantineStore(Protocol):
    """What the gateway, release, digests and pages need from a quarantine store."""

    def add(self, raw: bytes, recipients: Sequence[QuarantinedRecipient], *, envelope_from: str | None,
            client_ip: str | None, helo: str | None, queue_id: str | None, pack_name: str | None,
            pack_version: str | None, received_at: datetime | None = None,
            facts: Any = None) -> list[QuarantineItem]: ...

    def get(self, item_id: str) -> QuarantineItem | None: ...

    def raw(self, item_id: str) -> bytes: ...

    def list(self, *, recipients: Sequence[str] | None = None, domains: Sequence[str] | None = None,
             state: str | None = None, category: str | None = None, search: str | None = None,
             order: str = "-quarantined_at", limit: int | None = 50, offset: int = 0) -> list[QuarantineItem]: ...

    def count(self, *, recipients: Sequence[str] | None = None, domains: Sequence[str] | None = None,
              state: str | None = None, category: str | None = None, search: str | None = None) -> int: ...

    def mark_released(self, item_id: str, actor: str, how: str) -> bool: ...

    def unmark_released(self, item_id: str, actor: str, how: str, detail: str = "") -> bool: ...

    def confirm_release(self, item_id: str, actor: str, how: str, detail: str = "") -> None: ...

    def reclaim_unconfirmed(self, item_id: str, actor: str, how: str, older_than: timedelta) -> bool: ...

    def delete(self, item_id: str, actor: str, how: str) -> bool: ...

    def purge(self, now: datetime, retention_days: Mapping[str, int]) -> int: ...

    def audit(self, actor: str, action: str, how: str, item_id: str | None = None, detail: str = "") -> None: ...

    def audit_log(self, *, item_id: str | None = None, actor: str | None = None,
                  limit: int | None = 100) -> list[AuditRow]: ...

    # single-use tokens (edrules.runtime.tokens)
    def use_token(self, token_id: str, purpose: str, item_id: str, expires_at: datetime) -> bool: ...

    def token_used(self, token_id: str) -> bool: ...

    # digests (edrules.runtime.digest)
    def record_digest(self, recipient: str, item_ids: Sequence[str], sent_at: datetime) -> list[str]: ...

    def forget_digest(self, recipient: str, item_ids: Sequence[str], sent_at: datetime) -> None: ...

    def digested_ids(self, recipient: str) -> set[str]: ...

    def last_digest(self, recipient: str) -> datetime | None: ...

    def set_schedule(self, subject: str, frequency: str) -> None: ...

    def schedules(self) -> dict[str, str]: ...

    def recipients(self, *, state: str | None = "quarantined") -> list[str]: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
  id TEXT PRIMARY KEY,
  message_sha256 TEXT NOT NULL,
  recipient TEXT NOT NULL,
  recipient_domain TEXT NOT NULL,
  envelope_from TEXT, header_from TEXT, subject TEXT, date TEXT,
  category TEXT NOT NULL, reason TEXT NOT NULL, rule_id TEXT,
  pack_name TEXT, pack_version TEXT, client_ip TEXT, helo TEXT,
  queue_id TEXT NOT NULL DEFAULT '',
  quarantined_at TEXT NOT NULL,
  state TEXT NOT NULL DEFAULT 'quarantined',
  released_at TEXT, released_by TEXT,
  size INTEGER NOT NULL,
  auth TEXT,
  release_confirmed INTEGER,
  UNIQUE (message_sha256, recipient, queue_id)
);
CREATE INDEX IF NOT EXISTS items_recipient ON items (recipient, state, quarantined_at);
CREATE INDEX IF NOT EXISTS items_domain ON items (recipient_domain, state, quarantined_at);
CREATE INDEX IF NOT EXISTS items_sha ON items (message_sha256);
CREATE INDEX IF NOT EXISTS items_time ON items (quarantined_at);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, how TEXT NOT NULL,
  item_id TEXT, detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_item ON audit (item_id);
CREATE TABLE IF NOT EXISTS used_tokens (
  token_id TEXT PRIMARY KEY, purpose TEXT NOT NULL, item_id TEXT, used_at TEXT NOT NULL,
  expires_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS digest_sent (
  recipient TEXT NOT NULL, item_id TEXT NOT NULL, sent_at TEXT NOT NULL,
  PRIMARY KEY (recipient, item_id)
);
CREATE TABLE IF NOT EXISTS digest_runs (
  recipient TEXT NOT NULL, sent_at TEXT NOT NULL, items INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS digest_runs_rcpt ON digest_runs (recipient, sent_at);
CREATE TABLE IF NOT EXISTS digest_schedule (
  subject TEXT PRIMARY KEY, frequency TEXT NOT NULL
);
"""

_COLUMNS = ("id", "message_sha256", "recipient", "envelope_from", "header_from", "subject", "date",
            "category", "reason", "rule_id", "pack_name", "pack_version", "client_ip", "helo",
            "queue_id", "quarantined_at", "state", "released_at", "released_by", "size", "auth",
            "release_confirmed")


def open_store(location: str | Path) -> "QuarantineStore":
    """The store for a state directory. The seam for a shared index: a postgresql:// location
    will select a PostgreSQL index (a later issue) behind the same Protocol."""
    text = str(location)
    if text.startswith(("postgres://", "postgresql://")):
        raise EdrulesError("a PostgreSQL quarantine index is not available yet; use a state directory",
                           Location(field="store"))
    return SqliteQuarantineStore(location)


def item_id_for(message_sha256: str, recipient: str, queue_id: str | None) -> str:
    """Deterministic id: the same message, recipient and queue id always map to the same item,
    which is what makes add() idempotent when a milter retries after a crash."""
    h = hashlib.sha256(f"{message_sha256}\0{recipient}\0{queue_id or ''}".encode()).hexdigest()
    return "q" + h[:23]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _headers_of(raw: bytes) -> tuple[str | None, str | None, datetime | None]:
    """(From address, Subject, Date) of the message, decoded; header-only parse (compat32 is
    ~6x faster than policy.default and the body is never needed here)."""
    from email.errors import HeaderParseError
    from email.header import decode_header, make_header
    from email.parser import BytesHeaderParser
    from email.utils import getaddresses, parsedate_to_datetime

    # Only the header block goes to the parser: feeding the whole message makes it split the
    # body into lines too (~3 ms for a 30 KB message, more than the fsyncs cost in CPU).
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    msg = BytesHeaderParser().parsebytes(raw[: min(ends) + 2] if ends else raw)

    def text(name: str) -> str | None:
        v = msg.get(name)
        if v is None:
            return None
        try:
            return str(make_header(decode_header(str(v)))).strip()
        except (UnicodeError, LookupError, ValueError, HeaderParseError):
            return str(v).strip()

    from_addr = None
    f = msg.get("From")
    if f is not None:
        addrs = [a for _, a in getaddresses([str(f)]) if a]
        from_addr = addrs[0].lower() if addrs else None
    date = None
    d = msg.get("Date")
    if d:
        try:
            date = parsedate_to_datetime(str(d))
            if date is not None and date.tzinfo is None:
                date = date.replace(tzinfo=timezone.utc)
        except (TypeError, ValueError, IndexError, OverflowError):
            date = None
    return from_addr, text("Subject"), date


def _auth_summary(facts: Any) -> dict[str, Any] | None:
    """The authentication facts trust-sender needs, from an edrules.facts.MessageFacts."""
    if facts is None:
        return None
    return {
        "spf": facts.spf,
        "spf_domain": facts.spf_domain,
        "dkim_pass": sorted({d.d for d in facts.dkim if d.result == "pass" and d.d}),
        "dmarc": facts.dmarc,
        "dmarc_policy": facts.dmarc_policy,
        "bulk_provider": facts.bulk_provider,
        "envelope_from_domain": facts.envelope_from_domain,
        "header_from": facts.header_from,
        "header_from_domain": facts.header_from_domain,
    }


class SqliteQuarantineStore:
    """The single-gateway store: files under STATE/messages, index in STATE/quarantine.sqlite."""

    def __init__(self, state_dir: str | Path):
        self.state_dir = Path(state_dir)
        self.messages_dir = self.state_dir / "messages"
        self.db_path = self.state_dir / "quarantine.sqlite"
        try:
            self.messages_dir.mkdir(parents=True, exist_ok=True)
            # Quarantined mail is private: the messages and the index, not the state directory
            # itself (the milter may keep a socket there that the MTA must reach).
            os.chmod(self.messages_dir, 0o700)
            if not self.db_path.exists():
                os.close(os.open(self.db_path, os.O_WRONLY | os.O_CREAT, 0o600))  # SQLite keeps -wal/-shm alike
        except OSError as exc:
            raise EdrulesError(f"cannot create state directory: {exc.strerror}", Location(str(self.state_dir))) from None
        self._local = threading.local()
        self._db().executescript(_SCHEMA)  # executescript commits on its own

    # -- connections -------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        # One connection per thread: sqlite3 connections must not be shared across threads,
        # and the milter, the release CLI and the web pages all run concurrently.
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed quarantine row survives power loss
            db.execute("PRAGMA busy_timeout=30000")
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    class _Tx:
        def __init__(self, db: sqlite3.Connection):
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlocks
            return self.db

        def __exit__(self, exc_type, exc, tb) -> None:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _tx(self) -> "SqliteQuarantineStore._Tx":
        return self._Tx(self._db())

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- message files -----------------------------------------------------------------

    def message_path(self, sha256: str) -> Path:
        return self.messages_dir / sha256[:2] / sha256[2:]

    def _write_message(self, raw: bytes, sha256: str) -> None:
        final = self.message_path(sha256)
        if final.exists():
            return  # content-addressed: the same bytes are already stored (renamed whole)
        d = final.parent
        new_dir = not d.exists()
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f"{_TMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{sha256[2:10]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(raw)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)  # atomic: readers see nothing or the whole file
        _fsync_dir(d)
        if new_dir:
            _fsync_dir(self.messages_dir)

    def sweep_temp_files(self, older_than_seconds: float = 3600) -> int:
        """Remove temp files a crash left behind (never a final file). Returns how many."""
        n = 0
        cutoff = time.time() - older_than_seconds
        for p in self.messages_dir.glob(f"*/{_TMP_PREFIX}*"):
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    n += 1
            except FileNotFoundError:
                pass
        return n

    # -- items -------------------------------------------------------------------------

    def add(self, raw: bytes, recipients: Sequence[QuarantinedRecipient], *, envelope_from: str | None,
            client_ip: str | None, helo: str | None, queue_id: str | None, pack_name: str | None,
            pack_version: str | None, received_at: datetime | None = None,
            facts: Any = None) -> list[QuarantineItem]:
        """Store the message once and one item per recipient; idempotent on
        (message sha256, recipient, queue id). Returns the items (existing ones on a retry)."""
        if not recipients:
            return []
        sha = hashlib.sha256(raw).hexdigest()
        self._write_message(raw, sha)  # durable before any row names it
        header_from, subject, date = _headers_of(raw)
        if facts is not None and getattr(facts, "header_from", None):
            header_from = facts.header_from
        auth = _auth_summary(facts)
        at = _iso(received_at or utcnow())
        ids = []
        with self._tx() as db:
            for r in recipients:
                rcpt = r.recipient.strip().lower()
                iid = item_id_for(sha, rcpt, queue_id)
                ids.append(iid)
                cur = db.execute(
                    "INSERT OR IGNORE INTO items (id, message_sha256, recipient, recipient_domain, envelope_from,"
                    " header_from, subject, date, category, reason, rule_id, pack_name, pack_version, client_ip,"
                    " helo, queue_id, quarantined_at, state, size, auth)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,'quarantined',?,?)",
                    (iid, sha, rcpt, rcpt.rpartition("@")[2], envelope_from, header_from, subject, _iso(date),
                     r.category, r.reason, r.rule_id, pack_name, pack_version, client_ip, helo, queue_id or "",
                     at, len(raw), json.dumps(auth) if auth is not None else None))
                if cur.rowcount:
                    self._audit(db, "gateway", "quarantine", "milter", iid, f"{r.category}: {r.reason}")
        return [item for item in (self.get(i) for i in ids) if item is not None]

    @staticmethod
    def _item(row: sqlite3.Row) -> QuarantineItem:
        d = {k: row[k] for k in _COLUMNS}
        for k in ("date", "quarantined_at", "released_at"):
            d[k] = _from_iso(d[k])
        d["queue_id"] = d["queue_id"] or None
        d["auth"] = json.loads(d["auth"]) if d["auth"] else None
        d["release_confirmed"] = None if d["release_confirmed"] is None else bool(d["release_confirmed"])
        return QuarantineItem(**d)

    def get(self, item_id: str) -> QuarantineItem | None:
        row = self._db().execute(f"SELECT {', '.join(_COLUMNS)} FROM items WHERE id = ?", (item_id,)).fetchone()
        return self._item(row) if row else None

    def raw(self, item_id: str) -> bytes:
        item = self.get(item_id)
        if item is None:
            raise EdrulesError(f"no quarantined item {item_id!r}", Location(str(self.db_path)))
        if item.state == "deleted":
            raise EdrulesError(f"item {item_id} was deleted", Location(str(self.db_path)))
        try:
            return self.message_path(item.message_sha256).read_bytes()
        except FileNotFoundError:
            raise EdrulesError(f"message file of {item_id} is missing", Location(str(self.message_path(item.message_sha256)))) from None

    def _where(self, recipients, domains, state, category, search) -> tuple[str, list[Any]]:
        clauses, args = [], []
        if recipients is not None:
            rs = [r.strip().lower() for r in recipients]
            clauses.append(f"recipient IN ({','.join('?' * len(rs))})" if rs else "0")
            args += rs
        if domains is not None:
            ds = [d.strip().lower().rstrip(".") for d in domains]
            clauses.append(f"recipient_domain IN ({','.join('?' * len(ds))})" if ds else "0")
            args += ds
        if state is not None:
            if state not in STATES:
                raise EdrulesError(f"state must be one of {', '.join(STATES)} (got {state!r})")
            clauses.append("state = ?")
            args.append(state)
        if category is not None:
            clauses.append("category = ?")
            args.append(category)
        if search:
            # Values are bound, never pasted; LIKE wildcards in the search text are escaped.
            pat = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            clauses.append("(subject LIKE ? ESCAPE '\\' OR header_from LIKE ? ESCAPE '\\'"
                           " OR envelope_from LIKE ? ESCAPE '\\' OR recipient LIKE ? ESCAPE '\\')")
            args += [pat] * 4
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def list(self, *, recipients: Sequence[str] | None = None, domains: Sequence[str] | None = None,
             state: str | None = None, category: str | None = None, search: str | None = None,
             order: str = "-quarantined_at", limit: int | None = 50, offset: int = 0) -> list[QuarantineItem]:
        if order not in _ORDERS:
            raise EdrulesError(f"order must be one of {', '.join(_ORDERS)} (got {order!r})")
        where, args = self._where(recipients, domains, state, category, search)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM items{where} ORDER BY {_ORDERS[order]}"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args += [int(limit), int(offset)]
        return [self._item(r) for r in self._db().execute(sql, args)]

    def count(self, *, recipients: Sequence[str] | None = None, domains: Sequence[str] | None = None,
              state: str | None = None, category: str | None = None, search: str | None = None) -> int:
        where, args = self._where(recipients, domains, state, category, search)
        return self._db().execute(f"SELECT count(*) FROM items{where}", args).fetchone()[0]

    def recipients(self, *, state: str | None = "quarantined") -> list[str]:
        where, args = self._where(None, None, state, None, None)
        return [r[0] for r in self._db().execute(f"SELECT DISTINCT recipient FROM items{where} ORDER BY 1", args)]

    # -- state changes -----------------------------------------------------------------

    def mark_released(self, item_id: str, actor: str, how: str) -> bool:
        """Claim the item for release: True for exactly one caller, however many race."""
        now = _iso(utcnow())
        with self._tx() as db:
            cur = db.execute("UPDATE items SET state = 'released', released_at = ?, released_by = ?,"
                             " release_confirmed = 0 WHERE id = ? AND state = 'quarantined'", (now, actor, item_id))
            if cur.rowcount != 1:
                return False
            self._audit(db, actor, "release", how, item_id, "claimed")
        return True

    def confirm_release(self, item_id: str, actor: str, how: str, detail: str = "") -> None:
        """The next hop accepted the released message."""
        with self._tx() as db:
            db.execute("UPDATE items SET release_confirmed = 1 WHERE id = ? AND state = 'released'", (item_id,))
            self._audit(db, actor, "released", how, item_id, detail)

    def reclaim_unconfirmed(self, item_id: str, actor: str, how: str, older_than: timedelta) -> bool:
        """Claim again a release whose process died before the next hop confirmed it (True for
        one caller). The operator chooses this: the old attempt may have been delivered."""
        now = utcnow()
        with self._tx() as db:
            cur = db.execute("UPDATE items SET released_at = ?, released_by = ? WHERE id = ? AND state = 'released'"
                             " AND release_confirmed = 0 AND released_at < ?",
                             (_iso(now), actor, item_id, _iso(now - older_than)))
            if cur.rowcount != 1:
                return False
            self._audit(db, actor, "release", how, item_id, "reclaimed an unconfirmed release")
        return True

    def unmark_released(self, item_id: str, actor: str, how: str, detail: str = "") -> bool:
        """Undo a claim whose delivery failed, so the item can be released again."""
        with self._tx() as db:
            cur = db.execute("UPDATE items SET state = 'quarantined', released_at = NULL, released_by = NULL,"
                             " release_confirmed = NULL"
                             " WHERE id = ? AND state = 'released'", (item_id,))
            if cur.rowcount != 1:
                return False
            self._audit(db, actor, "release-failed", how, item_id, detail)
        return True

    def delete(self, item_id: str, actor: str, how: str) -> bool:
        """Mark deleted and remove the file once no other item needs it. False when already gone."""
        with self._tx() as db:
            row = db.execute("SELECT message_sha256 FROM items WHERE id = ? AND state != 'deleted'",
                             (item_id,)).fetchone()
            if row is None:
                return False
            db.execute("UPDATE items SET state = 'deleted' WHERE id = ?", (item_id,))
            self._audit(db, actor, "delete", how, item_id, "")
        self._remove_unreferenced([row[0]])
        return True

    def purge(self, now: datetime, retention_days: Mapping[str, int]) -> int:
        """Drop every item older than its category's retention (any state); returns how many.
        A category without a retention is kept: never purge by a default nobody set."""
        gone: list[str] = []
        with self._tx() as db:
            for category, days in sorted(retention_days.items()):
                cutoff = _iso(now - timedelta(days=int(days)))
                rows = db.execute("SELECT id, message_sha256 FROM items WHERE category = ? AND quarantined_at < ?",
                                  (category, cutoff)).fetchall()
                for iid, sha in rows:
                    db.execute("DELETE FROM items WHERE id = ?", (iid,))
                    db.execute("DELETE FROM digest_sent WHERE item_id = ?", (iid,))
                    self._audit(db, "retention", "purge", "purge", iid, f"{category} older than {days} days")
                    gone.append(sha)
        # Rows first, files after: a crash here leaves orphan files, never rows without files.
        self._remove_unreferenced(gone)
        return len(gone)

    def _remove_unreferenced(self, shas: Sequence[str]) -> None:
        db = self._db()
        for sha in set(shas):
            if db.execute("SELECT 1 FROM items WHERE message_sha256 = ? AND state != 'deleted' LIMIT 1",
                          (sha,)).fetchone():
                continue
            p = self.message_path(sha)
            try:
                p.unlink()
                _fsync_dir(p.parent)
            except FileNotFoundError:
                pass

    # -- audit -------------------------------------------------------------------------

    @staticmethod
    def _audit(db: sqlite3.Connection, actor: str, action: str, how: str, item_id: str | None, detail: str) -> None:
        db.execute("INSERT INTO audit (at, actor, action, how, item_id, detail) VALUES (?,?,?,?,?,?)",
                   (_iso(utcnow()), actor, action, how, item_id, detail))

    def audit(self, actor: str, action: str, how: str, item_id: str | None = None, detail: str = "") -> None:
        with self._tx() as db:
            self._audit(db, actor, action, how, item_id, detail)

    def audit_log(self, *, item_id: str | None = None, actor: str | None = None,
                  limit: int | None = 100) -> list[AuditRow]:
        clauses, args = [], []
        if item_id is not None:
            clauses.append("item_id = ?")
            args.append(item_id)
        if actor is not None:
            clauses.append("actor = ?")
            args.append(actor)
        sql = "SELECT at, actor, action, how, item_id, detail FROM audit"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [AuditRow(_from_iso(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in self._db().execute(sql, args)]

    # -- single-use tokens -------------------------------------------------------------

    def use_token(self, token_id: str, purpose: str, item_id: str, expires_at: datetime) -> bool:
        """Record a token as used; True only for the first use (atomic, primary key)."""
        with self._tx() as db:
            # Forget tokens that expired long ago: they are refused as expired anyway.
            db.execute("DELETE FROM used_tokens WHERE expires_at < ?", (_iso(utcnow() - timedelta(days=1)),))
            cur = db.execute("INSERT OR IGNORE INTO used_tokens (token_id, purpose, item_id, used_at, expires_at)"
                             " VALUES (?,?,?,?,?)", (token_id, purpose, item_id, _iso(utcnow()), _iso(expires_at)))
            return cur.rowcount == 1

    def token_used(self, token_id: str) -> bool:
        return self._db().execute("SELECT 1 FROM used_tokens WHERE token_id = ?", (token_id,)).fetchone() is not None

    # -- digests -----------------------------------------------------------------------

    def record_digest(self, recipient: str, item_ids: Sequence[str], sent_at: datetime) -> list[str]:
        """Claim items for one digest before sending it: returns the ids no earlier (or
        concurrent) run has claimed, so two overlapping runs never list an item twice."""
        claimed: list[str] = []
        with self._tx() as db:
            for iid in item_ids:
                cur = db.execute("INSERT OR IGNORE INTO digest_sent (recipient, item_id, sent_at) VALUES (?,?,?)",
                                 (recipient, iid, _iso(sent_at)))
                if cur.rowcount:
                    claimed.append(iid)
            if claimed:
                db.execute("INSERT INTO digest_runs (recipient, sent_at, items) VALUES (?,?,?)",
                           (recipient, _iso(sent_at), len(claimed)))
        return claimed

    def forget_digest(self, recipient: str, item_ids: Sequence[str], sent_at: datetime) -> None:
        """Give back a claim whose digest could not be sent (the next run lists them again)."""
        with self._tx() as db:
            for iid in item_ids:
                db.execute("DELETE FROM digest_sent WHERE recipient = ? AND item_id = ? AND sent_at = ?",
                           (recipient, iid, _iso(sent_at)))
            db.execute("DELETE FROM digest_runs WHERE recipient = ? AND sent_at = ?", (recipient, _iso(sent_at)))

    def digested_ids(self, recipient: str) -> set[str]:
        return {r[0] for r in self._db().execute("SELECT item_id FROM digest_sent WHERE recipient = ?", (recipient,))}

    def last_digest(self, recipient: str) -> datetime | None:
        row = self._db().execute("SELECT max(sent_at) FROM digest_runs WHERE recipient = ?", (recipient,)).fetchone()
        return _from_iso(row[0]) if row and row[0] else None

    def set_schedule(self, subject: str, frequency: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO digest_schedule (subject, frequency) VALUES (?, ?)"
                       " ON CONFLICT (subject) DO UPDATE SET frequency = excluded.frequency",
                       (subject.strip().lower(), frequency))

    def schedules(self) -> dict[str, str]:
        return {r[0]: r[1] for r in self._db().execute("SELECT subject, frequency FROM digest_schedule")}

    def iter_items(self) -> Iterator[QuarantineItem]:
        for r in self._db().execute(f"SELECT {', '.join(_COLUMNS)} FROM items ORDER BY quarantined_at"):
            yield self._item(r)
