"""The CLI shell: every documented command is present, errors print without tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edrules.cli import COMMANDS, LazyGroup

ROOT = Path(__file__).resolve().parent.parent


def _edrules(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edrules.cli", *args], input=stdin,
                          capture_output=True, cwd=ROOT, timeout=120)


def test_every_registered_command_loads_and_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in COMMANDS:
        assert LazyGroup._load(name) is not None, name
        assert f"edrules {name}" in readme, f"`edrules {name}` is not documented in README.md"


def test_a_broken_rules_file_gives_located_errors_and_exit_2_without_a_traceback(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("name: x\nfrom_policy: strictt\nallow:\n  - sender: foo@\n")
    result = _edrules("pack", "compile", str(rules), "-o", str(tmp_path / "p.json"))
    assert result.returncode == 2
    err = result.stderr.decode()
    assert f"{rules}:2 (from_policy)" in err and f"{rules}:4 (allow[0].sender)" in err
    assert "Traceback" not in err
    assert not (tmp_path / "p.json").exists()


def test_an_explicit_nonzero_exit_code_of_a_command_reaches_the_shell(tmp_path):
    zone = tmp_path / "zone.txt"
    zone.write_text("$ORIGIN broken.example.\n@ IN TXT \"v=spf1 +all\"\n")
    result = _edrules("dns-check", "broken.example", "--zone", str(zone))
    assert result.returncode == 1, result.stdout.decode() + result.stderr.decode()


def test_evaluate_and_whatif_refuse_a_duckdb_file_that_is_not_a_dataset(tmp_path):
    import duckdb

    from edrules.pack import build_pack, write_pack
    from edrules.rules.parse import parse_rules

    db = tmp_path / "other.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE unrelated (x INTEGER)")
    pack = tmp_path / "p.json"
    write_pack(build_pack(parse_rules("name: p\n"), source_bytes=b"name: p\n"), pack)
    for args in (["evaluate", "--db", str(db), "--pack", str(pack), "--allow-unsigned"],
                 ["whatif", "--db", str(db), "--pack", str(pack), "--pack", str(pack)]):
        result = _edrules(*args)
        err = result.stderr.decode()
        assert result.returncode == 2, err
        assert "not an edrules dataset" in err and str(db) in err
        assert "Traceback" not in err
