"""`edrules serve` and `edrules users` refuse bad input with one located line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def edrules(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edrules.cli", *args], cwd=ROOT, input=stdin, text=True,
                          capture_output=True, timeout=120)


def test_a_bad_smtp_relay_is_a_one_line_error(tmp_path):
    r = edrules("serve", "--state", str(tmp_path), "--smtp", "nohost")
    assert r.returncode == 2 and r.stderr.strip() == "error: --smtp must be HOST:PORT, got 'nohost'"


def test_an_oidc_settings_file_missing_the_issuer_names_file_and_field(tmp_path):
    f = tmp_path / "oidc.yaml"
    f.write_text("providers:\n  - name: corp\n    client_id: x\n")
    r = edrules("serve", "--state", str(tmp_path), "--oidc", str(f))
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: provider 1 needs 'issuer' in {f} (providers[0].issuer)"


def test_an_oidc_settings_file_that_is_not_yaml_names_the_line(tmp_path):
    f = tmp_path / "oidc.yaml"
    f.write_text("providers:\n  - name: [corp\n")
    r = edrules("serve", "--state", str(tmp_path), "--oidc", str(f))
    assert r.returncode == 2 and r.stderr.strip().startswith(f"error: not valid YAML in {f}:")
    assert "Traceback" not in r.stderr


def test_users_add_refuses_a_short_password_and_a_duplicate(tmp_path):
    r = edrules("users", "add", "u@a.test", "--password-stdin", "--state", str(tmp_path), stdin="short\n")
    assert r.returncode == 2 and r.stderr.strip() == "error: a password needs at least 10 characters"
    assert edrules("users", "add", "u@a.test", "--state", str(tmp_path)).returncode == 0
    r = edrules("users", "add", "U@A.test", "--state", str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip() == "error: account u@a.test already exists"


def test_users_disable_of_an_unknown_account_is_a_clear_error(tmp_path):
    r = edrules("users", "disable", "ghost@a.test", "--state", str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip() == "error: no account ghost@a.test"


def test_the_demo_logins_are_one_per_role_and_sign_in(tmp_path):
    from edrules.server.accounts import Accounts
    from edrules.server.demo import create_demo_logins

    logins = create_demo_logins(tmp_path)
    assert sorted(login.role for login in logins) == ["domain_admin", "provider", "user"]
    create_demo_logins(tmp_path)  # idempotent
    store = Accounts(tmp_path)
    for login in logins:
        assert store.check_password(login.address, login.password) is not None


def test_the_web_server_modules_import_no_pandas_or_duckdb():
    code = ("import sys, pkgutil, importlib, edrules.server as s\n"
            "for m in pkgutil.iter_modules(s.__path__): importlib.import_module('edrules.server.' + m.name)\n"
            "bad = sorted(n for n in ('pandas', 'duckdb', 'pyarrow') if n in sys.modules)\n"
            "print(','.join(bad))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""
