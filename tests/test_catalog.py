"""Bulk-provider catalog: names, aliases, label-wise suffix matching, real corpus messages."""

from __future__ import annotations

import pytest

from edrules.catalog import Catalog, load_catalog
from edrules.errors import EdrulesError

REQUIRED = {
    "amazonses", "sendgrid", "mailchimp", "mailgun", "sparkpost", "postmark", "salesforce",
    "hubspot", "brevo", "constantcontact", "mailjet", "klaviyo", "zendesk", "marketo",
}


def test_bundled_catalog_lists_every_required_provider():
    cat = load_catalog()
    assert REQUIRED <= set(cat.providers)
    assert cat.version


def test_load_catalog_is_cached():
    assert load_catalog() is load_catalog()


@pytest.mark.parametrize(
    "name, canonical",
    [("mandrill", "mailchimp"), ("Sendinblue", "brevo"), ("EXACTTARGET", "salesforce"),
     ("amazonses", "amazonses"), (" SendGrid ", "sendgrid"), ("nosuchnet", None)],
)
def test_resolve_name_maps_aliases_case_insensitively(name, canonical):
    assert load_catalog().resolve_name(name) == canonical


def test_suggest_offers_close_provider_names():
    assert "sendgrid" in load_catalog().suggest("sendgird")
    assert "mailchimp" in load_catalog().suggest("mandril")
    assert load_catalog().suggest("zzzzzzzz") == []


@pytest.mark.parametrize(
    "domain, provider",
    [("amazonses.com", "amazonses"), ("eu-west-1.amazonses.com", "amazonses"),
     ("evilamazonses.com", None), ("amazonses.com.evil.org", None), ("mcsv.net", "mailchimp"),
     ("bounce.mandrillapp.com", "mailchimp"), ("rsgsv.net", "mailchimp"), ("mcdlv.net", "mailchimp"),
     ("AMAZONSES.COM.", "amazonses"), ("example.com", None), (None, None), ("", None)],
)
def test_provider_of_domain_matches_whole_labels_only(domain, provider):
    assert load_catalog().provider_of_domain(domain) == provider


def test_identify_prefers_envelope_then_dkim_then_helo_then_ptr():
    cat = load_catalog()
    assert cat.identify("bounces.sendgrid.net", ["amazonses.com"], "mta.mailgun.net") == "sendgrid"
    assert cat.identify("brand.example", ["brand.example", "amazonses.com"], "x.mailgun.net") == "amazonses"
    assert cat.identify("brand.example", [], "o1.ptr.sendgrid.net") == "sendgrid"
    assert cat.identify(None, [], None, ptr="a1-2.smtp-out.amazonses.com") == "amazonses"
    assert cat.identify("brand.example", ["brand.example"], "mail.brand.example") is None


def test_identify_ignores_ip_literal_helo():
    assert load_catalog().identify(None, [], "54.240.77.69") is None


def test_helo_suffix_is_not_an_envelope_suffix():
    # in.constantcontact.com is an envelope domain; constantcontact.com itself only a HELO suffix
    cat = load_catalog()
    assert cat.identify("constantcontact.com", [], None) is None
    assert cat.identify(None, [], "mail.constantcontact.com") == "constantcontact"


def test_catalog_with_bad_entry_raises_located_error():
    with pytest.raises(EdrulesError) as err:
        Catalog.from_mapping({"providers": {"x": {"envelope_suffixes": "notalist"}}}, "p.yaml")
    assert "p.yaml" in str(err.value) and "providers.x" in str(err.value)


def test_catalog_from_yaml_reports_the_line_of_a_syntax_error(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("providers:\n  a: [\n")
    with pytest.raises(EdrulesError) as err:
        Catalog.from_yaml(f)
    assert str(f) in str(err.value) and ":3" in str(err.value)


# One real message per provider (phishing_pot: ESP abuse received by Microsoft 365), with the
# signal that identifies it: envelope domain, DKIM d= (pass), or HELO of the trusted hop.
PROVIDER_SAMPLES = [
    ("amazonses", "sample-1015.eml"), ("brevo", "sample-2201.eml"), ("constantcontact", "sample-1267.eml"),
    ("hubspot", "sample-1736.eml"), ("klaviyo", "sample-1210.eml"), ("mailchimp", "sample-1348.eml"),
    ("mailgun", "sample-1003.eml"), ("mailjet", "sample-2852.eml"), ("marketo", "sample-3450.eml"),
    ("postmark", "sample-2203.eml"), ("salesforce", "sample-4738.eml"), ("sendgrid", "sample-118.eml"),
    ("sparkpost", "sample-2833.eml"), ("zendesk", "sample-1110.eml"),
]


@pytest.mark.parametrize("provider, sample", PROVIDER_SAMPLES, ids=[p for p, _ in PROVIDER_SAMPLES])
def test_each_provider_is_identified_on_a_real_corpus_message(corpus, provider, sample):
    from edrules.ingest import TrustConfig, facts_from_bytes

    path = corpus / "phishing_pot" / sample
    if not path.exists():
        pytest.skip(f"{sample} not in this corpus snapshot")
    trust = TrustConfig(authserv_ids=frozenset({"(none)", "protection.outlook.com", "mx.google.com"}))
    assert facts_from_bytes(path.read_bytes(), trust=trust).facts.bulk_provider == provider


def test_every_required_provider_has_a_real_corpus_example():
    assert {p for p, _ in PROVIDER_SAMPLES} == REQUIRED


def test_untrusted_dkim_results_do_not_name_a_provider(corpus):
    from edrules.ingest import TrustConfig, facts_from_bytes

    raw = (corpus / "phishing_pot" / "sample-4738.eml").read_bytes()
    f = facts_from_bytes(raw, trust=TrustConfig(authserv_ids=frozenset({"nobody.example"}), auto_detect=False)).facts
    assert f.dkim == () and f.bulk_provider is None
