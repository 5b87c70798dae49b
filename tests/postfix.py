"""A real Debian Postfix on 127.0.0.1 for tests, benchmarks and the demo: its own config
directory and queue under a temp dir, started with `postfix -c DIR start`, stopped by PID.

Also an aiosmtpd sink (the next hop) that records every message it is handed.

    with SmtpSink() as sink, Postfix(next_hop=sink.port, milter="unix:/tmp/x/milter.sock") as pf:
        smtplib.SMTP("127.0.0.1", pf.port).sendmail(...)
        sink.wait_for(1)

Postfix daemons run as the `postfix` user, so everything it touches (queue, milter socket)
lives under a world-traversable directory in /tmp (pytest's tmp_path is 0700 for root).
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path

from components import free_port, missing, wait_for_port

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
MAIN_CF_DEBIAN = Path("/usr/share/postfix/main.cf.debian")
MASTER_CF = Path("/etc/postfix/master.cf")
TEST_DOMAINS = ("corp.test",)


def require_postfix() -> None:
    """missing(...) unless Debian's postfix is installed and we may run it (root)."""
    for p in (POSTFIX, POSTCONF, str(MAIN_CF_DEBIAN), str(MASTER_CF)):
        if not os.path.exists(p):
            missing(f"needs Debian postfix ({p} not found; .ci/run installs it)")
    if os.geteuid() != 0:
        missing("needs root to start postfix")


def require_pymilter() -> None:
    try:
        import Milter  # noqa: F401
    except ImportError:
        missing("needs pymilter (pip install -e '.[milter]', built against apt libmilter-dev)")


def shared_tmpdir(prefix: str) -> Path:
    """A temp dir the postfix user can traverse (mode 0755)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o755)
    return d


@dataclass
class Received:
    """One message as the sink got it."""

    mail_from: str
    rcpts: list[str]
    data: bytes

    @property
    def message(self):
        return message_from_bytes(self.data)


class SmtpSink:
    """aiosmtpd on 127.0.0.1: the next hop. Thread-safe list of what arrived."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._controller = None

    def __enter__(self) -> "SmtpSink":
        from aiosmtpd.controller import Controller

        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd API)
                with sink._cond:
                    sink.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                                  bytes(envelope.original_content or envelope.content)))
                    sink._cond.notify_all()
                return "250 OK"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._controller is not None:
            self._controller.stop()

    def wait_for(self, n: int, timeout: float = 30.0) -> list[Received]:
        """Block until at least n messages arrived; returns a copy (fewer on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self.messages)

    def recipients(self) -> list[str]:
        with self._cond:
            return [r for m in self.messages for r in m.rcpts]

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()


@dataclass
class Postfix:
    """One Postfix instance on 127.0.0.1:port relaying TEST_DOMAINS to the sink, discarding
    everything else. `milter` is a Postfix milter address (unix:PATH or inet:HOST:PORT) or None."""

    next_hop: int
    milter: str | None = None
    port: int = field(default_factory=free_port)
    domains: tuple[str, ...] = TEST_DOMAINS
    extra: dict[str, str] = field(default_factory=dict)
    root: Path | None = None

    def __post_init__(self) -> None:
        self.root = self.root or shared_tmpdir("edrules-postfix-")
        self.config = self.root / "etc"
        self.queue = self.root / "queue"
        self.data = self.root / "data"
        self.log = self.root / "maillog"
        self.pid: int | None = None

    # -- configuration ---------------------------------------------------------------
    def main_cf(self) -> dict[str, str]:
        transports = ", ".join(f"{d}=smtp:[127.0.0.1]:{self.next_hop}" for d in self.domains)
        cf = {
            "compatibility_level": "3.6",
            "maillog_file": str(self.log),
            "maillog_file_prefixes": "/tmp",
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "mx.edrules.test",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": " ".join(self.domains),
            "transport_maps": "inline:{" + transports + "}",
            "default_transport": "discard:",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
            # Deferred mail (next hop down) is retried within seconds, not minutes.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connection_cache_on_demand": "no",
            "milter_default_action": "tempfail",
            "milter_protocol": "6",
            "smtpd_milters": self.milter or "",
            "non_smtpd_milters": "",
        }
        cf.update(self.extra)
        return cf

    def write_config(self) -> None:
        self.config.mkdir(parents=True, exist_ok=True)
        # postfix-script creates the queue's subdirectories, not the queue itself.
        self.queue.mkdir(mode=0o755, exist_ok=True)
        self.data.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(self.data, "postfix", "postfix")
        # NOT main.cf.proto: with it `postfix start` exits 1 with no output (FIELD-NOTES).
        shutil.copy(MAIN_CF_DEBIAN, self.config / "main.cf")
        shutil.copy(MASTER_CF, self.config / "master.cf")
        self.postconf(*(f"{k}={v}" for k, v in self.main_cf().items()))
        # No daemon in a chroot (the chroot would need copies of libraries and config).
        self.postconf("-F", "*/*/chroot=n")
        # Our own listener instead of port 25 (other instances run on this machine too).
        self.postconf("-MX", "smtp/inet")
        self.postconf("-M", f"127.0.0.1:{self.port}/inet=127.0.0.1:{self.port} inet n - n - - smtpd")

    def postconf(self, *args: str) -> str:
        out = subprocess.run([POSTCONF, "-c", str(self.config), *args], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"postconf {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    # -- life cycle ------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "Postfix":
        require_postfix()
        self.write_config()
        out = subprocess.run([POSTFIX, "-c", str(self.config), "start"], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"postfix start failed ({out.returncode}): {out.stderr.strip()} "
                               f"{self.log_text()[-2000:]}")
        wait_for_port(self.port, timeout)
        pidfile = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + timeout
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.pid = int(pidfile.read_text().split()[0])
        return self

    def reload(self) -> None:
        """Re-read main.cf (e.g. after changing smtpd_milters)."""
        self.write_config()
        subprocess.run([POSTFIX, "-c", str(self.config), "reload"], capture_output=True, check=True)

    def stop(self, timeout: float = 20.0) -> None:
        if self.pid is None:
            return
        subprocess.run([POSTFIX, "-c", str(self.config), "stop"], capture_output=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass
        self.pid = None

    def __enter__(self) -> "Postfix":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if os.environ.get("EDRULES_KEEP_POSTFIX") is None and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- helpers ----------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def queue_ids(self) -> list[str]:
        """Ids of messages still queued (deferred/active/incoming)."""
        ids = []
        for sub in ("incoming", "active", "deferred", "hold", "maildrop"):
            d = self.queue / sub
            if d.is_dir():
                ids += [p.name for p in d.rglob("*") if p.is_file()]
        return ids

    def wait_queue_empty(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.queue_ids():
                return True
            time.sleep(0.1)
        return False

    def send(self, raw: bytes, mail_from: str, rcpts: list[str], *, helo: str = "client.example"
             ) -> dict[str, tuple[int, bytes]]:
        """One SMTP transaction; returns smtplib's refused-recipients dict, raises
        smtplib.SMTPResponseException (with smtp_code) when the message is refused."""
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname=helo, timeout=30) as s:
            return s.sendmail(mail_from, rcpts, raw)


# -- the milter as a process, and signed packs for it ------------------------------------------

def make_keys(directory: Path) -> tuple[Path, Path]:
    from edrules.pack import generate_keypair

    return generate_keypair(directory)


def make_pack(rules_yaml: str, out: Path, private_key: Path | None, **meta: str) -> Path:
    """Compile rules text into a pack at `out` (signed when private_key is given)."""
    from edrules.pack import build_pack, write_pack
    from edrules.rules.parse import parse_rules

    policy = parse_rules(rules_yaml, source=str(out.with_suffix(".yaml")))
    write_pack(build_pack(policy, source_bytes=rules_yaml.encode(), private_key_path=private_key,
                          metadata=dict(meta)), out)
    return out


class MilterProcess:
    """`edrules milter` as a child process on a unix socket (FIELD-NOTES: over TCP each message
    waits ~43 ms for Nagle + delayed ACK). Stopped by PID; kill9() for the crash test."""

    def __init__(self, pack: Path, pubkey: Path, state: Path, *, socket_dir: Path | None = None,
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.dir = socket_dir or shared_tmpdir("edrules-milter-")
        self.socket = self.dir / "milter.sock"
        self.pack, self.pubkey, self.state = pack, pubkey, state
        self.args = args
        self.env = env
        self.log = self.dir / "milter.log"
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.socket}"

    def command(self) -> list[str]:
        import sys

        return [sys.executable, "-m", "edrules.cli", "milter", "--pack", str(self.pack), "--pubkey",
                str(self.pubkey), "--listen", self.address, "--state", str(self.state), *self.args]

    def start(self, timeout: float = 30.0) -> "MilterProcess":
        require_pymilter()
        # pymilter takes ~5 s to exit after SIGTERM: never start a second one on the same socket.
        assert self.proc is None or self.proc.poll() is not None, "milter still running"
        if self.socket.exists():
            self.socket.unlink()
        env = {**os.environ, "EDRULES_DNS": "offline", **(self.env or {})}
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"), env=env)
        deadline = time.monotonic() + timeout
        import socket as _socket

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milter exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            if self.socket.exists():
                try:
                    with _socket.socket(_socket.AF_UNIX) as s:
                        s.connect(str(self.socket))
                    return self
                except OSError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"milter did not listen on {self.socket}: {self.log_text()[-2000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def events(self, kind: str | None = None) -> list[dict]:
        import json

        out = []
        for line in self.log_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and (kind is None or rec.get("event") == kind):
                out.append(rec)
        return out

    def wait_event(self, pred, timeout: float = 20.0) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events():
                if pred(e):
                    return e
            time.sleep(0.1)
        return None

    def cleanup(self) -> None:
        """Stop, then remove the socket directory (and the log in it)."""
        self.stop()
        if os.environ.get("EDRULES_KEEP_POSTFIX") is None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "MilterProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()
