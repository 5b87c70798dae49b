"""Header analyzer: the seed's OTP ticket explained in plain English, safe fixes ranked, hostile input refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from support_env import OTHER, SEED, TENANT, demo_db, make_site

from edrules.errors import EdrulesError
from edrules.rules.model import Policy
from edrules.support.analyzer import MAX_HEADER_BYTES, analyze_bytes, analyze_for_domain, header_part


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    return make_site(tmp_path_factory.mktemp("analyzer-state"), demo_db(base))


def seed() -> bytes:
    if not SEED.exists():
        pytest.skip(f"seed example not present at {SEED}")
    return SEED.read_bytes()


def test_the_seed_otp_headers_read_as_a_strict_forgery_of_someotpsite_sent_through_amazonses(site):
    a = analyze_for_domain(seed(), site, OTHER)
    assert a.from_policy == "strict"
    assert [x.verdict.recipient for x in a.answers] == ["demo@exchangedefenderdemo.com"]
    ans = a.answers[0]
    assert (str(ans.verdict.action), ans.verdict.category) == ("quarantine", "forgery")
    assert ("The envelope sender is amazonses.com while the From says someotpsite.cz, and your From-policy is "
            "strict, so the gateway treats the From as forged and quarantines the message") in ans.plain
    # The trusted gateway's A-R says DMARC passed: the page says the mail is genuine and what would deliver it.
    assert "DMARC pass" in ans.plain and "very likely genuine" in ans.plain
    assert ans.alternatives == {"strict": "quarantine", "aligned": "deliver", "relaxed": "deliver"}
    facts = dict(a.fact_rows())
    assert facts["header From"] == "donotreply@someotpsite.cz"
    assert facts["client IP / HELO"] == "54.240.77.69 / a77-69.smtp-out.amazonses.com"
    assert facts["bulk provider"] == "amazonses"
    assert facts["trusted authserv-id"] == "inbound10.exchangedefender.com"
    assert any(t.step == "from_policy" for t in ans.verdict.trace)


def test_an_untrusted_domain_config_believes_none_of_the_pasted_authentication_results():
    a = analyze_bytes(seed(), Policy(name="p"), domain=OTHER)  # no trusted authserv-id
    f = a.facts
    assert f.dmarc is None and f.authserv_id is None
    assert "very likely genuine" not in a.answers[0].plain


def test_the_allow_entry_on_the_from_address_gets_the_strict_mode_hint_and_the_tenant_suggestions_rank_a_safe_fix(site):
    # The tenant's own ticket: Martin allow-listed DoNotReply@someotpsite.cz, the codes stay held.
    text = seed().replace(b"demo@exchangedefenderdemo.com", b"martin.kral@northwind-traders.cz")
    text = text.replace(b"inbound10.exchangedefender.com", b"mx1.northwind-traders.cz")
    a = analyze_for_domain(text, site, TENANT)
    ans = a.answers[0]
    assert ans.verdict.category == "forgery"
    assert "Allow entry otp-codes names the header From" in ans.plain
    assert a.suggestions is not None, a.suggestion_note
    best = a.recommended  # the first safe candidate that also matches the next code
    assert best.safe and best.durable and best.new_forged == 0 and best.new_other == 0
    assert best.change == "allow sender donotreply@someotpsite.cz via amazonses [user:martin.kral@northwind-traders.cz]"
    table = a.suggestions.table
    relaxed = table[table["kind"] == "From-policy relaxed"]
    assert len(relaxed) and int(relaxed["rank"].min()) > 1  # the unsafe mode never ranks first
    assert "measured on" in a.suggestion_note


@pytest.mark.parametrize("data, words", [
    (b"X-Filler: " + b"a" * (MAX_HEADER_BYTES + 10) + b"\n", "header block is 1.0 MB"),
    (b"Received: x\n" + b"\x00\x01\x02" * 4000, "binary data"),
    (bytes(range(256)) * 40, "binary data"),
    (b"Hello, my codes never arrive, please help!\nThanks, Martin\n", "no header lines found"),
    (b"Note: the following is my problem\nCause: unknown\n", "no mail headers found"),
    (b"   \n\n", "empty"),
])
def test_hostile_input_gets_a_one_line_message_instead_of_a_traceback(data, words):
    with pytest.raises(EdrulesError) as err:
        header_part(data, "upload.eml")
    assert words in str(err.value) and "\n" not in str(err.value)
    assert "upload.eml" in str(err.value)


def test_a_ten_megabyte_header_is_refused_quickly_with_its_size():
    data = b"Subject: " + b"x" * (10 << 20) + b"\n"
    with pytest.raises(EdrulesError, match="header block is 10.0 MB"):
        analyze_bytes(data, Policy(name="p"))


def test_an_eml_with_a_large_body_is_read_for_its_headers_only():
    head = seed()
    data = head + b"\n\n" + b"body line\n" * 300_000  # ~3 MB of body
    a = analyze_bytes(data, Policy(name="p"), domain=OTHER, trusted_authserv=["inbound10.exchangedefender.com"])
    assert a.answers[0].verdict.category == "forgery"
