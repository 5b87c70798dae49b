"""`edrules serve` request costs against a bare argon2 verify measured in the same run.

Run: .venv/bin/python -m benchmarks.web [--n 200]
A password sign-in is one argon2id verify plus a few SQLite writes, so its baseline is the
verify alone; a signed-in page and a refused Jupyter API call show what the session lookup and
the Authorizer cost per request.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from argon2 import PasswordHasher

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from components import stop_pid  # noqa: E402
from web_client import Browserish  # noqa: E402
from web_server import PASSWORD, add_accounts, start_serve  # noqa: E402


def ms(values: list[float], q: float = 0.5) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    n = ap.parse_args().n
    hasher = PasswordHasher()
    stored = hasher.hash(PASSWORD)
    verify = []
    for _ in range(10):
        t = time.perf_counter()
        hasher.verify(stored, PASSWORD)
        verify.append(time.perf_counter() - t)
    state = Path(tempfile.mkdtemp())
    add_accounts(state, [("u@a.test", "user", ())])
    served = start_serve(state)
    try:
        logins = []
        for _ in range(10):
            b = Browserish(served.url)
            page = b.get("/login")
            t = time.perf_counter()
            assert b.post("/login", {"address": "u@a.test", "password": PASSWORD}, page=page.text,
                          follow=False).status_code == 302
            logins.append(time.perf_counter() - t)
        pages, refused = [], []
        for _ in range(n):
            t = time.perf_counter()
            assert b.get("/home").status_code == 200
            pages.append(time.perf_counter() - t)
            t = time.perf_counter()
            assert b.get("/api/contents", follow=False).status_code == 403
            refused.append(time.perf_counter() - t)
    finally:
        stop_pid(served.proc.pid)
    print("| what | median | p95 | n |\n| --- | --- | --- | --- |")
    print(f"| baseline: argon2id verify alone | {ms(verify):.0f} ms | {ms(verify, .95):.0f} ms | 10 |")
    print(f"| password sign-in POST | {ms(logins):.0f} ms | {ms(logins, .95):.0f} ms | 10 |")
    print(f"| signed-in GET /home | {ms(pages):.1f} ms | {ms(pages, .95):.1f} ms | {n} |")
    print(f"| refused GET /api/contents | {ms(refused):.1f} ms | {ms(refused, .95):.1f} ms | {n} |")
    print(f"\nsign-in / bare verify: {statistics.median(logins) / statistics.median(verify):.2f}x")


if __name__ == "__main__":
    main()
