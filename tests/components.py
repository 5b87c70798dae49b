"""Real components the integration tests start: how to find them, and what happens when one is missing.

A test that needs a component (postfix, chromium, a JRE, ...) calls `missing(reason)` when it is
absent: on a developer's machine that skips with the reason; in CI (CI=true) it fails, so a
missing install step in .ci/run can never pass as green.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

CHROMIUM = Path("/usr/bin/chromium")
# The flags that keep Chromium off the (closed) network on these machines.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def missing(reason: str) -> None:
    """Skip on a developer's machine, fail in CI: a component the test needs is not there."""
    if IN_CI:
        pytest.fail(f"CI=true and a required component is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def require_executable(path: str | Path, install_hint: str) -> Path:
    """The executable at `path` (or on PATH), else missing(...)."""
    p = Path(path)
    found = p if p.is_absolute() and os.access(p, os.X_OK) else (
        Path(w) if (w := shutil.which(str(path))) else None)
    if found is None:
        missing(f"needs {path} ({install_hint})")
    return found


def require_chromium() -> Path:
    return require_executable(CHROMIUM, "apt-get install chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """Stop a process this test started, by PID: SIGTERM, then SIGKILL after `timeout`."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:  # not our child: poll for existence instead
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
