"""Ingest: facts from real corpus messages, envelope/recipient precedence, readers, loading."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from edrules.errors import EdrulesError
from edrules.facts import DkimSignatureResult
from edrules.ingest import TrustConfig, facts_from_bytes, ingest_paths, read_facts
from edrules.workbench.cli_ingest import ingest as ingest_command
from edrules.ingest.readers import read_unit_bytes, units_of_file

MS_TRUST = TrustConfig(authserv_ids=frozenset({"(none)", "protection.outlook.com"}))
GOOGLE_TRUST = TrustConfig(authserv_ids=frozenset({"mx.google.com"}))


def facts_of(path: Path, trust: TrustConfig | None = None):
    (unit,) = list(units_of_file(path))
    return facts_from_bytes(read_unit_bytes(unit), source=str(path), trust=trust, mbox_from=unit.mbox_from)


def test_seed_example_ingests_with_the_facts_of_its_readme(corpus, tmp_path):
    con = duckdb.connect(str(tmp_path / "seed.duckdb"))
    summary = ingest_paths(con, [corpus / "seed_example"], dataset="seed", jobs=1)
    assert (summary.messages, summary.errors) == (1, 0)
    (f,) = read_facts(con, "seed")
    assert f.header_from == "donotreply@someotpsite.cz"
    assert f.envelope_from == "010001890676a389-ee862f60-d7ea-4ba1-a113-f16935e2afeb-000000@amazonses.com"
    assert f.envelope_from_domain == "amazonses.com"
    assert f.client_ip == "54.240.77.69"
    assert f.helo == "a77-69.smtp-out.amazonses.com"
    assert f.spf == "pass"
    assert [(d.d, d.result) for d in f.dkim] == [("someotpsite.cz", "pass"), ("amazonses.com", "pass")]
    assert (f.dmarc, f.dmarc_policy) == ("pass", "quarantine")
    assert f.authserv_id == "inbound10.exchangedefender.com"
    assert f.bulk_provider == "amazonses"
    assert f.recipients == ("demo@exchangedefenderdemo.com",)
    assert f.subject == "ConnectWise Manage Security Code"
    assert f.from_invalid is False


# Expected values read off the raw headers of each file by hand.
REAL_SAMPLES = [
    (
        "phishing_pot/sample-4184.eml", MS_TRUST,
        dict(header_from="support@scrol.io", from_display="Scroll Team",
             envelope_from="bounces+9407390-5eb2-phishing@pot=hotmail.com@sendgrid.net",
             client_ip="149.72.167.253", helo="wrqvxtfd.outbound-mail.sendgrid.net", spf="pass",
             spf_domain="sendgrid.net", dmarc="none", authserv_id="(none)", bulk_provider="sendgrid",
             recipients=("phishing@pot",)),
        [("sendgrid.net", "pass")],
    ),
    (
        "phishing_pot/sample-1210.eml", GOOGLE_TRUST,
        dict(header_from="razroy6969@gmail.com",
             envelope_from="bounces+16198611-6986-phishing=gmail.com@send.ksdn.klaviyomail.com",
             client_ip="167.89.127.255", helo="o1352.shared.klaviyomail.com", spf="pass", dmarc="fail",
             dmarc_policy="none", authserv_id="mx.google.com", bulk_provider="klaviyo",
             recipients=("phishing@pot",)),
        [("ksdn.klaviyomail.com", "pass"), ("sendgrid.info", "pass")],
    ),
    (
        "spamassassin_publiccorpus/easy_ham/00001.7c53336b37003a9286aba55d2945844c", None,
        dict(header_from="kre@munnari.oz.au", from_display="Robert Elz",
             envelope_from="exmh-workers-admin@spamassassin.taint.org", client_ip="66.187.233.211",
             helo="listman.spamassassin.taint.org", spf=None, dmarc=None, bulk_provider=None,
             recipients=("zzzz@localhost.netnoteinc.com",),
             received_at=dt.datetime(2002, 8, 22, 11, 36, 16)),
        [],
    ),
    (
        "mailauth_fixtures/message3.eml", GOOGLE_TRUST,
        dict(header_from="m@ttias.be", from_display="Mattias Geniar",
             envelope_from="bounce+474217.804f2-andris.reinman=gmail.com@cronweekly.ma.ttias.be",
             client_ip="161.38.206.141", helo="m206-141.mailgun.net", spf="pass", dmarc=None,
             bulk_provider="mailgun", recipients=("andris.reinman@gmail.com",)),
        [("cronweekly.ma.ttias.be", "pass"), ("eu.mailgun.org", "pass")],
    ),
    (
        "mail-parser_tests/mail_test_13", None,
        dict(header_from="info@continuityinsights.com", from_display="Continuity Insights",
             envelope_from="bounce-mc.us14_65794145.395229-dpinnix=coastbankcalifornia.com@mail90.suw15.mcsv.net",
             bulk_provider="mailchimp", recipients=("dpinnix@coastbankcalifornia.com",)),
        [],
    ),
    (
        "rspamd_test_messages/from/from_comment.eml", None,
        dict(header_from="user@example.org", from_display="Comment text", from_invalid=False,
             envelope_from=None, recipients=("",)),
        [],
    ),
    (
        "spamassassin_t_data/spam/fromnamespoof/spoof1", None,
        dict(header_from="test1@gmail.com", from_display="test@example.com", envelope_from="test1@gmail.com",
             recipients=("test@example.com",)),
        [],
    ),
    (
        "ruby-mail_fixtures/plain_emails/raw_email_multiple_from.eml", None,
        dict(header_from=None, from_invalid=True, envelope_from="www-data@mangaverde.net",
             recipients=("tim@powerupdev.com",)),
        [],
    ),
]


@pytest.mark.parametrize("rel, trust, expected, dkim", REAL_SAMPLES, ids=[r[0] for r in REAL_SAMPLES])
def test_real_messages_yield_the_facts_read_off_their_headers(corpus, rel, trust, expected, dkim):
    path = corpus / rel
    if not path.exists():
        pytest.skip(f"{rel} not in this corpus snapshot")
    f = facts_of(path, trust).facts
    for name, value in expected.items():
        assert getattr(f, name) == value, name
    assert [(d.d, d.result) for d in f.dkim] == dkim


def test_every_dkim_entry_carries_the_org_domain_of_its_signing_domain(corpus):
    f = facts_of(corpus / "phishing_pot/sample-1210.eml", GOOGLE_TRUST).facts
    assert f.dkim[0] == DkimSignatureResult("ksdn.klaviyomail.com", "m1", "pass", "klaviyomail.com")


MINIMAL = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


def test_explicit_envelope_values_win_over_headers():
    raw = (b"Return-Path: <bounce@list.example>\r\nDelivered-To: d@example.org\r\n"
           b"Received: from evil (evil [192.0.2.9]) by mx.example.org; Thu, 1 Jan 2026 00:00:00 +0000\r\n" + MINIMAL)
    m = facts_from_bytes(raw, envelope_from="Real@Sender.Example.", recipients=["X@Example.org", "x@example.org"],
                         client_ip="::ffff:198.51.100.7", helo="Mail.Sender.Example")
    f = m.facts
    assert (f.envelope_from, f.envelope_from_domain, f.envelope_from_org) == (
        "real@sender.example", "sender.example", "sender.example")
    assert f.recipients == ("x@example.org",)
    assert [r.source for r in m.recipient_rows] == ["envelope"]
    assert (f.client_ip, f.helo, f.helo_org) == ("198.51.100.7", "mail.sender.example", "sender.example")


def test_null_sender_is_empty_string_and_unknown_sender_is_none():
    assert facts_from_bytes(b"Return-Path: <>\r\n" + MINIMAL).facts.envelope_from == ""
    assert facts_from_bytes(MINIMAL).facts.envelope_from is None
    assert facts_from_bytes(b"From MAILER-DAEMON Thu Jan  1 00:00:00 2026\n" + MINIMAL).facts.envelope_from == ""


def test_return_path_comes_before_the_mbox_from_line():
    raw = b"From list-owner@a.example Thu Jan  1 00:00:00 2026\nReturn-Path: <rp@b.example>\n" + MINIMAL
    assert facts_from_bytes(raw).facts.envelope_from == "rp@b.example"
    raw = b"From list-owner@a.example Thu Jan  1 00:00:00 2026\n" + MINIMAL
    assert facts_from_bytes(raw).facts.envelope_from == "list-owner@a.example"


def test_recipients_prefer_x_original_to_then_delivered_to_then_to_and_cc():
    both = b"Delivered-To: final@example.org\r\nX-Original-To: Alias@Example.org\r\nCc: c@example.net\r\n" + MINIMAL
    m = facts_from_bytes(both)
    assert [(r.address, r.source) for r in m.recipient_rows] == [("alias@example.org", "x-original-to")]
    m = facts_from_bytes(b"Delivered-To: final@example.org\r\n" + MINIMAL)
    assert [(r.address, r.source) for r in m.recipient_rows] == [("final@example.org", "delivered-to")]
    m = facts_from_bytes(b"Cc: C <c@example.net>, b@example.org\r\n" + MINIMAL)
    assert [(r.address, r.source) for r in m.recipient_rows] == [
        ("b@example.org", "to-cc"), ("c@example.net", "to-cc")]


def test_a_message_without_any_recipient_gets_one_empty_recipient_row():
    m = facts_from_bytes(b"From: a@example.com\r\nSubject: x\r\n\r\n")
    assert [(r.address, r.domain, r.source) for r in m.recipient_rows] == [("", None, "none")]
    assert m.facts.recipients == ("",)


@pytest.mark.parametrize(
    "headers, valid, header_from",
    [
        (b"From: \"Doe, Jane\" <Jane.Doe@EXAMPLE.com.>\r\n", True, "jane.doe@example.com"),
        (b"", False, None),
        (b"From: a@example.com\r\nFrom: b@example.com\r\nFrom: c@example.com\r\n", False, None),
        (b"From: a@example.com, b@example.com\r\n", False, None),
        (b"From: undisclosed\r\n", False, None),
        (b"From: a@example.com b@example.com\r\n", False, None),
        (b"From: <@example.com>\r\n", False, None),
        (b"From: =?utf-8?q?J=C3=B6rg?= <j@b\xc3\xbccher.example>\r\n", True, "j@xn--bcher-kva.example"),
    ],
)
def test_header_from_is_valid_only_for_exactly_one_mailbox_with_a_domain(headers, valid, header_from):
    f = facts_from_bytes(headers + b"To: x@example.org\r\nSubject: s\r\n\r\n").facts
    assert (not f.from_invalid, f.header_from) == (valid, header_from)


@pytest.mark.parametrize(
    "headers, mailboxes",
    [
        # an unquoted comma in the display name: two mailboxes, one of them an address
        (b"From: Ihr Gewinner Team, jehd <service@stayfriends.de>\r\n", ("service@stayfriends.de",)),
        (b"From: A <a@Example.com>\r\nFrom: b@example.net\r\nFrom: a@example.com\r\n",
         ("a@example.com", "b@example.net")),
        (b"From: \"Doe, Jane\" <Jane.Doe@EXAMPLE.com.>\r\n", ("jane.doe@example.com",)),
        (b"From: <=?utf-8?q?ceo?=@bank.example>, x@evil.example\r\n", ("x@evil.example",)),
        (b"From: =?utf-8?b?Y2VvQGJhbmsuZXhhbXBsZQ==?=\r\n", ()),
        (b"From: a@[192.0.2.1], b@a..example, <@example.com>, c@-x.example\r\n", ()),
        (b"", ()),
    ],
)
def test_from_mailboxes_are_every_address_a_lenient_reading_of_every_from_field_finds(headers, mailboxes):
    f = facts_from_bytes(headers + b"To: x@example.org\r\nSubject: s\r\n\r\n").facts
    assert f.from_mailboxes == mailboxes
    # header_from and from_invalid are as strict as ever
    assert f.from_invalid is (f.header_from is None)


def test_a_malformed_from_keeps_its_mailboxes_in_the_dataset_and_the_quarantine_csv(tmp_path):
    write(tmp_path / "m.eml", b"From: Ihr Gewinner Team, jehd <service@stayfriends.de>\r\nTo: x@example.org\r\n\r\nx")
    (tmp_path / "q.csv").write_text(
        CSV_HEADER + "2026-01-05T10:00:00Z,a@example.org,b@example.com,192.0.2.1,spam,1,quarantined,"
        "DoNotReply@SomeOtpSite.cz,s\n"
        "2026-01-05T10:00:00Z,a@example.org,b@example.com,192.0.2.1,spam,1,quarantined,,s\n")
    con = duckdb.connect()
    ingest_paths(con, [tmp_path], jobs=1)
    rows = con.execute("SELECT header_from, from_invalid, from_mailboxes, from_domains FROM messages "
                       "ORDER BY source").fetchall()
    assert rows == [(None, True, ["service@stayfriends.de"], ["stayfriends.de"]),
                    ("donotreply@someotpsite.cz", False, ["donotreply@someotpsite.cz"], ["someotpsite.cz"]),
                    (None, True, [], [])]


def test_a_quarantine_csv_from_cell_is_read_as_a_from_field_not_as_one_address(tmp_path):
    # The cell used to be normalised as one address: `ihr gewinner team, jehd <service@...` with
    # the domain stayfriends.de and from_invalid false, a valid header From no MTA ever saw.
    (tmp_path / "q.csv").write_text(
        CSV_HEADER + '2026-01-05T10:00:00Z,a@example.org,b@example.com,192.0.2.1,spam,1,quarantined,'
        '"Ihr Gewinner Team, jehd <service@stayfriends.de>",s\n'
        '2026-01-05T10:00:01Z,a@example.org,b@example.com,192.0.2.1,spam,1,quarantined,Jane <J@Example.com>,s\n')
    con = duckdb.connect()
    ingest_paths(con, [tmp_path], jobs=1)
    assert con.execute("SELECT header_from, header_from_domain, from_invalid, from_mailboxes FROM messages "
                       "ORDER BY received_at").fetchall() == [
        (None, None, True, ["service@stayfriends.de"]),
        ("j@example.com", "example.com", False, ["j@example.com"])]


def test_an_address_hidden_in_an_encoded_word_is_a_malformed_from_not_that_address():
    # RFC 2047 forbids encoded-words in an addr-spec; the gateway's DMARC finds no From domain
    # there (so no p=reject fail), while a decoding MUA shows ceo@bank.example. Reading it as
    # that address let a relaxed allow entry deliver a spoof of a p=reject domain.
    from edrules.backends.runtime import RuntimeEvaluator
    from edrules.rules.parse import parse_rules

    raw = (b"From: =?utf-8?b?Y2VvQGJhbmsuZXhhbXBsZQ==?=\r\nTo: u@example.org\r\nSubject: s\r\n\r\nx\r\n")
    f = facts_from_bytes(raw, envelope_from="x@evil.example").facts
    assert (f.header_from, f.from_invalid) == (None, True)
    policy = parse_rules("from_policy: relaxed\nallow:\n  - sender: ceo@bank.example\n    id: ceo\n")
    assert RuntimeEvaluator(policy).evaluate(f)[0].category == "forgery"
    inside = raw.replace(b"=?utf-8?b?Y2VvQGJhbmsuZXhhbXBsZQ==?=", b"<=?utf-8?q?ceo?=@bank.example>")
    assert facts_from_bytes(inside).facts.from_invalid


def test_a_from_domain_that_becomes_another_name_only_through_idna_mapping_is_malformed():
    # IDNA 2003 maps a zero-width space to nothing and fullwidth/ideographic forms to ASCII, so
    # 'ex<ZWSP>ample.com' would read as example.com, which the gateway's DMARC never checked.
    from edrules.backends.runtime import RuntimeEvaluator
    from edrules.rules.parse import parse_rules

    policy = parse_rules("from_policy: relaxed\nallow:\n  - domain: example.com\n    id: ex\n")
    for disguised in ("ceo@ex\u200bample.com", "ceo@example\u3002com", "ceo@\uff45xample.com"):
        raw = ("From: " + disguised + "\r\nTo: u@example.org\r\nSubject: s\r\n\r\nx\r\n").encode()
        f = facts_from_bytes(raw, envelope_from="x@evil.example").facts
        assert (f.header_from, f.from_invalid) == (None, True), disguised
        assert RuntimeEvaluator(policy).evaluate(f)[0].category == "forgery", disguised
    # A real IDN (any case) is still a valid From.
    f = facts_from_bytes("From: j@B\u00fccher.example\r\nTo: u@example.org\r\n\r\nx".encode()).facts
    assert (f.header_from, f.from_invalid) == ("j@xn--bcher-kva.example", False)


def test_encoded_words_in_subject_and_display_name_are_decoded():
    raw = b"From: =?utf-8?q?J=C3=B6rg?= <j@example.com>\r\nSubject: =?UTF-8?B?4oCTIGRhc2g=?=\r\n\r\n"
    f = facts_from_bytes(raw).facts
    assert (f.from_display, f.subject) == ("J\u00f6rg", "\u2013 dash")


def test_broken_encoded_word_and_undeclared_8bit_headers_are_kept_readable():
    raw = b"From: a@example.com\r\nSubject: =?utf-8?B?###?= caf\xe9\r\n\r\n"
    m = facts_from_bytes(raw)
    assert m.facts.subject == "=?utf-8?B?###?= caf\u00e9"
    assert "8bit-header" in m.warnings


def test_pasted_header_block_with_lost_folding_and_no_break_spaces_unfolds():
    raw = (b"Received: from a.example (a.example [192.0.2.1]) by\n\xc2\xa0mx.example.org with ESMTP id 1\n"
           b"<x@example.org>; Thu, 29 Jun 2023 05:22:09 -0400\nFrom: <a@a.example>\n")
    m = facts_from_bytes(raw)
    assert m.hops[0].by_host == "mx.example.org"
    assert m.hops[0].received_at == dt.datetime(2023, 6, 29, 9, 22, 9)
    assert any(w.startswith("unfolded-line") for w in m.warnings)
    assert m.facts.header_from == "a@a.example"


def test_a_line_without_colon_followed_by_body_text_ends_the_header():
    raw = b"From: a@example.com\r\nSubject: s\r\nthis is body text\r\nmore body\r\n"
    m = facts_from_bytes(raw)
    assert [n for n, _ in m.headers] == ["From", "Subject"]
    assert any(w.startswith("no-separator") for w in m.warnings)


def test_a_one_megabyte_header_line_is_cut_not_fatal():
    raw = b"From: a@example.com\r\nSubject: " + b"x" * 1_000_000 + b"\r\n\r\n"
    m = facts_from_bytes(raw)
    assert len(m.facts.subject) == 65536 and "long-field" in m.warnings
    assert m.facts.size == len(raw)


def test_binary_garbage_is_rejected_with_a_located_error():
    with pytest.raises(EdrulesError) as err:
        facts_from_bytes(b"\x00\x01\x02\xff\xfe binary", source="blob.bin")
    assert "not a message" in str(err.value) and "blob.bin" in str(err.value)


def test_msg_key_is_the_sha256_of_the_raw_bytes():
    import hashlib

    assert facts_from_bytes(MINIMAL).facts.msg_key == hashlib.sha256(MINIMAL).hexdigest()


def test_trusted_scanner_headers_set_category_and_label_fills_the_rest():
    raw = (b"X-Spam-Status: Yes, score=7.5 required=5.0\r\n"
           b"Received: from x (x [192.0.2.1]) by mx.example.org; Thu, 1 Jan 2026 00:00:00 +0000\r\n" + MINIMAL)
    f = facts_from_bytes(raw, label="ham").facts
    assert (f.category, f.score) == ("spam", 7.5)
    assert facts_from_bytes(MINIMAL, label="clean").facts.category == "ham"
    with pytest.raises(EdrulesError):
        facts_from_bytes(MINIMAL, label="bogus")


def test_scanner_headers_written_by_the_sender_are_ignored():
    raw = (b"Received: from mx.example.org (mx.example.org [192.0.2.5]) by store.example.org; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
           b"Received: from evil (evil [203.0.113.9]) by mx.example.org; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
           b"X-Spam-Flag: YES\r\n" + MINIMAL)
    assert facts_from_bytes(raw, trust=TrustConfig(auto_detect=False)).facts.category is None


# --- readers and loading


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def msg(n: int, sender: str = "a@example.com") -> bytes:
    return f"From: {sender}\r\nTo: u{n}@example.org\r\nSubject: m{n}\r\nMessage-ID: <{n}@x>\r\n\r\nbody {n}\r\n".encode()


def test_maildir_directories_are_read_recursively_and_tmp_is_left_alone(tmp_path):
    md = tmp_path / "Maildir"
    write(md / "cur" / "1:2,S", msg(1))
    write(md / "new" / "2", msg(2))
    write(md / "tmp" / "3", msg(3))
    write(md / ".Sent" / "cur" / "4:2,S", msg(4))
    write(md / "dovecot-uidlist", b"3 V1 N5\n")
    con = duckdb.connect()
    s = ingest_paths(con, [md], jobs=1)
    assert (s.messages, s.errors, s.skipped) == (3, 0, 1)
    subjects = sorted(r[0] for r in con.execute("SELECT subject FROM messages").fetchall())
    assert subjects == ["m1", "m2", "m4"]


def test_mbox_messages_get_the_envelope_sender_of_their_from_line(tmp_path):
    box = b"".join(
        f"From sender{n}@example.net Thu Jan  1 00:00:0{n} 2026\n".encode() + msg(n).replace(b"\r\n", b"\n") + b"\n"
        for n in range(1, 4)
    )
    box += b"From truncated@example.net Thu Jan  1 00:00:09 2026\nFrom: t@example.com\nSubj"
    con = duckdb.connect()
    s = ingest_paths(con, [write(tmp_path / "inbox.mbox", box)], jobs=1)
    assert (s.messages, s.errors) == (4, 0)
    rows = con.execute("SELECT source, envelope_from FROM messages ORDER BY source").fetchall()
    assert [r[1] for r in rows] == [
        "sender1@example.net", "sender2@example.net", "sender3@example.net", "truncated@example.net"]
    assert rows[0][0].endswith("inbox.mbox#1")


def test_an_empty_mbox_entry_becomes_an_error_row_with_its_position(tmp_path):
    box = b"From a@example.net Thu Jan  1 00:00:00 2026\n\nFrom b@example.net Thu Jan  1 00:00:00 2026\n" + msg(1)
    con = duckdb.connect()
    s = ingest_paths(con, [write(tmp_path / "x.mbox", box)], jobs=1)
    assert (s.messages, s.errors) == (1, 1)
    (row,) = con.execute("SELECT position, error FROM ingest_errors").fetchall()
    assert row == ("message 1, byte 44", "not-a-message")


def test_smtp_transcripts_give_envelope_client_and_helo(corpus):
    path = corpus / "authentication_milter_tdata/example/pipelined.smtp.eml"
    units = list(units_of_file(path))
    assert len(units) == 3
    u = units[0]
    assert (u.envelope_from, u.recipients, u.client_ip, u.helo) == (
        "test@example.com", ("test@example.com",), "1.2.3.4", "test.example.com")


CSV_HEADER = "received_at,recipient,envelope_from,client_ip,category,score,quarantine_state,header_from,subject\n"


def test_quarantine_csv_rows_become_messages_with_envelope_recipients(tmp_path):
    csv = tmp_path / "q.csv"
    csv.write_text(
        CSV_HEADER
        + "2026-01-05T10:00:00Z,Alice@Example.org;bob@example.org,bounce@amazonses.com,54.240.77.69,spam,6.5,quarantined,DoNotReply@someotpsite.cz,Code\n"
        + "2026-01-05 11:00:00+01:00,carol@example.org,<>,2001:db8::1,clean,,released,,\n"
    )
    con = duckdb.connect()
    s = ingest_paths(con, [csv], jobs=1)
    assert (s.messages, s.recipients, s.errors) == (2, 3, 0)
    a, c = sorted(read_facts(con), key=lambda f: f.source)
    assert a.recipients == ("alice@example.org", "bob@example.org")
    assert (a.envelope_from, a.bulk_provider, a.category, a.score, a.quarantine_state) == (
        "bounce@amazonses.com", "amazonses", "spam", 6.5, "quarantined")
    assert (a.header_from, a.received_at) == ("donotreply@someotpsite.cz", dt.datetime(2026, 1, 5, 10, 0))
    assert (c.envelope_from, c.category, c.client_ip, c.received_at) == (
        "", "ham", "2001:db8::1", dt.datetime(2026, 1, 5, 10, 0))
    assert c.from_invalid is True


@pytest.mark.parametrize(
    "row, error",
    [
        ("yesterday,a@example.org,b@example.com,192.0.2.1,spam,1,quarantined,,", "invalid-received_at"),
        ("2026-01-05T10:00:00,a@example.org,b@example.com,300.1.1.1,spam,1,quarantined,,", "invalid-client_ip"),
        ("2026-01-05T10:00:00,a@example.org,b@example.com,192.0.2.1,junk,1,quarantined,,", "invalid-category"),
        ("2026-01-05T10:00:00,a@example.org,b@example.com,192.0.2.1,spam,high,quarantined,,", "invalid-score"),
        ("2026-01-05T10:00:00,a@example.org,b@example.com,192.0.2.1,spam,1,lost,,", "invalid-quarantine_state"),
        ("2026-01-05T10:00:00,,b@example.com,192.0.2.1,spam,1,quarantined,,", "invalid-recipient"),
        ("2026-01-05T10:00:00,a@example.org", "csv-field-count"),
    ],
)
def test_bad_quarantine_csv_rows_become_error_rows_naming_line_and_field(tmp_path, row, error):
    csv = tmp_path / "q.csv"
    csv.write_text(CSV_HEADER + "2026-01-05T10:00:00,ok@example.org,b@example.com,192.0.2.1,spam,1,quarantined,,\n" + row + "\n")
    con = duckdb.connect()
    s = ingest_paths(con, [csv], jobs=1)
    assert (s.messages, s.errors) == (1, 1)
    assert con.execute("SELECT position, error FROM ingest_errors").fetchall() == [("line 3", error)]


def test_a_quarantine_csv_missing_a_required_column_is_reported(tmp_path):
    csv = write(tmp_path / "q.csv", b"received_at,recipient\n2026-01-05T10:00:00,a@example.org\n")
    con = duckdb.connect()
    s = ingest_paths(con, [csv], jobs=1)
    assert s.errors == 1
    (detail,) = con.execute("SELECT detail FROM ingest_errors").fetchone()
    assert "envelope_from" in detail and "quarantine_state" in detail


def test_reingesting_the_same_input_adds_nothing(tmp_path):
    for n in range(5):
        write(tmp_path / "in" / f"{n}.eml", msg(n))
    write(tmp_path / "in" / "junk.eml", b"\x00garbage")
    db = tmp_path / "x.duckdb"
    first = ingest_paths(db, [tmp_path / "in"], jobs=1)
    again = ingest_paths(db, [tmp_path / "in"], jobs=1)
    assert (first.messages, first.duplicates, first.errors) == (5, 0, 1)
    assert (again.messages, again.duplicates) == (5, 5)
    con = duckdb.connect(str(db))
    counts = [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("messages", "recipients", "headers", "ingest_errors")]
    assert counts == [5, 5, 20, 1]


def test_reingesting_with_parallel_workers_adds_nothing_and_repeats_no_error_row(tmp_path):
    for n in range(150):  # three batches of 64 files: two workers and staged Parquet loads
        write(tmp_path / "in" / f"{n:03d}.eml", msg(n))
    write(tmp_path / "in" / "junk.eml", b"\x00garbage")
    db = tmp_path / "x.duckdb"
    first = ingest_paths(db, [tmp_path / "in"], jobs=2)
    again = ingest_paths(db, [tmp_path / "in"], jobs=2)
    assert (first.messages, first.duplicates, first.errors, first.recipients) == (150, 0, 1, 150)
    assert (again.messages, again.duplicates, again.recipients) == (150, 150, 0)
    con = duckdb.connect(str(db))
    counts = [con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("messages", "recipients", "headers", "ingest_errors")]
    assert counts == [150, 150, 600, 1]
    order = [r[0] for r in con.execute("SELECT subject FROM messages ORDER BY rowid").fetchall()]
    assert order == [f"m{n}" for n in range(150)]  # input (file name) order


def test_the_same_message_in_two_datasets_is_kept_in_both(tmp_path):
    f = write(tmp_path / "a.eml", msg(1))
    con = duckdb.connect()
    ingest_paths(con, [f], dataset="one", jobs=1)
    ingest_paths(con, [f], dataset="two", jobs=1)
    assert con.execute("SELECT count(*) FROM messages").fetchone()[0] == 2
    assert [x.dataset for x in read_facts(con, "two")] == ["two"]


def test_parallel_ingest_gives_the_same_tables_as_one_process(corpus, tmp_path):
    src = corpus / "rspamd_test_messages"
    tables = []
    for jobs in (1, 2):
        con = duckdb.connect()
        con.execute("SET threads = 4")  # the staged load's last INSERTs run on DuckDB's threads
        ingest_paths(con, [src], jobs=jobs)
        tables.append([
            con.execute("SELECT * EXCLUDE (received_at) FROM messages ORDER BY rowid").fetchall(),
            con.execute("SELECT * FROM recipients ORDER BY rowid").fetchall(),
            con.execute("SELECT * FROM headers ORDER BY rowid").fetchall(),
            con.execute("SELECT * FROM received_hops ORDER BY rowid").fetchall(),
            con.execute("SELECT * FROM ingest_errors ORDER BY rowid").fetchall(),
        ])
    assert tables[0] == tables[1]
    assert len(tables[0][0]) > 200


def test_read_facts_returns_messages_with_recipients_in_msg_key_order(tmp_path):
    for n in range(3):
        write(tmp_path / f"{n}.eml", msg(n).replace(b"To: ", b"To: z@example.org, "))
    con = duckdb.connect()
    ingest_paths(con, [tmp_path], jobs=1)
    facts = read_facts(con)
    assert [f.msg_key for f in facts] == sorted(f.msg_key for f in facts)
    assert all(len(f.recipients) == 2 for f in facts)


def test_received_hops_record_which_fields_a_trusted_relay_wrote():
    raw = (b"Received: from relay.example.org (relay.example.org [10.0.0.2]) by store.example.org; Thu, 1 Jan 2026 00:00:02 +0000\r\n"
           b"Received: from out.sender.example (out.sender.example [198.51.100.4]) by relay.example.org; Thu, 1 Jan 2026 00:00:01 +0000\r\n"
           b"Received: from forged (forged [192.0.2.66]) by nowhere; Thu, 1 Jan 2026 00:00:00 +0000\r\n" + MINIMAL)
    m = facts_from_bytes(raw)
    assert [h.trusted for h in m.hops] == [True, True, False]
    assert (m.facts.client_ip, m.facts.helo) == ("198.51.100.4", "out.sender.example")
    off = facts_from_bytes(raw, trust=TrustConfig(auto_detect=False)).facts
    assert off.client_ip == "10.0.0.2"
    relay = facts_from_bytes(raw, trust=TrustConfig(relays=("10.0.0.0/24",), auto_detect=False)).facts
    assert relay.client_ip == "198.51.100.4"


def test_cli_ingests_prints_the_summary_and_lists_errors(tmp_path):
    write(tmp_path / "in" / "a.eml", msg(1))
    write(tmp_path / "in" / "b.eml", b"no header here")
    db = tmp_path / "cli.duckdb"
    res = CliRunner().invoke(ingest_command, ["--db", str(db), "--dataset", "t", "--label", "spam", "-j", "1",
                                              str(tmp_path / "in")])
    assert res.exit_code == 0, res.output
    assert "1 messages, 1 recipients, 1 errors" in res.output
    assert "b.eml (file): not-a-message" in res.output
    con = duckdb.connect(str(db))
    assert con.execute("SELECT dataset, category FROM messages").fetchall() == [("t", "spam")]


def test_cli_rejects_a_bad_trusted_relay_with_a_clear_error(tmp_path):
    from edrules.cli import cli

    write(tmp_path / "a.eml", msg(1))
    res = CliRunner().invoke(cli, ["ingest", "--db", str(tmp_path / "x.duckdb"), "--trusted-relay", "10.0.0/99",
                                   str(tmp_path / "a.eml")])
    assert res.exit_code != 0
    assert isinstance(res.exception, EdrulesError) and "not an IP network" in str(res.exception)


def test_every_table_column_and_cli_option_is_documented():
    from edrules.schema import ALL_DDL

    doc = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    import re

    for ddl in ALL_DDL:
        for col in re.findall(r"^\s{4}(\w+)\s", ddl, re.M):
            assert f"`{col}`" in doc, col
    for param in ingest_command.params:
        for opt in param.opts:
            if opt.startswith("--"):
                assert f"`{opt}" in doc, opt


def test_an_address_literal_helo_has_no_org_domain():
    raw = b"Received: from [192.0.2.77] (unknown [192.0.2.77]) by mx.example.org; Thu, 1 Jan 2026 00:00:00 +0000\r\n" + MINIMAL
    f = facts_from_bytes(raw).facts
    assert (f.client_ip, f.helo, f.helo_org) == ("192.0.2.77", "192.0.2.77", None)
    f = facts_from_bytes(MINIMAL, helo="[IPv6:2001:db8::1]", client_ip="2001:db8::1").facts
    assert (f.helo, f.helo_org) == ("2001:db8::1", None)


def test_a_file_that_is_not_a_database_gives_a_clear_error(tmp_path):
    bad = write(tmp_path / "x.duckdb", b"this is not a duckdb file at all" * 100)
    with pytest.raises(EdrulesError) as err:
        ingest_paths(bad, [write(tmp_path / "a.eml", msg(1))], jobs=1)
    assert "cannot open database" in str(err.value) and "x.duckdb" in str(err.value)


def test_a_database_with_an_older_messages_table_gives_a_clear_error(tmp_path):
    con = duckdb.connect()
    con.execute("CREATE TABLE messages (msg_key VARCHAR, dataset VARCHAR)")
    with pytest.raises(EdrulesError) as err:
        ingest_paths(con, [write(tmp_path / "a.eml", msg(1))], jobs=1)
    assert "older edrules" in str(err.value)


def test_progress_true_draws_a_progress_bar_on_stderr(tmp_path, capfd):
    for n in range(3):
        write(tmp_path / f"{n}.eml", msg(n))
    ingest_paths(duckdb.connect(), [tmp_path], jobs=1, progress=True)
    err = capfd.readouterr().err
    assert "/3 [" in err and "file/s" in err  # tqdm over the 3 files


@pytest.mark.parametrize("jobs", [1, 2], ids=["one-process", "staged-workers"])
@pytest.mark.parametrize("gap", [0, 70], ids=["same-batch", "next-batch"])
def test_a_message_ingested_twice_in_one_run_has_its_recipients_hops_and_headers_once(tmp_path, gap, jobs):
    """The second copy is a duplicate: it adds no message row, and no second set of child rows
    (which would count each recipient's verdict twice)."""
    raw = (b"Received: from mx.example ([192.0.2.1]) by mx.corp.example; Mon, 1 Jun 2026 10:00:00 +0000\n"
           b"From: a@example.com\nTo: alice@corp.example, bob@corp.example\nSubject: twice\n\nbody\n")
    folder = tmp_path / "mail"
    folder.mkdir()
    (folder / "0000.eml").write_bytes(raw)
    for i in range(gap):  # other messages between the copies (64 files make a batch)
        (folder / f"{i + 1:04d}.eml").write_bytes(raw.replace(b"twice", f"other {i}".encode()))
    (folder / "9999.eml").write_bytes(raw)
    for i in range(70 if jobs > 1 else 0):  # enough files for two workers (one is used below 64)
        (folder / f"z{i:03d}.eml").write_bytes(raw.replace(b"twice", f"filler {i}".encode()))
    con = duckdb.connect(str(tmp_path / "db.duckdb"))
    s = ingest_paths(con, [folder], jobs=jobs)
    assert s.duplicates == 1
    counts = {t: con.execute(f"SELECT count(*) FROM {t} WHERE msg_key IN (SELECT msg_key FROM messages "
                             "WHERE subject = 'twice')").fetchall()[0][0]
              for t in ("messages", "recipients", "received_hops")}
    assert counts == {"messages": 1, "recipients": 2, "received_hops": 1}
    dup_headers = con.execute("SELECT count(*) FROM (SELECT msg_key, idx FROM headers GROUP BY ALL "
                              "HAVING count(*) > 1)").fetchall()[0][0]
    assert dup_headers == 0


def test_parallel_ingest_without_a_usable_temporary_folder_is_a_located_error(tmp_path, monkeypatch):
    import tempfile

    for n in range(70):  # two batches: the staged (parallel) path
        write(tmp_path / "in" / f"{n:03d}.eml", msg(n))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    with pytest.raises(EdrulesError, match="cannot stage batches in the temporary folder") as err:
        ingest_paths(duckdb.connect(), [tmp_path / "in"], jobs=2)
    assert "no-such-folder" in str(err.value)
