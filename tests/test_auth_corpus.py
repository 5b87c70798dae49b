"""Robustness on real mail: every corpus message authenticates to result words, never an exception."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edrules.auth import authenticate
from edrules.auth.headers import format_authentication_results
from edrules.auth.resolver import ZoneResolver
from edrules.facts import AuthResult

# Permissively licensed folders with DKIM, ARC, odd and malformed headers (MANIFEST.md).
FOLDERS = ("rspamd_test_messages", "spamassassin_t_data", "mailauth_fixtures", "stalwart_mail-auth_resources",
           "authheaders_tests", "dkimpy_testdata", "ruby-mail_fixtures", "mail-parser_tests")


@pytest.fixture(autouse=True)
def _no_live_dns(monkeypatch):
    monkeypatch.setenv("EDRULES_DNS", "offline")


def _messages(corpus: Path) -> list[Path]:
    out = []
    for folder in FOLDERS:
        for p in sorted((corpus / folder).rglob("*")):
            if p.is_file() and p.suffix.lower() not in (".yml", ".yaml", ".json", ".pem", ".key", ".xml", ".md",
                                                         ".dns", ".gz", ".zip", ".private") \
                    and "LICENSE" not in p.name and p.stat().st_size < 2_000_000:
                out.append(p)
    return out


@pytest.mark.corpus
def test_every_corpus_message_gets_result_words_and_a_header_without_raising(corpus, capsys):
    # Keys and SPF records of real senders are long gone: an empty zone answers NXDOMAIN to
    # everything, which exercises every error path of the parsers on real, messy mail.
    zone = ZoneResolver.from_text("")
    messages = _messages(corpus)
    assert len(messages) > 400
    counts: dict[str, int] = {}
    start = time.perf_counter()
    for path in messages:
        r = authenticate(path.read_bytes(), "192.0.2.1", "client.example", "sender@example.org", zone)
        assert r.spf.result is AuthResult.NONE
        for o in r.dkim:
            assert o.result in (AuthResult.PERMERROR, AuthResult.FAIL), (path, o)
            counts[str(o.result)] = counts.get(str(o.result), 0) + 1
        assert r.dmarc.result in (AuthResult.NONE, AuthResult.FAIL), path
        assert format_authentication_results("mx.gateway.example", r)
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n{len(messages)} corpus messages authenticated in {elapsed:.1f} s; DKIM outcomes {counts}")
    assert counts.get("permerror", 0) > 50  # signatures were found and each lacked its key
