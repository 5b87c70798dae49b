"""Accounts, domain policies, sessions, one-time codes, rate limits and the audit trail in STATE/accounts.sqlite.

One SQLite file (WAL) so the CLI (`edrules users ...`) and the running server see the same
truth. Secrets are never stored in clear: passwords as argon2id hashes, session ids, magic-link
tokens, e-mailed codes and recovery codes as SHA-256 of high-entropy random values (an argon2
hash per lookup would cost ~130 ms per request for no gain on 128-bit random values).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from edrules.errors import EdrulesError
from edrules.server.principal import ROLES, Principal, Role, domain_of

HASHER = PasswordHasher()
# Verifying against this keeps a wrong address as slow as a wrong password (no enumeration by timing).
_DUMMY_HASH = HASHER.hash("edrules-no-such-account")

MAX_FAILURES = 5            # consecutive bad passwords / codes before a lockout
LOCKOUT_SECONDS = 15 * 60
PENDING_SECONDS = 10 * 60   # a half-finished login (password ok, TOTP still to come)
SESSION_SECONDS = 12 * 3600
PASSWORDLESS_SESSION_SECONDS = 30 * 24 * 3600
CODE_SECONDS = 10 * 60
CODE_SENDS_PER_WINDOW = 3   # e-mailed codes per address per CODE_SECONDS
CODE_TRIES = 5              # wrong codes typed against one e-mailed code

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
  address TEXT PRIMARY KEY, role TEXT NOT NULL, domains TEXT NOT NULL,
  password_hash TEXT, password_changed_at REAL, must_change_password INTEGER NOT NULL DEFAULT 0,
  totp_secret TEXT, totp_enabled INTEGER NOT NULL DEFAULT 0, totp_last_step INTEGER NOT NULL DEFAULT 0,
  disabled INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0, locked_until REAL NOT NULL DEFAULT 0,
  created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS policies (
  domain TEXT PRIMARY KEY, password_expiry_days INTEGER NOT NULL DEFAULT 0,
  mfa_required INTEGER NOT NULL DEFAULT 0, passwordless_disabled INTEGER NOT NULL DEFAULT 0,
  secure_release INTEGER NOT NULL DEFAULT 0, updated_at REAL, updated_by TEXT);
CREATE TABLE IF NOT EXISTS sessions (
  id_hash TEXT PRIMARY KEY, address TEXT NOT NULL, stage TEXT NOT NULL, method TEXT NOT NULL,
  csrf TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL, last_seen REAL NOT NULL,
  ip TEXT, user_agent TEXT, revoked INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS sessions_by_address ON sessions(address);
CREATE TABLE IF NOT EXISTS login_codes (
  token_hash TEXT PRIMARY KEY, code_hash TEXT NOT NULL, address TEXT NOT NULL,
  created_at REAL NOT NULL, expires_at REAL NOT NULL, used_at REAL, tries INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS recovery_codes (
  address TEXT NOT NULL, code_hash TEXT NOT NULL, used_at REAL, PRIMARY KEY(address, code_hash));
CREATE TABLE IF NOT EXISTS oidc_links (
  issuer TEXT NOT NULL, subject TEXT NOT NULL, address TEXT NOT NULL, linked_at REAL NOT NULL,
  PRIMARY KEY(issuer, subject));
CREATE TABLE IF NOT EXISTS attempts (key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS attempts_by_key ON attempts(key, at);
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
  subject TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '', ip TEXT NOT NULL DEFAULT '');
"""


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Account:
    address: str
    role: Role
    domains: frozenset[str]
    has_password: bool
    password_changed_at: float | None
    must_change_password: bool
    totp_enabled: bool
    disabled: bool
    locked_until: float
    created_at: float

    @property
    def principal(self) -> Principal:
        return Principal(self.address, self.role, self.domains)

    @property
    def domain(self) -> str:
        return domain_of(self.address)


@dataclass(frozen=True, slots=True)
class Policy:
    """A domain's sign-in policy. `secure_release` is read by the release pages (h-support)."""

    domain: str
    password_expiry_days: int = 0       # 0: never expires
    mfa_required: bool = False
    passwordless_disabled: bool = False
    secure_release: bool = False
    updated_at: float | None = None
    updated_by: str | None = None


@dataclass(frozen=True, slots=True)
class Session:
    id_hash: str
    address: str
    stage: str          # 'ok' signed in; 'mfa' TOTP due; 'enroll' TOTP enrolment due; 'password' new password due
    method: str         # 'password' | 'code' | 'oidc:<name>'
    csrf: str
    created_at: float
    expires_at: float
    last_seen: float
    ip: str
    user_agent: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    actor: str
    action: str
    subject: str
    detail: str
    ip: str


class Locked(EdrulesError):
    """Too many failures: the account refuses sign-in until `until`."""

    def __init__(self, until: float):
        stamp = time.strftime("%H:%M UTC", time.gmtime(until))
        super().__init__(f"Too many failed attempts: this account is locked until {stamp}. "
                         "Wait, or ask your domain administrator to unlock it.")
        self.until = until


class Accounts:
    """The account store. Thread-safe enough for one tornado process plus the CLI: every call opens
    its own short transaction on a WAL database."""

    def __init__(self, state_dir: str | Path):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / "accounts.sqlite"
        db = sqlite3.connect(self.path, timeout=10)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        finally:
            db.close()

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=10000")
        return _Tx(db)

    # --- accounts ---------------------------------------------------------------------------
    def add(self, address: str, role: Role = "user", domains: tuple[str, ...] | frozenset[str] = (),
            password: str | None = None, *, actor: str = "cli") -> Account:
        address = _clean_address(address)
        if role not in ROLES:
            raise EdrulesError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        doms = frozenset(d.strip().lower().rstrip(".") for d in domains if d.strip())
        if role == "user":
            doms = frozenset({domain_of(address)})
        elif not doms:
            raise EdrulesError(f"a {role} needs at least one --domain")
        now = time.time()
        pw = HASHER.hash(password) if password else None
        with self._db() as db:
            if db.execute("SELECT 1 FROM accounts WHERE address=?", (address,)).fetchone():
                raise EdrulesError(f"account {address} already exists")
            db.execute("INSERT INTO accounts(address, role, domains, password_hash, password_changed_at, created_at)"
                       " VALUES (?,?,?,?,?,?)", (address, role, json.dumps(sorted(doms)), pw, now if pw else None, now))
        self.audit(actor, "account.add", address, f"role={role} domains={','.join(sorted(doms))}")
        return self.get(address)

    def get(self, address: str) -> Account | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM accounts WHERE address=?", (address.strip().lower(),)).fetchone()
        return _account(row) if row else None

    def list(self, domains: frozenset[str] | None = None) -> list[Account]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM accounts ORDER BY address").fetchall()
        accounts = [_account(r) for r in rows]
        if domains is not None:
            accounts = [a for a in accounts if a.domain in domains]
        return accounts

    def set_disabled(self, address: str, disabled: bool = True, *, actor: str = "cli") -> None:
        with self._db() as db:
            n = db.execute("UPDATE accounts SET disabled=? WHERE address=?", (int(disabled), address.lower())).rowcount
            if not n:
                raise EdrulesError(f"no account {address}")
            if disabled:
                db.execute("UPDATE sessions SET revoked=1 WHERE address=?", (address.lower(),))
        self.audit(actor, "account.disable" if disabled else "account.enable", address.lower())

    def unlock(self, address: str, *, actor: str) -> None:
        with self._db() as db:
            db.execute("UPDATE accounts SET failures=0, locked_until=0 WHERE address=?", (address.lower(),))
        self.audit(actor, "account.unlock", address.lower())

    def set_password(self, address: str, password: str, *, actor: str) -> None:
        if len(password) < 10:
            raise EdrulesError("a password needs at least 10 characters")
        with self._db() as db:
            db.execute("UPDATE accounts SET password_hash=?, password_changed_at=?, must_change_password=0"
                       " WHERE address=?", (HASHER.hash(password), time.time(), address.lower()))
        self.audit(actor, "password.change", address.lower())

    def check_password_reuse(self, address: str, password: str) -> bool:
        """Is `password` the account's current one (an expired password may not be chosen again)?"""
        with self._db() as db:
            row = db.execute("SELECT password_hash FROM accounts WHERE address=?", (address.lower(),)).fetchone()
        if not row or not row["password_hash"]:
            return False
        try:
            return HASHER.verify(row["password_hash"], password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def backdate_password(self, address: str, days: float) -> None:
        """Make the password `days` old (the demo and the expiry test use it)."""
        with self._db() as db:
            db.execute("UPDATE accounts SET password_changed_at=? WHERE address=?",
                       (time.time() - days * 86400, address.lower()))

    # --- primary authentication -------------------------------------------------------------
    def check_password(self, address: str, password: str, *, ip: str = "") -> Account | None:
        """The account when the password is right; None when it is not. Raises Locked."""
        address = address.strip().lower()
        with self._db() as db:
            row = db.execute("SELECT * FROM accounts WHERE address=?", (address,)).fetchone()
        stored = row["password_hash"] if row and row["password_hash"] else _DUMMY_HASH
        if row is not None:
            self._refuse_if_locked(row)
        try:
            ok = HASHER.verify(stored, password) and row is not None and row["password_hash"] is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            ok = False
        if not ok or row["disabled"]:
            self.audit(address, "login.failure", address, "password", ip)
            if row is not None:
                self._fail(address, ip)
            return None
        self._succeed(address)
        return _account(row)

    def _refuse_if_locked(self, row: sqlite3.Row) -> None:
        if row["locked_until"] > time.time():
            raise Locked(row["locked_until"])

    def _fail(self, address: str, ip: str) -> None:
        with self._db() as db:
            db.execute("UPDATE accounts SET failures=failures+1 WHERE address=?", (address,))
            row = db.execute("SELECT failures FROM accounts WHERE address=?", (address,)).fetchone()
            if row and row["failures"] >= MAX_FAILURES:
                until = time.time() + LOCKOUT_SECONDS
                db.execute("UPDATE accounts SET locked_until=?, failures=0 WHERE address=?", (until, address))
            else:
                until = None
        if until:
            self.audit(address, "login.lockout", address, f"{MAX_FAILURES} failures", ip)
            raise Locked(until)

    def _succeed(self, address: str) -> None:
        with self._db() as db:
            db.execute("UPDATE accounts SET failures=0 WHERE address=?", (address,))

    def locked_until(self, address: str) -> float:
        a = self.get(address)
        return a.locked_until if a and a.locked_until > time.time() else 0.0

    def password_expired(self, account: Account) -> bool:
        if account.must_change_password:
            return True
        days = self.policy(account.domain).password_expiry_days
        return bool(days) and (account.password_changed_at or 0) < time.time() - days * 86400

    # --- TOTP -------------------------------------------------------------------------------
    def totp_secret(self, address: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT totp_secret FROM accounts WHERE address=?", (address.lower(),)).fetchone()
        return row["totp_secret"] if row else None

    def start_totp_enrolment(self, address: str, secret: str) -> None:
        """Store a candidate secret; it protects nothing until a code confirms it."""
        with self._db() as db:
            db.execute("UPDATE accounts SET totp_secret=? WHERE address=? AND totp_enabled=0", (secret, address.lower()))

    def check_totp(self, address: str, code: str, *, ip: str = "", confirming: bool = False) -> bool:
        """A fresh TOTP code (never one already used: its time step must be newer than the last
        accepted one). Wrong codes count toward the lockout. Raises Locked."""
        from edrules.server.mfa import totp_step

        address = address.lower()
        with self._db() as db:
            row = db.execute("SELECT * FROM accounts WHERE address=?", (address,)).fetchone()
        if row is None or not row["totp_secret"] or (not confirming and not row["totp_enabled"]):
            return False
        self._refuse_if_locked(row)
        step = totp_step(row["totp_secret"], code)
        if step is not None and step > row["totp_last_step"]:
            with self._db() as db:
                # The compare-and-set makes a replay racing this request lose too.
                n = db.execute("UPDATE accounts SET totp_last_step=?, failures=0 WHERE address=? AND totp_last_step<?",
                               (step, address, step)).rowcount
            if n:
                return True
        why = "totp replay" if step is not None else "totp"
        self.audit(address, "login.failure", address, why, ip)
        self._fail(address, ip)
        return False

    def enable_totp(self, address: str, *, actor: str) -> list[str]:
        with self._db() as db:
            db.execute("UPDATE accounts SET totp_enabled=1 WHERE address=?", (address.lower(),))
        self.audit(actor, "mfa.enrol", address.lower())
        return self.new_recovery_codes(address, actor=actor)

    def new_recovery_codes(self, address: str, *, actor: str) -> list[str]:
        codes = ["-".join(secrets.token_hex(3) for _ in range(2)) for _ in range(10)]
        with self._db() as db:
            db.execute("DELETE FROM recovery_codes WHERE address=?", (address.lower(),))
            db.executemany("INSERT INTO recovery_codes(address, code_hash) VALUES (?,?)",
                           [(address.lower(), sha(c)) for c in codes])
        self.audit(actor, "mfa.recovery_codes", address.lower())
        return codes

    def recovery_codes_left(self, address: str) -> int:
        with self._db() as db:
            return db.execute("SELECT count(*) FROM recovery_codes WHERE address=? AND used_at IS NULL",
                              (address.lower(),)).fetchone()[0]

    def use_recovery_code(self, address: str, code: str, *, ip: str = "") -> bool:
        address = address.lower()
        acc = self.get(address)
        if acc is None:
            return False
        if acc.locked_until > time.time():
            raise Locked(acc.locked_until)
        with self._db() as db:
            n = db.execute("UPDATE recovery_codes SET used_at=? WHERE address=? AND code_hash=? AND used_at IS NULL",
                           (time.time(), address, sha(code.strip().lower()))).rowcount
        if n:
            self.audit(address, "mfa.recovery_code_used", address, "", ip)
            return True
        self.audit(address, "login.failure", address, "recovery code", ip)
        self._fail(address, ip)
        return False

    def reset_mfa(self, address: str, *, actor: str) -> None:
        with self._db() as db:
            db.execute("UPDATE accounts SET totp_enabled=0, totp_secret=NULL WHERE address=?", (address.lower(),))
            db.execute("DELETE FROM recovery_codes WHERE address=?", (address.lower(),))
        self.audit(actor, "mfa.reset", address.lower())

    # --- passwordless codes -----------------------------------------------------------------
    def issue_login_code(self, address: str, *, ip: str = "") -> tuple[str, str] | None:
        """(link token, code to type) for an e-mail, or None when the address may not get one now
        (no such account, disabled, passwordless disabled by policy, or rate-limited)."""
        address = address.strip().lower()
        acc = self.get(address)
        if acc is None or acc.disabled or self.policy(acc.domain).passwordless_disabled:
            self.audit(address, "code.refused", address, "no account or policy", ip)
            return None
        if not self.allow_attempt(f"code-send:{address}", CODE_SENDS_PER_WINDOW, CODE_SECONDS):
            self.audit(address, "code.rate_limited", address, "", ip)
            return None
        token, code = secrets.token_urlsafe(32), f"{secrets.randbelow(10**8):08d}"
        now = time.time()
        with self._db() as db:
            db.execute("INSERT INTO login_codes(token_hash, code_hash, address, created_at, expires_at)"
                       " VALUES (?,?,?,?,?)", (sha(token), sha(f"{address}:{code}"), address, now, now + CODE_SECONDS))
        self.audit(address, "code.sent", address, "", ip)
        return token, code

    def redeem_login_code(self, *, token: str | None = None, address: str | None = None,
                          code: str | None = None, ip: str = "") -> Account | None:
        """Consume an e-mailed code (by the link's token, or by address + typed code): the
        account, or None when it is unknown, expired, used or wrong. Single use, atomically."""
        now = time.time()
        wrong = False
        with self._db() as db:
            if token:
                row = db.execute("SELECT * FROM login_codes WHERE token_hash=?", (sha(token),)).fetchone()
            else:
                address = (address or "").strip().lower()
                code = "".join((code or "").split())
                row = db.execute("SELECT * FROM login_codes WHERE address=? AND used_at IS NULL AND expires_at>?"
                                 " ORDER BY created_at DESC LIMIT 1", (address, now)).fetchone()
                if row is not None and row["code_hash"] != sha(f"{address}:{code}"):
                    tries = row["tries"] + 1
                    # Too many wrong guesses burn the code: 5 tries at 10^8 is no brute force.
                    db.execute("UPDATE login_codes SET tries=?, used_at=CASE WHEN ?>=? THEN ? ELSE used_at END"
                               " WHERE token_hash=?", (tries, tries, CODE_TRIES, now, row["token_hash"]))
                    row = None
                    wrong = True
            if row is None or row["used_at"] is not None or row["expires_at"] <= now:
                n = 0
            else:
                n = db.execute("UPDATE login_codes SET used_at=? WHERE token_hash=? AND used_at IS NULL",
                               (now, row["token_hash"])).rowcount
        if wrong:
            self.audit(address or "", "login.failure", address or "", "e-mailed code", ip)
        if not n:
            return None
        acc = self.get(row["address"])
        if acc is None or acc.disabled or self.policy(acc.domain).passwordless_disabled:
            return None
        if acc.locked_until > now:
            raise Locked(acc.locked_until)
        return acc

    # --- OIDC links -------------------------------------------------------------------------
    def link_oidc(self, issuer: str, subject: str, address: str) -> None:
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO oidc_links VALUES (?,?,?,?)", (issuer, subject, address.lower(), time.time()))

    def oidc_account(self, issuer: str, subject: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT address FROM oidc_links WHERE issuer=? AND subject=?", (issuer, subject)).fetchone()
        return row["address"] if row else None

    # --- rate limits ------------------------------------------------------------------------
    def allow_attempt(self, key: str, limit: int, window: float) -> bool:
        """Record an attempt under `key`; False when `limit` attempts already happened in `window` s."""
        now = time.time()
        with self._db() as db:
            db.execute("DELETE FROM attempts WHERE at<?", (now - 86400,))
            n = db.execute("SELECT count(*) FROM attempts WHERE key=? AND at>?", (key, now - window)).fetchone()[0]
            if n >= limit:
                return False
            db.execute("INSERT INTO attempts VALUES (?,?)", (key, now))
        return True

    # --- policies ---------------------------------------------------------------------------
    def policy(self, domain: str) -> Policy:
        domain = domain.lower().rstrip(".")
        with self._db() as db:
            row = db.execute("SELECT * FROM policies WHERE domain=?", (domain,)).fetchone()
        if row is None:
            return Policy(domain)
        return Policy(domain, row["password_expiry_days"], bool(row["mfa_required"]), bool(row["passwordless_disabled"]),
                      bool(row["secure_release"]), row["updated_at"], row["updated_by"])

    def set_policy(self, policy: Policy, *, actor: str, ip: str = "") -> Policy:
        if policy.password_expiry_days < 0 or policy.password_expiry_days > 3650:
            raise EdrulesError("password expiry must be 0 (never) to 3650 days")
        now = time.time()
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO policies VALUES (?,?,?,?,?,?,?)",
                       (policy.domain, policy.password_expiry_days, int(policy.mfa_required),
                        int(policy.passwordless_disabled), int(policy.secure_release), now, actor))
        self.audit(actor, "policy.change", policy.domain,
                   f"password_expiry_days={policy.password_expiry_days} mfa_required={policy.mfa_required} "
                   f"passwordless_disabled={policy.passwordless_disabled} secure_release={policy.secure_release}", ip)
        return self.policy(policy.domain)

    # --- sessions ---------------------------------------------------------------------------
    def new_session(self, address: str, *, stage: str, method: str, ip: str = "", user_agent: str = "",
                    lifetime: float | None = None) -> str:
        """A new session; returns the secret cookie value (only its hash is stored)."""
        sid = secrets.token_urlsafe(32)
        now = time.time()
        lifetime = lifetime if lifetime is not None else (SESSION_SECONDS if stage == "ok" else PENDING_SECONDS)
        with self._db() as db:
            db.execute("INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,?,?,0)",
                       (sha(sid), address.lower(), stage, method, secrets.token_urlsafe(24), now, now + lifetime,
                        now, ip, user_agent[:200]))
        return sid

    def session(self, sid: str | None, *, touch: bool = True) -> Session | None:
        if not sid:
            return None
        now = time.time()
        with self._db() as db:
            row = db.execute("SELECT s.* FROM sessions s JOIN accounts a ON a.address=s.address"
                             " WHERE s.id_hash=? AND s.revoked=0 AND s.expires_at>? AND a.disabled=0",
                             (sha(sid), now)).fetchone()
            if row is not None and touch and now - row["last_seen"] > 60:
                db.execute("UPDATE sessions SET last_seen=? WHERE id_hash=?", (now, row["id_hash"]))
        return _session(row) if row else None

    def end_session(self, id_hash: str) -> None:
        with self._db() as db:
            db.execute("UPDATE sessions SET revoked=1 WHERE id_hash=?", (id_hash,))

    def sessions(self, address: str) -> list[Session]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM sessions WHERE address=? AND revoked=0 AND expires_at>? AND stage='ok'"
                              " ORDER BY created_at DESC", (address.lower(), time.time())).fetchall()
        return [_session(r) for r in rows]

    def revoke(self, id_hash: str, *, address: str, actor: str, ip: str = "") -> bool:
        """Revoke one of `address`'s sessions (the WHERE keeps anyone from revoking another's)."""
        with self._db() as db:
            n = db.execute("UPDATE sessions SET revoked=1 WHERE id_hash=? AND address=?", (id_hash, address.lower())).rowcount
        if n:
            self.audit(actor, "session.revoke", address.lower(), id_hash[:12], ip)
        return bool(n)

    # --- audit ------------------------------------------------------------------------------
    def audit(self, actor: str, action: str, subject: str = "", detail: str = "", ip: str = "") -> None:
        with self._db() as db:
            db.execute("INSERT INTO audit(at, actor, action, subject, detail, ip) VALUES (?,?,?,?,?,?)",
                       (time.time(), actor, action, subject, detail, ip or ""))

    def audit_log(self, *, subject_domains: frozenset[str] | None = None, subject: str | None = None,
                  limit: int = 200) -> list[AuditEntry]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM audit ORDER BY id DESC").fetchall()
        out = []
        for r in rows:
            if subject is not None and r["subject"] != subject:
                continue
            if subject_domains is not None:
                s = r["subject"]
                if (domain_of(s) if "@" in s else s) not in subject_domains:
                    continue
            out.append(AuditEntry(r["at"], r["actor"], r["action"], r["subject"], r["detail"], r["ip"]))
            if len(out) >= limit:
                break
        return out


class _Tx:
    """`with accounts._db() as db:` — one transaction, then the connection closes."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.db.close()


def _clean_address(address: str) -> str:
    a = address.strip().lower()
    local, _, dom = a.rpartition("@")
    if not local or not dom or "." not in dom or any(c.isspace() for c in a):
        raise EdrulesError(f"not an e-mail address: {address!r}")
    return a


def _account(r: sqlite3.Row) -> Account:
    return Account(r["address"], r["role"], frozenset(json.loads(r["domains"])), r["password_hash"] is not None,
                   r["password_changed_at"], bool(r["must_change_password"]), bool(r["totp_enabled"]),
                   bool(r["disabled"]), r["locked_until"], r["created_at"])


def _session(r: sqlite3.Row) -> Session:
    return Session(r["id_hash"], r["address"], r["stage"], r["method"], r["csrf"], r["created_at"],
                   r["expires_at"], r["last_seen"], r["ip"] or "", r["user_agent"] or "")


def iter_roles() -> Iterator[str]:
    yield from ROLES
