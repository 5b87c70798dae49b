"""The Postfix milter: pymilter (libmilter) collects the SMTP session, Gateway.process decides,
this module applies the Disposition (headers, recipients, reply).

Why pymilter: it is the long-standing binding to Sendmail's libmilter, which Postfix's milter
support was written against; checked against Debian's Postfix 3.7 (FIELD-NOTES.md). libmilter
runs one thread per SMTP connection; the Gateway is shared and thread-safe.

Signals: libmilter's own signal thread stops the milter on SIGHUP/SIGTERM/SIGINT. We run
libmilter in a worker thread and keep the main thread (which Linux prefers for a signal sent
to the process, and the only thread where Python runs signal handlers) free, so SIGHUP means
"reload the pack" as gateway operators expect. If libmilter ever does take the signal and
stop, the loop starts it again.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import Milter

from edrules.errors import EdrulesError
from edrules.runtime.gateway import Disposition, Gateway, Outcome
from edrules.runtime.metrics import log_event
from edrules.runtime.status import write_status

MILTER_NAME = "edrules"
# Postfix's milter_*_timeout default is 30-300 s; libmilter's own I/O timeout.
LIBMILTER_TIMEOUT = 120


@dataclass(frozen=True, slots=True)
class Listen:
    """Where the milter listens: unix:PATH or inet:HOST:PORT (Postfix's own spelling)."""

    kind: str
    path: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> "Listen":
        kind, sep, rest = text.partition(":")
        if kind == "unix" and sep and rest:
            return cls("unix", path=rest)
        if kind == "inet" and sep:
            host, _, port = rest.rpartition(":")
            if host and port.isdigit() and 0 < int(port) < 65536:
                return cls("inet", host=host.strip("[]"), port=int(port))
        raise EdrulesError(f"--listen must be unix:PATH or inet:HOST:PORT, not {text!r}")

    @property
    def libmilter(self) -> str:
        """libmilter's spelling (it writes inet:PORT@HOST)."""
        return f"unix:{self.path}" if self.kind == "unix" else f"inet:{self.port}@{self.host}"

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"inet:{self.host}:{self.port}"


@Milter.header_leading_space  # values arrive with their leading space and folding intact
class EdrulesMilter(Milter.Base):
    """One SMTP connection. Callbacks only collect; eom decides."""

    gateway: Gateway  # set on the class by serve()

    def __init__(self) -> None:
        super().__init__()
        self.client_ip: str | None = None
        self.helo: str | None = None
        self._reset()

    def _reset(self) -> None:
        self.mail_from: str = ""
        self.rcpts: list[str] = []
        self.headers: list[bytes] = []
        self.body_chunks: list[bytes] = []
        self.queue_id: str | None = None
        self.first_header = True

    @Milter.noreply
    def connect(self, hostname, family, hostaddr):
        if isinstance(hostaddr, tuple) and hostaddr:
            self.client_ip = str(hostaddr[0])
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, heloname):
        self.helo = heloname
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, mailfrom, *params):
        self._reset()
        self.mail_from = mailfrom.strip().strip("<>")
        self.queue_id = self.getsymval("i")
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, to, *params):
        self.rcpts.append(to)
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name, value):  # pragma: no cover - negotiation only; header_bytes does the work
        return Milter.CONTINUE

    def header_bytes(self, name, value):
        """The per-header callback (about 20 per message), kept to one Python frame: pymilter's
        default path decodes the value and goes through two decorator wrappers first."""
        if self.first_header:
            self.first_header = False
            if name.lower() == "received" and self._is_our_received(value):
                # If Postfix shows milters the Received field it is about to prepend, it is not
                # part of the message the client sent (what is stored, released and hashed).
                return Milter.NOREPLY if self._protocol & Milter.P_NR_HDR else Milter.CONTINUE
        self.headers.append(name.encode("ascii", "replace") + b":" + value.replace(b"\n", b"\r\n") + b"\r\n")
        return Milter.NOREPLY if self._protocol & Milter.P_NR_HDR else Milter.CONTINUE

    def _is_our_received(self, value: bytes) -> bool:
        qid = self.queue_id or self.getsymval("i")
        return bool(qid) and f"id {qid}".encode() in value

    @Milter.nocallback  # nothing to do there: one callback (~30 µs) less per message
    def eoh(self):
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk):
        self.body_chunks.append(chunk)
        return Milter.CONTINUE

    def eom(self):
        try:
            raw = b"".join(self.headers) + b"\r\n" + b"".join(self.body_chunks)
            qid = self.queue_id or self.getsymval("i")
            d = self.gateway.process(raw, mail_from=self.mail_from, rcpts=self.rcpts, client_ip=self.client_ip,
                                     helo=self.helo, queue_id=qid)
            rc = self._apply(d)
        except Exception as exc:  # noqa: BLE001 (never accept what we could not decide)
            log_event({"event": "message", "queue_id": self.queue_id, "outcome": "tempfail",
                       "error": f"milter: {type(exc).__name__}: {exc}"})
            self.gateway.metrics.tempfails.labels("milter-error").inc()
            self.setreply("451", "4.3.0", "edrules: temporary failure, try again later")
            rc = Milter.TEMPFAIL
        finally:
            self._reset()
        return rc

    def _apply(self, d: Disposition) -> int:
        log_event(d.log_record())
        if d.outcome is Outcome.TEMPFAIL:
            self.setreply(*d.reply)
            return Milter.TEMPFAIL
        if d.outcome is Outcome.REJECT:
            self.setreply(*d.reply)
            return Milter.REJECT
        if d.outcome is Outcome.DISCARD:
            return Milter.DISCARD
        lead = " " if self._protocol & Milter.P_HDR_LEADSPC else ""
        for name, idx in d.remove_headers:
            self.chgheader(name, idx, None)
        for rcpt in d.remove_recipients:
            self.delrcpt(rcpt if rcpt.startswith("<") else f"<{rcpt}>")
        # addheader(idx=0) prepends: insert in reverse so the first listed ends up on top.
        for name, value in reversed(d.add_headers):
            self.addheader(name, lead + value.replace("\r\n", "\n"), 0)
        return Milter.ACCEPT

    def abort(self):
        self._reset()
        return Milter.CONTINUE

    def close(self):
        return Milter.CONTINUE


def _run_libmilter(listen: Listen, started: threading.Event) -> None:
    """Milter.runmilter, plus: the unix socket is made connectable for the postfix user
    right after it is created (libmilter creates it with the process umask)."""
    m = Milter.milter
    m.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.DELRCPT | Milter.SETSYMLIST)
    m.set_exception_policy(Milter.TEMPFAIL)  # a Python error in a callback never accepts mail
    m.set_connect_callback(Milter.connect_callback)
    m.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    m.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    m.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    m.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    m.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    m.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    m.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    m.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    m.set_close_callback(Milter.close_callback)
    m.setconn(listen.libmilter)
    m.settimeout(LIBMILTER_TIMEOUT)
    m.register(MILTER_NAME, data=lambda ctx: ctx.getpriv().data(),
               unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd), negotiate=Milter.negotiate_callback)
    m.opensocket(True)  # removes a stale socket left by a killed milter
    if listen.kind == "unix":
        os.chmod(listen.path, 0o666)  # postfix's smtpd runs as the postfix user
    started.set()
    m.main()


class MilterServer:
    """The process: gateway + libmilter thread + reload on SIGHUP and on file change + status file."""

    def __init__(self, gateway: Gateway, listen: Listen, *, status_interval: float = 5.0,
                 watch_interval: float = 1.0, next_hop: tuple[str, int] | None = None):
        self.gateway = gateway
        self.next_hop = next_hop
        self.listen = listen
        self.status_interval = status_interval
        self.watch_interval = watch_interval
        self.stop_event = threading.Event()
        self.started_at = datetime.now(timezone.utc)
        self._hup = threading.Event()

    def status(self) -> dict:
        g = self.gateway
        last = g.packs.last_reload
        m = g.metrics
        return {
            "pid": os.getpid(),
            "listen": str(self.listen),
            "next_hop": None if self.next_hop is None else f"{self.next_hop[0]}:{self.next_hop[1]}",
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "authserv_id": g.authserv_id,
            "trusted_authserv": list(g.trusted_authserv),
            "auth": "trusted upstream Authentication-Results" if g.trusted_authserv else "edrules.auth (SPF, DKIM, DMARC)",
            "pack": g.packs.current.describe(),
            "pack_path": str(g.packs.pack_path),
            "last_reload": None if last is None else {
                "ok": last.ok, "trigger": last.trigger, "error": last.error,
                "at": last.at.isoformat(timespec="seconds"), "serving": last.pack},
            "counters": {
                "messages": _counter_values(m.messages),
                "tempfails": _counter_values(m.tempfails),
                "reloads": _counter_values(m.reloads),
            },
        }

    def write_status(self) -> None:
        write_status(self.gateway.state_dir, self.status())

    def serve(self) -> None:
        EdrulesMilter.gateway = self.gateway
        self.gateway.reload_hooks.append(lambda _result: self.write_status())
        Milter.factory = EdrulesMilter
        signal.signal(signal.SIGHUP, lambda *_: self._hup.set())
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        self.gateway.packs.watch(self.stop_event, self.watch_interval)
        threading.Thread(target=self._reloader, name="edrules-sighup", daemon=True).start()
        worker = self._start_libmilter()
        log_event({"event": "start", "listen": str(self.listen), "pid": os.getpid(),
                   "pack": self.gateway.packs.current.describe()})
        self.write_status()
        next_status = time.monotonic() + self.status_interval
        while not self.stop_event.is_set():
            # Short sleeps: the main thread must return to the interpreter for handlers to run.
            self.stop_event.wait(0.2)
            if not worker.is_alive() and not self.stop_event.is_set():
                log_event({"event": "libmilter-restart", "reason": "libmilter stopped (signal or error)"})
                worker = self._start_libmilter()
            if time.monotonic() >= next_status:
                self.write_status()
                next_status = time.monotonic() + self.status_interval
        log_event({"event": "stop", "pid": os.getpid()})
        self.write_status()
        try:
            Milter.milter.stop()
        except Exception:  # noqa: BLE001 (exiting anyway)
            pass
        worker.join(timeout=8)

    def _start_libmilter(self) -> threading.Thread:
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                _run_libmilter(self.listen, started)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                started.set()

        t = threading.Thread(target=run, name="libmilter", daemon=True)
        t.start()
        started.wait(10)
        if errors:
            raise EdrulesError(f"cannot listen on {self.listen}: {errors[0]}")
        return t

    def _reloader(self) -> None:
        while not self.stop_event.is_set():
            if self._hup.wait(0.5):
                self._hup.clear()
                self.gateway.packs.reload("SIGHUP")
                self.write_status()


def _counter_values(counter) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in counter.collect():
        for s in metric.samples:
            if s.name.endswith("_total"):
                key = ",".join(f"{v}" for v in s.labels.values()) or "all"
                out[key] = s.value
    return out
