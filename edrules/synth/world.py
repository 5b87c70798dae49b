"""The fictional world of the demo tenant: its users, gateway, and every sending domain's DNS.

All domains except the real sending networks (amazonses.com, mcsv.net) are invented; all
DNS data is synthetic and exists only in the generated zone file. Addresses of invented
hosts come from the documentation ranges (RFC 5737, RFC 3849); the networks keep their
real published ranges so the bulk-provider catalog and IP rules see realistic values.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class User:
    name: str
    local: str
    role: str


@dataclass(frozen=True, slots=True)
class Selector:
    name: str
    bits: int


@dataclass(frozen=True, slots=True)
class DomainDns:
    """What a domain publishes: SPF (at the domain or listed names), DKIM selectors, DMARC."""

    spf: str | None = None
    dmarc: str | None = None
    selectors: tuple[Selector, ...] = ()


TENANT_DOMAIN = "northwind-traders.cz"
TENANT_NAME = "Northwind Traders s.r.o."
GATEWAY = f"mx1.{TENANT_DOMAIN}"  # the trusted relay and authserv-id
GATEWAY_IP = "198.51.100.25"
OUTBOUND = f"smtp.{TENANT_DOMAIN}"
OUTBOUND_IP = "198.51.100.10"

# Roles the scenarios need sit at fixed positions: CEO, finance, the OTP user.
USERS: tuple[User, ...] = (
    User("Jana Nováková", "jana.novakova", "CEO"),
    User("Petr Svoboda", "petr.svoboda", "finance"),
    User("Martin Král", "martin.kral", "IT admin"),
    User("Eva Horáková", "eva.horakova", "sales"),
    User("Lucie Černá", "lucie.cerna", "marketing"),
    User("Tomáš Dvořák", "tomas.dvorak", "logistics"),
    User("Alena Veselá", "alena.vesela", "sales"),
    User("Jakub Procházka", "jakub.prochazka", "logistics"),
    User("Kateřina Pokorná", "katerina.pokorna", "HR"),
    User("Ondřej Kučera", "ondrej.kucera", "purchasing"),
    User("Veronika Marková", "veronika.markova", "marketing"),
    User("David Němec", "david.nemec", "support"),
)
MIN_USERS = 3

OTP_FROM = "DoNotReply@someotpsite.cz"
PARCEL_FROM = "notifikace@parcelzone.cz"
SES_SELECTOR = "224i4yxa5dv7c2xz3womw6peuasteono"

DNS: dict[str, DomainDns] = {
    TENANT_DOMAIN: DomainDns(
        spf=f"v=spf1 ip4:{OUTBOUND_IP} mx -all",
        dmarc=f"v=DMARC1; p=quarantine; rua=mailto:dmarc@{TENANT_DOMAIN}",
        # peoplehub1 is a key delegated to the HR SaaS that signs as the tenant
        selectors=(Selector("nw2025", 2048), Selector("peoplehub1", 1024)),
    ),
    # --- Amazon SES and the brands that send through it
    "amazonses.com": DomainDns(
        spf="v=spf1 ip4:54.240.0.0/18 ip4:54.240.64.0/19 ip4:199.255.192.0/22 -all",
        selectors=(Selector(SES_SELECTOR, 1024),),
    ),
    "eu-central-1.amazonses.com": DomainDns(spf="v=spf1 ip4:69.169.224.0/20 -all"),
    "someotpsite.cz": DomainDns(
        spf="v=spf1 include:amazonses.com -all",
        dmarc="v=DMARC1; p=quarantine; rua=mailto:dmarc@someotpsite.cz",
        selectors=(Selector("qpv3hp79ulhgw5mzbwxm4lcbtqqkzbgx", 1024),),
    ),
    "parcelzone.cz": DomainDns(
        spf="v=spf1 include:amazonses.com ~all",
        dmarc="v=DMARC1; p=none",
        selectors=(Selector("k5tqbvo3ymr6exmzz4mq6mc2ebbp4wdq", 1024),),
    ),
    # invoicely uses a custom MAIL FROM domain, so its envelope is its own
    "invoicely.cz": DomainDns(
        dmarc="v=DMARC1; p=reject",
        selectors=(Selector("b6u3n7xsyxwbhw4zgyqhfd3fq2rdq2ce", 1024),),
    ),
    "bounce.invoicely.cz": DomainDns(spf="v=spf1 include:amazonses.com -all"),
    # --- Mailchimp and newsletter brands
    "mcsv.net": DomainDns(
        spf="v=spf1 ip4:205.201.128.0/20 ip4:198.2.128.0/18 -all",
        selectors=(Selector("k3", 1024),),
    ),
    "rsgsv.net": DomainDns(spf="v=spf1 ip4:205.201.128.0/20 ip4:198.2.128.0/18 -all"),
    "vinarstvi-morava.cz": DomainDns(dmarc="v=DMARC1; p=none", selectors=(Selector("k2", 1024),)),
    "techdigest-weekly.com": DomainDns(selectors=(Selector("k2", 1024),)),
    "kavarna-letna.cz": DomainDns(dmarc="v=DMARC1; p=quarantine", selectors=(Selector("k2", 1024),)),
    "cyklo-servis.cz": DomainDns(dmarc="v=DMARC1; p=none"),  # never set up DKIM at Mailchimp
    # --- partners
    "bohemia-logistics.cz": DomainDns(
        spf="v=spf1 ip4:198.51.100.40/30 -all",
        dmarc="v=DMARC1; p=reject",
        selectors=(Selector("mail2024", 2048),),
    ),
    "mail.bohemia-logistics.cz": DomainDns(spf="v=spf1 a -all"),  # HELO identity of its bounces
    "krumlov-print.cz": DomainDns(spf="v=spf1 ip4:198.51.100.55 ~all"),
    "danube-parts.de": DomainDns(
        spf="v=spf1 ip4:198.51.100.70 -all",
        dmarc="v=DMARC1; p=none",
        selectors=(Selector("s1", 2048),),
    ),
    "alpenfracht.at": DomainDns(
        spf="v=spf1 ip6:2001:db8:a1::/48 -all",
        dmarc="v=DMARC1; p=quarantine",
        selectors=(Selector("dkim1", 2048),),
    ),
    "freepost-mail.cz": DomainDns(
        spf="v=spf1 ip4:198.51.100.128/27 -all",
        dmarc="v=DMARC1; p=reject",
        selectors=(Selector("fp1", 1024),),
    ),
    # --- a mailing list and an HR SaaS sending on the tenant's behalf
    "cargo-forum.org": DomainDns(dmarc="v=DMARC1; p=none", selectors=(Selector("list", 1024),)),
    "lists.cargo-forum.org": DomainDns(spf="v=spf1 ip4:198.51.100.90 -all"),
    "peoplehub-hr.com": DomainDns(selectors=(Selector("ph", 1024),)),
    "em.peoplehub-hr.com": DomainDns(spf="v=spf1 ip4:198.51.100.120/29 -all"),
    # --- attackers' own domains (auth passing does not make mail legitimate)
    "someotpsite-security.cz": DomainDns(
        spf="v=spf1 ip4:203.0.113.66 -all",
        dmarc="v=DMARC1; p=none",
        selectors=(Selector("default", 1024),),
    ),
    "n0rthwind-traders.cz": DomainDns(spf="v=spf1 ip4:203.0.113.70 ~all"),
    "office-securemail.net": DomainDns(spf="v=spf1 ip4:203.0.113.80/29 ~all"),
}

PARTNERS = {
    "bohemia-logistics.cz": ("mail.bohemia-logistics.cz", "198.51.100.41", ("Jiří Malý", "Hana Kolářová", "dispecink")),
    "krumlov-print.cz": ("smtp.krumlov-print.cz", "198.51.100.55", ("Pavel Růžička", "objednavky")),
    "danube-parts.de": ("mx-out.danube-parts.de", "198.51.100.70", ("Klaus Becker", "Sabine Wolf", "orders")),
    "alpenfracht.at": ("mail.alpenfracht.at", "2001:db8:a1::25", ("Markus Huber", "dispo")),
}
