"""One message through the gateway: facts -> verdicts -> per-recipient actions, as a Disposition.

The milter and `edrules demo` both call Gateway.process, so live mail and the demo see one
truth. Nothing here talks SMTP: the Disposition says what the MTA must do (headers to add
and remove, recipients to drop, the SMTP reply), and the milter applies it.

Never lose a message: anything that goes wrong inside (no verified pack, the store failing,
a bug) answers 4xx so the client retries, never 2xx-and-drop.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any, Sequence

from edrules.catalog import load_catalog
from edrules.errors import EdrulesError
from edrules.facts import Action, MessageFacts, TraceStep, Verdict
from edrules.ingest.extract import facts_from_bytes
from edrules.ingest.trust import TrustConfig
from edrules.runtime.metrics import Metrics
from edrules.runtime.reload import PackHolder, RunningPack

VERDICT_HEADER = "X-EDRules-Verdict"
AR_HEADER = "Authentication-Results"
DEFAULT_AUTHSERV_ID = "edrules.invalid"
SCANNERS = ("spamassassin", "rspamd")
STORE_THREADS = 4
# How far back a retried message is looked for among a recipient's quarantined items: a client
# retries within seconds, so it is among the newest few (each row read costs ~35 µs).
RETRY_LOOKBACK = 3


class Outcome(StrEnum):
    """What the MTA answers at end of DATA."""

    ACCEPT = "accept"  # 250; delivered to the recipients that remain
    DISCARD = "discard"  # 250; every recipient quarantined, nothing delivered
    REJECT = "reject"  # 5xx: every recipient rejected
    TEMPFAIL = "tempfail"  # 4xx: internal error, missing/unverifiable pack; the client retries


@dataclass(frozen=True, slots=True)
class RecipientAction:
    """The action taken for one recipient (after the mixed-message rule), and the verdict behind it."""

    recipient: str  # normalised
    action: Action
    verdict: Verdict
    note: str = ""  # why the action differs from the verdict's (mixed reject -> quarantine)
    item_id: str | None = None  # quarantine item, when quarantined

    def to_json(self) -> dict[str, Any]:
        out = {"rcpt": self.recipient, "action": str(self.action), "category": self.verdict.category,
               "rule_id": self.verdict.rule_id, "reason": self.verdict.reason}
        if self.note:
            out["note"] = self.note
        if self.item_id:
            out["item"] = self.item_id
        return out


@dataclass(frozen=True, slots=True)
class Disposition:
    """Everything the MTA must do with one message."""

    outcome: Outcome
    reply: tuple[str, str, str] | None  # (code, enhanced code, text) for REJECT / TEMPFAIL
    recipients: tuple[RecipientAction, ...] = ()
    add_headers: tuple[tuple[str, str], ...] = ()  # prepended, in this order
    remove_headers: tuple[tuple[str, int], ...] = ()  # (name, 1-based occurrence among that name)
    remove_recipients: tuple[str, ...] = ()  # envelope RCPT TO values as the client sent them
    quarantined: tuple[Any, ...] = ()  # QuarantineItem records the store wrote
    released: tuple[str, ...] = ()  # recipients delivered on a verified release header
    pack: str | None = None  # name/version that decided
    queue_id: str | None = None
    ms: float = 0.0
    error: str | None = None
    facts: MessageFacts | None = field(default=None, compare=False, repr=False)

    def log_record(self) -> dict[str, Any]:
        """The one JSON log line per message (queue id, per-recipient action, rule, pack, ms)."""
        rec: dict[str, Any] = {"event": "message", "queue_id": self.queue_id, "outcome": str(self.outcome),
                               "pack": self.pack, "ms": round(self.ms, 3),
                               "recipients": [r.to_json() for r in self.recipients]}
        if self.facts is not None:
            rec["client_ip"] = self.facts.client_ip
            rec["envelope_from"] = self.facts.envelope_from
            rec["header_from"] = self.facts.header_from
            rec["message_id"] = self.facts.message_id
        if self.released:
            rec["released"] = list(self.released)
        if self.reply:
            rec["reply"] = " ".join(self.reply)
        if self.error:
            rec["error"] = self.error
        return rec


# -- header fields at the byte level -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Field:
    name: str  # as written
    lname: str
    start: int
    end: int  # exclusive, including the line break(s)
    value: str  # unfolded, stripped


# The only fields the gateway itself reads or removes; found with one C-level regex scan
# instead of splitting every field in Python (facts_from_bytes does the full parse once).
_OURS = re.compile(rb"^(authentication-results|x-edrules-verdict|x-edrules-release)[ \t]*:", re.I | re.M)
_NEXT_FIELD = re.compile(rb"\n(?![ \t])")


def _header_fields(raw: bytes) -> list[_Field]:
    """A-R, verdict and release fields of the header block, top first, with their byte spans."""
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    limit = min(ends) + 1 if ends else len(raw)
    if raw.startswith((b"\r\n", b"\n")):
        return []
    out = []
    for m in _OURS.finditer(raw, 0, limit):
        nxt = _NEXT_FIELD.search(raw, m.end(), limit + 1)
        end = nxt.start() + 1 if nxt else limit
        name = m.group(1).decode("ascii")
        out.append(_Field(name, name.lower(), m.start(), end, _unfold(raw[m.start():end], name)))
    return out


def _unfold(chunk: bytes, name: str) -> str:
    text = chunk.decode("utf-8", "replace")
    value = text.split(":", 1)[1] if ":" in text else ""
    return re.sub(r"\r?\n[ \t]*", " ", value).strip()


def _authserv_id_of(value: str) -> str:
    head = value.split(";", 1)[0]
    head = re.sub(r"\([^)]*\)", " ", head).split()
    return head[0].lower().rstrip(".") if head else ""


def _ascii_reply(text: str, limit: int = 300) -> str:
    """SMTP reply text: printable ASCII only, no '%' (libmilter treats it as a format char)."""
    clean = "".join(c if (" " <= c <= "~" and c != "%") else "?" for c in text)
    return clean[:limit]


def _ar_value(authserv_id: str, f: MessageFacts) -> str:
    """Our Authentication-Results (RFC 8601) from the facts the verdict used."""
    parts = [authserv_id]
    spf = f.spf or "none"
    if f.envelope_from:
        parts.append(f"spf={spf} smtp.mailfrom={f.envelope_from}")
    elif f.helo:
        parts.append(f"spf={spf} smtp.helo={f.helo}")
    else:
        parts.append(f"spf={spf}")
    if f.dkim:
        for d in f.dkim:
            ptype = f" header.d={d.d}" if d.d else ""
            sel = f" header.s={d.s}" if d.s else ""
            parts.append(f"dkim={d.result}{ptype}{sel}")
    else:
        parts.append("dkim=none")
    dmarc = f.dmarc or "none"
    pol = f" (p={f.dmarc_policy})" if f.dmarc_policy else ""
    frm = f" header.from={f.header_from_domain}" if f.header_from_domain else ""
    parts.append(f"dmarc={dmarc}{pol}{frm}")
    return ";\r\n\t".join(parts)


_ACTION_RANK = {Action.TAG: 2, Action.DELIVER: 1}


class Gateway:
    """The gateway: a verified pack (hot-reloadable), the quarantine store and how facts are
    made (our own SPF/DKIM/DMARC, or trusted upstream Authentication-Results)."""

    def __init__(
        self,
        pack_path: str | Path,
        pubkey_path: str | Path,
        state_dir: str | Path,
        *,
        trusted_authserv: Sequence[str] = (),
        authserv_id: str = DEFAULT_AUTHSERV_ID,
        resolver=None,
        store=None,
        scanner: str | None = None,
        metrics: Metrics | None = None,
        release_key: bytes | None = None,
    ):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.authserv_id = authserv_id.strip().lower().rstrip(".")
        if not self.authserv_id:
            raise EdrulesError("--authserv-id must not be empty")
        self.trusted_authserv = tuple(sorted({t.strip().lower().rstrip(".") for t in trusted_authserv if t.strip()}))
        if self.authserv_id in self.trusted_authserv:
            # Our own id on mail that arrives is always a forgery (we are the one writing it).
            raise EdrulesError(f"--trusted-authserv {self.authserv_id} is our own --authserv-id; "
                               "copies of our own id arriving from outside are forged and removed")
        if scanner is not None and scanner not in SCANNERS:
            raise EdrulesError(f"unknown scanner {scanner!r} (use {' or '.join(SCANNERS)})")
        self.scanner = scanner
        self.metrics = metrics or Metrics()
        self.trust = TrustConfig(authserv_ids=frozenset(self.trusted_authserv), auto_detect=False)
        self.resolver = resolver
        self._store = store
        self._store_thread: ThreadPoolExecutor | None = None
        self._store_lock = threading.Lock()
        self._release_key = release_key
        self.reload_hooks: list = []  # called with each ReloadResult (the milter rewrites its status)
        self.packs = PackHolder(pack_path, pubkey_path, self.state_dir, on_reload=self._reloaded)
        cur = self.packs.current
        self.metrics.set_pack(cur.name, cur.version, cur.loaded_at)

    # -- collaborators, created on first use --------------------------------------------
    @property
    def store(self):
        if self._store is None:
            self._store = self._in_store_thread(self._open_store)
        return self._store

    def _open_store(self):
        from edrules.runtime.store import open_store

        return open_store(self.state_dir)

    def _in_store_thread(self, fn, *args, **kwargs):
        """Run a store call on a thread of our own pool. pymilter keeps one Python thread state
        per SMTP connection while libmilter runs its callbacks on any worker thread, so the
        store's thread-local SQLite connections would meet foreign OS threads. Several workers:
        each quarantined message waits for fsyncs, which need not queue behind each other."""
        if self._store_thread is None:
            with self._store_lock:
                if self._store_thread is None:
                    self._store_thread = ThreadPoolExecutor(max_workers=STORE_THREADS,
                                                            thread_name_prefix="edrules-store")
        return self._store_thread.submit(fn, *args, **kwargs).result()

    def release_key(self) -> bytes:
        if self._release_key is None:
            from edrules.runtime.release import release_key

            self._release_key = release_key(self.state_dir)
        return self._release_key

    def _reloaded(self, result) -> None:
        self.metrics.reloads.labels("ok" if result.ok else "failed", result.trigger).inc()
        if result.ok:
            cur = self.packs.current
            self.metrics.set_pack(cur.name, cur.version, cur.loaded_at)
        for hook in self.reload_hooks:
            hook(result)

    def warm_up(self) -> None:
        """Import and index everything a first message needs (catalog, A-R parser, SPF/DKIM),
        so the first real message does not pay ~20 ms of imports."""
        raw = b"From: warm@up.invalid\r\nTo: x@up.invalid\r\nSubject: warm\r\n\r\nx\r\n"
        f = self.facts(raw, mail_from="warm@up.invalid", rcpts=["x@up.invalid"], client_ip="192.0.2.1",
                       helo="up.invalid") if self.trusted_authserv else None
        if f is None:
            from edrules.auth import authenticate  # noqa: F401 (import cost only; no DNS asked)
            from edrules.ingest.extract import facts_from_bytes as _f

            _f(raw, trust=self.trust, envelope_from="warm@up.invalid", recipients=["x@up.invalid"],
               client_ip="192.0.2.1", helo="up.invalid")
        self.packs.current.evaluator.evaluate(f) if f is not None else None

    # -- the message ---------------------------------------------------------------------
    def process(
        self,
        raw: bytes,
        *,
        mail_from: str,
        rcpts: Sequence[str],
        client_ip: str | None,
        helo: str | None,
        queue_id: str | None = None,
        received_at: datetime | None = None,
    ) -> Disposition:
        """Decide one message. Never raises: an internal problem is a TEMPFAIL disposition."""
        t0 = time.perf_counter()
        running = self.packs.current  # one snapshot for the whole message (reload swaps between)
        try:
            d = self._process(running, raw, mail_from, rcpts, client_ip, helo, queue_id,
                              received_at or datetime.now(timezone.utc))
        except Exception as exc:  # noqa: BLE001 (tempfail is the answer to every failure)
            reason = "internal-error" if not isinstance(exc, EdrulesError) else "error"
            self.metrics.tempfails.labels(reason).inc()
            d = Disposition(Outcome.TEMPFAIL, ("451", "4.3.0", "edrules: temporary failure, try again later"),
                            pack=f"{running.name}/{running.version}" if running else None,
                            queue_id=queue_id, error=f"{type(exc).__name__}: {exc}")
        ms = (time.perf_counter() - t0) * 1000
        self.metrics.messages.labels(str(d.outcome)).inc()
        self.metrics.seconds.observe(ms / 1000)
        for r in d.recipients:
            self.metrics.verdicts.labels(str(r.action), r.verdict.category).inc()
        return replace(d, ms=ms)

    def _process(self, running: RunningPack | None, raw: bytes, mail_from: str, rcpts: Sequence[str],
                 client_ip: str | None, helo: str | None, queue_id: str | None,
                 received_at: datetime) -> Disposition:
        if running is None:
            raise EdrulesError("no verified pack is loaded")
        pack_label = f"{running.name}/{running.version}"
        fields = _header_fields(raw)
        clean, removals, releases = self._strip_ours(raw, fields)

        facts = self.facts(clean, mail_from=mail_from, rcpts=rcpts, client_ip=client_ip, helo=helo,
                           queue_id=queue_id, received_at=received_at)
        verdicts = running.evaluator.evaluate(facts)
        if not verdicts:
            raise EdrulesError("message has no recipients")
        released = self._released(releases, clean, [v.recipient for v in verdicts])
        if released:
            self.metrics.releases.inc()
        actions = self._actions(verdicts, released)

        # Envelope forms of each normalised recipient (a client may repeat one in another case).
        envelope: dict[str, list[str]] = {}
        for r in rcpts:
            norm = _norm_rcpt(r)
            envelope.setdefault(norm, []).append(r)

        if all(a.action is Action.REJECT for a in actions):
            v = actions[0].verdict
            text = _ascii_reply(f"edrules: rejected ({v.rule_id or v.category}): {v.reason}")
            return Disposition(Outcome.REJECT, ("550", "5.7.1", text), tuple(actions), pack=pack_label,
                               queue_id=queue_id, facts=facts)

        to_store = [a for a in actions if a.action is Action.QUARANTINE]
        items: list[Any] = []
        if to_store:
            items = self._quarantine(clean, to_store, facts, mail_from, client_ip, helo, queue_id,
                                     running, received_at)
            by_rcpt = {getattr(i, "recipient", None): getattr(i, "id", None) for i in items}
            actions = [replace(a, item_id=by_rcpt.get(a.recipient)) if a.action is Action.QUARANTINE else a
                       for a in actions]
        delivered = [a for a in actions if a.action in (Action.DELIVER, Action.TAG)]
        if not delivered:
            return Disposition(Outcome.DISCARD, None, tuple(actions), remove_headers=removals,
                               quarantined=tuple(items), released=tuple(released), pack=pack_label,
                               queue_id=queue_id, facts=facts)
        drop = tuple(e for a in actions if a.action is Action.QUARANTINE for e in envelope.get(a.recipient, ()))
        top = max(delivered, key=lambda a: _ACTION_RANK[a.action])
        tv = top.verdict
        verdict_value = (f"{top.action}; category={tv.category}; rule={tv.rule_id or '-'}; "
                         f"pack={pack_label}")
        if released:
            verdict_value += "; released"
        add = ((AR_HEADER, _ar_value(self.authserv_id, facts)), (VERDICT_HEADER, verdict_value))
        return Disposition(Outcome.ACCEPT, None, tuple(actions), add_headers=add, remove_headers=removals,
                           remove_recipients=drop, quarantined=tuple(items), released=tuple(released),
                           pack=pack_label, queue_id=queue_id, facts=facts)

    # -- steps ---------------------------------------------------------------------------
    def _strip_ours(self, raw: bytes, fields: list[_Field]
                    ) -> tuple[bytes, tuple[tuple[str, int], ...], list[str]]:
        """Remove what only we may write: A-R under our authserv-id, our verdict header and
        the release header (honoured only when it verifies, below). Returns the message as
        stored and evaluated, the removals for the MTA, and the release header values."""
        from_outside = {VERDICT_HEADER.lower(), _RELEASE_HEADER.lower()}
        seen: dict[str, int] = {}
        drop: list[_Field] = []
        removals: list[tuple[str, int]] = []
        releases: list[str] = []
        for f in fields:
            seen[f.lname] = seen.get(f.lname, 0) + 1
            ours = (f.lname == "authentication-results" and _authserv_id_of(f.value) == self.authserv_id)
            if ours or f.lname in from_outside:
                drop.append(f)
                removals.append((f.name, seen[f.lname]))
                if f.lname == _RELEASE_HEADER.lower():
                    releases.append(f.value)
                self.metrics.forged.labels(f.lname).inc()
        if not drop:
            return raw, (), []
        parts, pos = [], 0
        for f in drop:
            parts.append(raw[pos:f.start])
            pos = f.end
        parts.append(raw[pos:])
        # Removing the n-th of a name shifts later ones down: remove from the bottom up.
        return b"".join(parts), tuple(reversed(removals)), releases

    def facts(self, raw: bytes, *, mail_from: str, rcpts: Sequence[str], client_ip: str | None,
              helo: str | None, queue_id: str | None = None, received_at: datetime | None = None
              ) -> MessageFacts:
        """Facts from the session's envelope (explicit values always win over headers), with
        SPF/DKIM/DMARC computed here, or read from trusted upstream A-R when configured."""
        extracted = facts_from_bytes(raw, source=queue_id or "", trust=self.trust, envelope_from=mail_from,
                                     recipients=list(rcpts), client_ip=client_ip, helo=helo)
        f = extracted.facts
        changes: dict[str, Any] = {"received_at": received_at}
        if not self.trusted_authserv:
            from edrules.auth import authenticate  # pyspf/dkimpy are needed only in this mode

            auth = authenticate(raw, client_ip or "", helo, mail_from, resolver=self.resolver)
            changes.update(auth.fact_fields())
            changes["authserv_id"] = self.authserv_id
            passing = [d.d for d in changes["dkim"] if str(d.result) == "pass" and d.d]
            # The sending network counts DKIM only with a pass we verified ourselves.
            changes["bulk_provider"] = load_catalog().identify(f.envelope_from_domain, passing, f.helo, None)
        if self.scanner is None:
            # No upstream scanner configured: scanner headers were written by whoever sent it.
            changes["category"] = None
            changes["score"] = None
        return replace(f, **changes)

    def _released(self, values: list[str], clean: bytes, recipients: list[str]) -> list[str]:
        """Recipients a release header names and that verifies (signature, message, recipient,
        expiry); any other copy was stripped above and is ignored."""
        if not values:
            return []
        from edrules.runtime.release import verify_release_header

        key = self.release_key()
        out = []
        for rcpt in recipients:
            if any(verify_release_header(key, v, clean, rcpt) for v in values):
                out.append(rcpt)
        return out

    @staticmethod
    def _actions(verdicts: list[Verdict], released: list[str]) -> list[RecipientAction]:
        out = []
        for v in verdicts:
            if v.recipient in released:
                v = Verdict(v.recipient, Action.DELIVER, "released",
                            "released from quarantine (verified release header)", "release",
                            v.trace + (TraceStep("release", "verified release header"),))
            out.append(RecipientAction(v.recipient, v.action, v))
        if any(a.action is Action.REJECT for a in out) and not all(a.action is Action.REJECT for a in out):
            # One SMTP transaction has one answer: other recipients accept the message, so the
            # rejected ones are quarantined instead (and their record says so).
            out = [replace(a, action=Action.QUARANTINE,
                           note="rejected by the policy; quarantined because other recipients accepted the message")
                   if a.action is Action.REJECT else a for a in out]
        return out

    def _quarantine(self, clean: bytes, actions: list[RecipientAction], facts: MessageFacts, mail_from: str,
                    client_ip: str | None, helo: str | None, queue_id: str | None, running: RunningPack,
                    received_at: datetime) -> list[Any]:
        from edrules.runtime.store import QuarantinedRecipient

        recips = []
        for a in actions:
            v = a.verdict
            reason = v.reason + (f" ({a.note})" if a.note else "")
            recips.append(QuarantinedRecipient(a.recipient, v.category, reason, v.rule_id))
        # Stored (fsync'd) before the MTA hears 250. A crash after this answers 4xx and the
        # client retries the same bytes under a NEW Postfix queue id, which the store's
        # (sha256, recipient, queue id) key does not catch: an identical message still held
        # for that recipient is reused instead of stored twice.
        store = self.store
        return self._in_store_thread(self._add_once, store, clean, recips, envelope_from=mail_from,
                                     client_ip=client_ip, helo=helo, queue_id=queue_id, pack_name=running.name,
                                     pack_version=running.version, received_at=received_at, facts=facts)

    @staticmethod
    def _add_once(store, clean: bytes, recips: list, **kw) -> list[Any]:
        sha = hashlib.sha256(clean).hexdigest()
        held, new = [], []
        for r in recips:
            recent = store.list(recipients=[r.recipient], state="quarantined", limit=RETRY_LOOKBACK)
            same = next((i for i in recent if i.message_sha256 == sha), None)
            if same is not None:
                held.append(same)
            else:
                new.append(r)
        return held + (list(store.add(clean, new, **kw)) if new else [])


@dataclass(frozen=True, slots=True)
class Envelope:
    """What an MTA would hand the gateway for a message: MAIL FROM, RCPT TO, client IP, HELO."""

    mail_from: str
    rcpts: tuple[str, ...]
    client_ip: str | None
    helo: str | None


def recorded_envelope(raw: bytes, gateway_id: str) -> Envelope:
    """The envelope a trusted gateway recorded in a stored message (Return-Path, Delivered-To /
    X-Original-To, its Received hop): how `edrules demo` and the benchmark replay saved mail
    through Gateway.process without SMTP."""
    trust = TrustConfig(authserv_ids=frozenset({gateway_id}), auto_detect=False)
    f = facts_from_bytes(raw, trust=trust).facts
    return Envelope(f.envelope_from or "", tuple(r for r in f.recipients if r), f.client_ip, f.helo)


_RELEASE_HEADER = "X-EDRules-Release"  # = edrules.runtime.release.RELEASE_HEADER (kept import-free)


def _norm_rcpt(r: str) -> str:
    from edrules.domains import normalize_address

    return normalize_address(r.strip().strip("<>")) or r

