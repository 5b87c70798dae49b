from edrules.domains import is_subdomain_or_self, normalize_address, normalize_domain, normalize_ip, org_domain


def test_addresses_are_lowercased_idna_encoded_and_lose_the_trailing_dot():
    assert normalize_address("DoNotReply@SomeOTPsite.CZ.") == "donotreply@someotpsite.cz"
    assert normalize_domain("Bücher.DE.") == "xn--bcher-kva.de"
    assert normalize_address("<>") == ""


def test_organisational_domain_uses_the_public_suffix_list():
    assert org_domain("a77-69.smtp-out.amazonses.com") == "amazonses.com"
    assert org_domain("mail.example.co.uk") == "example.co.uk"
    assert org_domain("co.uk") == "co.uk"


def test_lookalike_domain_is_not_a_subdomain():
    assert is_subdomain_or_self("mail.example.com", "example.com")
    assert not is_subdomain_or_self("evilexample.com", "example.com")


def test_ipv4_mapped_ipv6_client_is_treated_as_ipv4():
    assert normalize_ip("[IPv6:::ffff:192.0.2.1]") == "192.0.2.1"
    assert normalize_ip("2001:DB8::1") == "2001:db8::1"
    assert normalize_ip("not-an-ip") is None
