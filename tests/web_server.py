"""Real components for the web tests: `edrules serve` as a subprocess, an aiosmtpd sink, an OIDC provider.

Each is started on a free loopback port and stopped by PID (or its own stop call).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path

from components import free_port, stop_pid

ROOT = Path(__file__).resolve().parent.parent

# One account per role and tenant the authorisation test walks.
PASSWORD = "correct horse battery"
ACCOUNTS = [
    ("user@a.test", "user", ()),
    ("other@a.test", "user", ()),
    ("admin@a.test", "domain_admin", ("a.test",)),
    ("admin@b.test", "domain_admin", ("b.test",)),
    ("sp@provider.test", "provider", ("a.test",)),
    ("user@b.test", "user", ()),
]


@dataclass
class Sink:
    """An aiosmtpd SMTP server on loopback that keeps every message it receives."""

    port: int
    messages: list = field(default_factory=list)
    controller: object = None

    def last_to(self, rcpt: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for env_rcpts, msg in reversed(self.messages):
                if rcpt in env_rcpts:
                    return msg
            time.sleep(0.05)
        raise AssertionError(f"no mail to {rcpt} reached the sink")

    def count_to(self, rcpt: str) -> int:
        return sum(1 for r, _ in self.messages if rcpt in r)


def start_sink() -> Sink:
    from aiosmtpd.controller import Controller

    sink = Sink(free_port())

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            sink.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content, policy=policy.default)))
            return "250 OK"

    sink.controller = Controller(Handler(), hostname="127.0.0.1", port=sink.port)
    sink.controller.start()
    return sink


def code_and_link(msg) -> tuple[str, str]:
    body = msg.get_body(("plain",)).get_content()
    code = re.search(r"code on the sign-in page: (\d{4} \d{4})", body).group(1).replace(" ", "")
    link = re.search(r"(http://\S+/login/magic\?\S+)", body).group(1)
    return code, link


@dataclass
class Served:
    url: str
    state: Path
    proc: subprocess.Popen
    stdout_lines: list[str]


def start_serve(state: Path, *, smtp_port: int | None = None, oidc_file: Path | None = None, port: int = 0,
                db: Path | None = None, extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Served:
    cmd = [sys.executable, "-m", "edrules.cli", "serve", "--port", str(port), "--state", str(state)]
    if smtp_port:
        cmd += ["--smtp", f"127.0.0.1:{smtp_port}"]
    if oidc_file:
        cmd += ["--oidc", str(oidc_file)]
    if db:
        cmd += ["--db", str(db)]
    cmd += list(extra)
    log = open(state / "serve.log", "ab")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
                                 **(env or {})})
    lines: list[str] = []
    found: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            m = re.search(r"serving the dashboards on (http://\S+/)", line)
            if m:
                found.append(m.group(1))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 90
    while not found:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_pid(proc.pid)
            raise RuntimeError("edrules serve did not start: " + (state / "serve.log").read_text()[-3000:])
        time.sleep(0.05)
    url = found[0]
    # the URL is printed after the sockets are bound; wait until the app answers
    import httpx
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "login", timeout=2)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    return Served(url, state, proc, lines)


def add_accounts(state: Path, accounts=ACCOUNTS, password: str = PASSWORD):
    from edrules.server.accounts import Accounts

    store = Accounts(state)
    for address, role, domains in accounts:
        if store.get(address) is None:
            store.add(address, role, domains, password)
    return store


def write_oidc_settings(path: Path, issuer: str, name: str = "mockid", label: str = "MockID") -> Path:
    path.write_text(f"providers:\n  - name: {name}\n    label: {label}\n    issuer: {issuer}\n"
                    f"    client_id: edrules-test\n    client_secret: s3cret\n", encoding="utf-8")
    return path
