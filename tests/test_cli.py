"""The CLI shell: every documented command is present, errors print without tracebacks."""

from __future__ import annotations

from pathlib import Path

from cli_run import edrules as _edrules, one_line_error as _one_line_error
from edrules.cli import COMMANDS, LazyGroup

ROOT = Path(__file__).resolve().parent.parent


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


# -- located one-line errors (exit 2) instead of internal errors --------------------------


def _unsigned_pack(tmp_path: Path) -> Path:
    from edrules.pack import build_pack, write_pack
    from edrules.rules.parse import parse_rules

    pack = tmp_path / "p.json"
    write_pack(build_pack(parse_rules("name: p\n"), source_bytes=b"name: p\n"), pack)
    return pack


def _db_commands(db: Path, pack: Path) -> list[list[str]]:
    return [["evaluate", "--db", str(db), "--pack", str(pack), "--allow-unsigned"],
            ["evaluate", "--db", str(db), "--pack", str(pack), "--allow-unsigned", "--backend", "runtime"],
            ["whatif", "--db", str(db), "--pack", str(pack), "--pack", str(pack)]]


def test_evaluate_and_whatif_on_a_file_that_is_not_duckdb_or_is_empty_give_a_located_error(tmp_path):
    pack = _unsigned_pack(tmp_path)
    for name, content in (("text.duckdb", b"hello, not a database\n"), ("empty.duckdb", b"")):
        db = tmp_path / name
        db.write_bytes(content)
        for args in _db_commands(db, pack):
            _one_line_error(_edrules(*args), "cannot open database", "not a DuckDB database file", str(db))


def test_evaluate_and_whatif_refuse_a_messages_table_that_lacks_columns(tmp_path):
    import duckdb

    db = tmp_path / "partial.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute("CREATE TABLE messages (msg_key VARCHAR, dataset VARCHAR, category VARCHAR)")
        con.execute("CREATE TABLE recipients (dataset VARCHAR, msg_key VARCHAR, recipient VARCHAR, "
                    "recipient_domain VARCHAR, recipient_source VARCHAR)")
        con.execute("INSERT INTO messages VALUES ('k', 'd', 'spam')")
        con.execute("INSERT INTO recipients VALUES ('d', 'k', 'a@example.org', 'example.org', 'envelope')")
    for args in _db_commands(db, _unsigned_pack(tmp_path)):
        _one_line_error(_edrules(*args), "table messages lacks column(s) source", str(db))


def test_ingest_refuses_a_foreign_duckdb_file_without_adding_tables_to_it(tmp_path):
    import duckdb

    mail = tmp_path / "m.eml"
    mail.write_bytes(b"From: a@example.com\nTo: b@example.org\nSubject: x\n\nhi\n")
    foreign = tmp_path / "foreign.duckdb"
    with duckdb.connect(str(foreign)) as con:
        con.execute("CREATE TABLE invoices (id INTEGER)")
    partial = tmp_path / "partial.duckdb"
    with duckdb.connect(str(partial)) as con:
        con.execute("CREATE TABLE messages (msg_key VARCHAR, dataset VARCHAR)")
    for db, needle in ((foreign, "holds other tables: invoices"), (partial, "holds other tables: messages")):
        before = duckdb.connect(str(db), read_only=True).execute("SHOW TABLES").fetchall()
        _one_line_error(_edrules("ingest", "--db", str(db), str(mail)), needle, str(db))
        with duckdb.connect(str(db), read_only=True) as con:
            assert con.execute("SHOW TABLES").fetchall() == before
    old = tmp_path / "old.duckdb"  # messages and recipients, but an older set of columns
    with duckdb.connect(str(old)) as con:
        con.execute("CREATE TABLE messages (msg_key VARCHAR, dataset VARCHAR)")
        con.execute("CREATE TABLE recipients (dataset VARCHAR, msg_key VARCHAR, recipient VARCHAR)")
    _one_line_error(_edrules("ingest", "--db", str(old), str(mail)), "lacks column(s)")
    with duckdb.connect(str(old), read_only=True) as con:
        assert len(con.execute("SHOW TABLES").fetchall()) == 2
    text = tmp_path / "text.duckdb"
    text.write_bytes(b"not a database")
    _one_line_error(_edrules("ingest", "--db", str(text), str(mail)), "not a DuckDB database file")
    assert text.read_bytes() == b"not a database"
    fresh = tmp_path / "fresh.duckdb"
    for _ in range(2):  # a new file, then our own dataset again
        assert _edrules("ingest", "--db", str(fresh), str(mail)).returncode == 0


def test_an_unquoted_impossible_date_in_a_rules_file_is_a_located_one_line_error(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("name: x\nallow:\n  - sender: a@example.com\n    expires: 2026-13-01\n")
    _one_line_error(_edrules("pack", "compile", str(rules), "-o", str(tmp_path / "p.json")),
                    f"{rules}:4 (allow[0].expires)", "2026-13-01")
    assert not (tmp_path / "p.json").exists()


def test_explain_refuses_a_client_ip_that_is_not_an_ip_address(tmp_path):
    mail = tmp_path / "m.eml"
    mail.write_bytes(b"From: a@example.com\nTo: b@example.org\nSubject: x\n\nhi\n")
    for bad in ("not-an-ip", "2001:db8::5%eth0", "999.1.1.1"):
        _one_line_error(_edrules("explain", str(mail), "--client-ip", bad), "--client-ip is not an IP address", bad)
    ok = _edrules("explain", str(mail), "--client-ip", "2001:DB8::5")
    assert ok.returncode == 0 and "2001:db8::5" in ok.stdout.decode()


# Corpus messages whose explain report has long lines: the seed's sentence, hint and not-applied
# line, and SES / bulk envelope senders of 85+ characters that cannot be split.
EXPLAIN_WIDE = ("phishing_pot/sample-1.eml", "phishing_pot/sample-1015.eml", "phishing_pot/sample-2203.eml",
                "phishing_pot/sample-2368.eml", "rspamd_test_messages/arcbad.eml",
                "spamassassin_publiccorpus/hard_ham/00003.268fd170a3fc73bee2739d8204856a53")


def test_every_line_of_an_explain_report_fits_100_columns_and_wrapping_loses_no_word(corpus, tmp_path):
    from edrules.backends.explain import explain_message

    rules = tmp_path / "seed.yaml"  # an allow entry strict ignores: the report has a hint and a not-applied line
    rules.write_text("allow:\n  - sender: DoNotReply@someotpsite.cz\n")
    runs = [(corpus / "seed_example" / "otp-headers-pasted.txt", ["--trusted-authserv", "inbound10.exchangedefender.com"])]
    runs += [(corpus / name, []) for name in EXPLAIN_WIDE]
    for path, extra in runs:
        r = _edrules("explain", "--pack", str(rules), *extra, str(path))
        assert r.returncode == 0, r.stderr
        out = r.stdout.decode()
        assert [line for line in out.splitlines() if len(line) > 100] == [], path
        whole = explain_message(path.read_bytes(), source=str(path), pack_path=rules,
                                trusted_authserv_ids=extra[1:]).to_text()
        assert any(len(line) > 100 for line in whole.splitlines()), f"{path} has no long line to wrap"
        assert out.split() == whole.split(), path  # the same words in the same order
