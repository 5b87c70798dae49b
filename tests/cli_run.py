"""Running the real `edrules` command in a subprocess, and the check that an error is one located line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def edrules(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edrules.cli", *args], input=stdin,
                          capture_output=True, cwd=ROOT, timeout=120)


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2 with exactly one line on stderr, no traceback or 'internal error', naming `needles`."""
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "internal error" not in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err
