"""Corpus-wide acceptance: every message folder ingests; messages + errors = input messages."""

from __future__ import annotations

import re

import duckdb
import pytest

from edrules.ingest import ingest_paths
from edrules.ingest.readers import is_skipped_name

MBOX_SEP = re.compile(rb"(?:^|\n\n|\r\n\r\n)From \S+[ \t]+[A-Z][a-z]{2}[ \t]")
SMTP_DATA = re.compile(rb"(?im)^DATA\r?$")


def count_input_messages(corpus) -> int:
    """Counted independently of the readers: one per mail file, or per From_ separator /
    SMTP DATA command in files holding several."""
    total = 0
    for path in corpus.rglob("*"):
        if not path.is_file() or any(is_skipped_name(p) for p in path.relative_to(corpus).parts):
            continue
        data = path.read_bytes()
        if re.match(rb"\s*(?:HELO|EHLO|LHLO) ", data, re.I):
            total += max(1, len(SMTP_DATA.findall(data)))
        elif data.lstrip().startswith(b"From ") and not re.match(rb"From\s*:", data.lstrip()):
            total += max(1, len(MBOX_SEP.findall(data.lstrip())))
        else:
            total += 1
    return total


@pytest.mark.slow
def test_every_message_folder_of_the_corpus_ingests_without_losing_a_message(corpus, tmp_path):
    folders = sorted(p for p in corpus.iterdir() if p.is_dir())
    con = duckdb.connect(str(tmp_path / "corpus.duckdb"))
    s = ingest_paths(con, folders, dataset="corpus", jobs=2)
    expected = count_input_messages(corpus)
    assert s.messages + s.errors == expected
    # MANIFEST.md counts 5,768 RFC 5322 messages; a few hundred extra inputs are key files and
    # test-suite data, which become error rows with a reason.
    assert s.messages >= 5700
    rows = con.execute("SELECT count(*) FROM messages").fetchone()[0]
    assert rows == s.messages - s.duplicates
    assert con.execute("SELECT count(DISTINCT msg_key) FROM recipients").fetchone()[0] == rows
    reasons = {r[0] for r in con.execute("SELECT DISTINCT error FROM ingest_errors").fetchall()}
    assert reasons <= {"not-a-message", "csv-missing-column", "smtp-no-data"}
