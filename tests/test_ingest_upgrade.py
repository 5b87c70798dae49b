"""Schema version 2: a version 1 dataset is refused with the remedy, and `edrules upgrade` makes
it read exactly like a fresh ingest of the same mail."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from cli_run import edrules, one_line_error
from edrules.errors import EdrulesError
from edrules.ingest import ingest_paths
from edrules.ingest.upgrade import upgrade_dataset
from edrules.schema import ALL_DDL, MESSAGES_DDL, PARQUET_TABLES, V2_COLUMNS, export_parquet_dataset, table_columns

MAIL = {
    "stayfriends.eml": b"From: Ihr Gewinner Team, jehd <service@stayfriends.de>\r\nTo: bob@example.org\r\n"
                       b"Subject: win\r\n\r\nx\r\n",
    "two-froms.eml": b"From: a@partner.example\r\nFrom: Boss <boss@stayfriends.de>\r\nTo: bob@example.org\r\n"
                     b"Subject: two\r\n\r\nx\r\n",
    "valid.eml": b"Return-Path: <bounce@news.example>\r\nFrom: News <news@news.example>\r\n"
                 b"To: alice@example.org\r\nSubject: hi\r\n\r\nx\r\n",
    "encoded.eml": b"From: <=?utf-8?q?ceo?=@stayfriends.de>\r\nTo: alice@example.org\r\n\r\nx\r\n",
    "no-from.eml": b"To: alice@example.org\r\nSubject: none\r\n\r\nx\r\n",
    "q.csv": b"received_at,recipient,envelope_from,client_ip,category,score,quarantine_state,header_from,subject\n"
             b"2026-01-05T10:00:00Z,carol@example.org,b@stayfriends.de,192.0.2.1,spam,6,quarantined,"
             b"service@stayfriends.de,s\n"
             b"2026-01-05T11:00:00Z,carol@example.org,<>,192.0.2.2,spam,6,quarantined,,s\n",
}
RULES = "name: p\nfrom_policy: strict\nblock:\n  - domain: stayfriends.de\n    id: sf\n"


def v1_ddl() -> str:
    """`messages` as edrules wrote it before schema version 2: today's DDL minus its columns."""
    lines = [line for line in MESSAGES_DDL.splitlines() if not (line.split() and line.split()[0] in V2_COLUMNS)]
    return re.sub(r",(\s*--[^\n]*)?\n\)$", r"\1\n)", "\n".join(lines))


def write_version_1(fresh: Path, old: Path) -> None:
    """A genuine version 1 file: the v1 tables (no edrules_meta), holding the rows of `fresh`."""
    with duckdb.connect(str(old)) as con:
        con.execute(v1_ddl())
        for ddl in ALL_DDL[1:]:
            con.execute(ddl)
        con.execute(f"ATTACH '{fresh}' AS f (READ_ONLY)")
        v1 = [c for c in table_columns("messages") if c not in V2_COLUMNS]
        con.execute(f"INSERT INTO messages SELECT {', '.join(v1)} FROM f.messages")
        for table in PARQUET_TABLES[1:]:
            con.execute(f"INSERT INTO {table} SELECT * FROM f.{table}")
        con.execute("DETACH f")


@pytest.fixture
def datasets(tmp_path, corpus):
    mail = tmp_path / "mail"
    mail.mkdir()
    for name, data in MAIL.items():
        (mail / name).write_bytes(data)
    fresh, old = tmp_path / "fresh.duckdb", tmp_path / "old.duckdb"
    ingest_paths(fresh, [mail, corpus / "authheaders_tests", corpus / "seed_example"], jobs=1)
    write_version_1(fresh, old)
    pack = tmp_path / "p.json"
    (tmp_path / "rules.yaml").write_text(RULES)
    assert edrules("pack", "compile", str(tmp_path / "rules.yaml"), "-o", str(pack)).returncode == 0
    return fresh, old, pack


def _rows(path: Path) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(f"SELECT {', '.join(table_columns('messages'))} FROM messages "
                           "ORDER BY dataset, msg_key").fetchall()


def test_the_v1_ddl_is_todays_minus_the_version_2_columns():
    con = duckdb.connect()
    con.execute(v1_ddl())
    got = [r[0] for r in con.execute("DESCRIBE messages").fetchall()]
    assert got == [c for c in table_columns("messages") if c not in V2_COLUMNS]
    assert "from_invalid" in got and "quarantine_state" in got


def test_a_version_1_dataset_is_refused_upgraded_in_place_and_then_evaluates_as_a_fresh_ingest(datasets):
    fresh, old, pack = datasets
    evaluate = ("evaluate", "--pack", str(pack), "--allow-unsigned")
    for args in (evaluate + ("--db", str(old)),
                 ("whatif", "--db", str(old), "--pack", str(pack), "--pack", str(pack)),
                 ("explain", "--db", str(old), "0" * 64)):
        one_line_error(edrules(*args), "dataset schema version 1 predates the derived facts",
                       f"upgrade it in place with `edrules upgrade {old}`", "from_mailboxes")
    with pytest.raises(EdrulesError, match="schema version 1"):
        ingest_paths(old, [fresh.parent / "mail" / "valid.eml"], jobs=1)

    result = edrules("upgrade", str(old))
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    n = len(_rows(fresh))
    assert re.fullmatch(rf"{re.escape(str(old))}: upgraded {n:,} messages to schema version 2 in [\d.]+ s "
                        r"\([\d,]+ msg/s\)\n", out), out

    # Row for row what a fresh ingest writes, the new columns included (in schema order).
    assert _rows(old) == _rows(fresh)
    for backend in ("sql", "runtime"):
        before = edrules(*evaluate, "--db", str(fresh), "--backend", backend)
        after = edrules(*evaluate, "--db", str(old), "--backend", backend)
        assert after.returncode == 0, after.stderr.decode()
        assert after.stdout == before.stdout
    with duckdb.connect(str(old), read_only=True) as con:
        assert con.execute("SELECT value FROM edrules_meta WHERE key = 'schema_version'").fetchall() == [("2",)]

    again = edrules("upgrade", str(old))
    assert (again.returncode, again.stdout.decode()) == (0, f"{old}: already at schema version 2\n")


def test_from_mailboxes_come_back_from_the_stored_from_fields(datasets):
    fresh, old, _ = datasets
    upgrade_dataset(old)
    with duckdb.connect(str(old), read_only=True) as con:
        got = dict(con.execute("SELECT regexp_extract(source, '[^/]*$'), from_mailboxes FROM messages "
                               "WHERE source LIKE '%mail/%'").fetchall())
    assert got == {"stayfriends.eml": ["service@stayfriends.de"],
                   "two-froms.eml": ["a@partner.example", "boss@stayfriends.de"],
                   "valid.eml": ["news@news.example"], "encoded.eml": [], "no-from.eml": [],
                   "q.csv:2": ["service@stayfriends.de"], "q.csv:3": []}


def test_a_fresh_dataset_carries_its_schema_version_and_upgrade_leaves_it_alone(tmp_path):
    db = tmp_path / "new.duckdb"
    ingest_paths(db, [_write(tmp_path / "a.eml", MAIL["valid.eml"])], jobs=1)
    before = _rows(db)
    assert str(upgrade_dataset(db)) == f"{db}: already at schema version 2"
    assert _rows(db) == before
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT * FROM edrules_meta").fetchall() == [("schema_version", "2")]


def test_upgrade_refuses_what_is_no_dataset_with_one_located_line(tmp_path):
    one_line_error(edrules("upgrade", str(tmp_path / "missing.duckdb")), "no such dataset file", "missing.duckdb")
    other = tmp_path / "other.duckdb"
    with duckdb.connect(str(other)) as con:
        con.execute("CREATE TABLE unrelated (x INTEGER)")
    one_line_error(edrules("upgrade", str(other)), "not an edrules dataset", str(other))


def test_a_version_1_parquet_folder_is_refused_naming_the_remedy_and_exports_carry_the_new_columns(
        datasets, tmp_path):
    fresh, old, pack = datasets
    folder = tmp_path / "v1-parquet"
    folder.mkdir()
    with duckdb.connect(str(old), read_only=True) as con:
        for table in PARQUET_TABLES[:2]:
            con.execute(f"COPY (SELECT * FROM {table}) TO '{folder / table}' (FORMAT parquet, PARTITION_BY (dataset))")
    one_line_error(edrules("evaluate", "--db", str(folder), "--pack", str(pack), "--allow-unsigned"),
                   "Parquet dataset schema version 1", "edrules upgrade FILE", "export it again", str(folder))
    pytest.importorskip("pyspark")
    from edrules.spark.ingest import ingest_spark

    with pytest.raises(EdrulesError, match="Parquet dataset schema version 1"):
        # refused before Spark is asked for anything: v2 rows appended to v1 files mix schemas
        ingest_spark(None, [fresh.parent / "mail"], folder)

    upgrade_dataset(old)
    with duckdb.connect(str(old), read_only=True) as con:
        export_parquet_dataset(con, tmp_path / "v2-parquet")
    with duckdb.connect() as con:
        got = [r[0] for r in con.execute(
            f"DESCRIBE SELECT * FROM read_parquet('{tmp_path / 'v2-parquet' / 'messages'}/**/*.parquet', "
            "hive_partitioning = true)").fetchall()]
    assert [c for c in got if c != "dataset"] == [c for c in table_columns("messages") if c != "dataset"]
    before = edrules("evaluate", "--db", str(fresh), "--pack", str(pack), "--allow-unsigned")
    after = edrules("evaluate", "--db", str(tmp_path / "v2-parquet"), "--pack", str(pack), "--allow-unsigned")
    assert after.returncode == 0, after.stderr.decode()
    assert after.stdout == before.stdout


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
