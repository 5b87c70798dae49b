"""Words of the demo tenant: subjects, bodies and throwaway sender domains for each scenario."""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass

from edrules.synth.draft import Route
from edrules.synth.world import DNS, DomainDns, Selector, User

# ---------------------------------------------------------------- names


def local_part(name: str) -> str:
    """'Jiří Malý' -> 'jiri.maly' (ASCII, as most mail systems provision it)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return ".".join(ascii_name.lower().split())


def _first(user: User) -> str:
    return user.name.split()[0]


# ---------------------------------------------------------------- ham

_COLLEAGUE = (
    ("Porada v pondělí", "ahoj {to},\n\nposílám program pondělní porady. Začínáme v 9:00 v zasedačce.\n\n1. Stav objednávek\n2. Sklad a expedice\n3. Různé\n\nDíky,\n{from_}"),
    ("Re: objednávka Danube Parts", "Ahoj {to},\n\nDanube Parts potvrdili termín dodání na příští týden. Fakturu pošlou zvlášť.\n\n{from_}"),
    ("Podklady pro kvartální report", "{to},\n\nmůžeš mi prosím do čtvrtka poslat čísla za svůj tým? Stačí tabulka jako minule.\n\nDíky!\n{from_}"),
    ("Dovolená v říjnu", "Ahoj,\n\nv říjnu budu 14.–18. na dovolené, zastupuje mě {to}.\n\n{from_}"),
    ("Oběd?", "Jdeme dnes ve 12:00 do jídelny naproti? {from_}"),
    ("Nová verze ceníku", "Ahoj {to},\n\nv příloze na sdíleném disku je nová verze ceníku (platí od 1. 10.). Prosím o kontrolu.\n\n{from_}"),
    ("Re: servis vozíku", "Technik přijde ve středu dopoledne, klíče budou na vrátnici.\n\n{from_}"),
    ("Shipment update", "Hi {to},\n\nthe Vienna shipment left the warehouse this morning; tracking is in the usual sheet.\n\nBest,\n{from_}"),
)


def colleague(rng: random.Random, author: User, to: User) -> tuple[str, str]:
    subject, body = rng.choice(_COLLEAGUE)
    return subject, body.format(to=_first(to), from_=author.name)


_PARTNER_SUBJECTS = (
    "Objednávka č. 2025-{n:04d}", "Potvrzení objednávky {n}", "Re: termín dodání", "Faktura {n} – splatnost 14 dní",
    "Lieferavis {n}", "Transport booking {n}", "Re: Re: reklamace palety {n}", "Nabídka na Q4",
)


def partner(rng: random.Random, person: str, to: User, domain: str) -> tuple[str, str]:
    n = rng.randrange(100, 9999)
    subject = rng.choice(_PARTNER_SUBJECTS).format(n=n)
    greeting = "Dobrý den" if domain.endswith(".cz") else "Hallo" if domain.endswith((".de", ".at")) else "Hello"
    body = (f"{greeting} {to.name},\n\nv návaznosti na naši domluvu posílám podrobnosti k {subject.lower()}.\n"
            f"Množství: {rng.randrange(2, 40)} palet, termín: {rng.randrange(1, 28)}. {rng.choice(('10.', '11.'))}\n\n"
            f"S pozdravem / Mit freundlichen Grüßen\n{person}\n{domain}\n")
    return subject, body


def partner_signers(domain: str) -> tuple[tuple[str, str], ...]:
    return tuple((domain, s.name) for s in DNS[domain].selectors)


def author_signers(domain: str) -> tuple[tuple[str, str], ...]:
    dns = DNS.get(domain)
    return tuple((domain, s.name) for s in dns.selectors) if dns else ()


_LIST_TOPICS = (
    "Zkušenosti s novým celním systémem?", "Ceny nafty v říjnu", "Setkání členů v Brně", "Hledám dopravce na trasu Praha–Linz",
    "ADR školení – doporučení", "Paletové konto: jak to řešíte?", "EU mobility package – výklad",
)


def list_post(rng: random.Random, name: str) -> tuple[str, str]:
    topic = rng.choice(_LIST_TOPICS)
    body = (f"Ahoj všichni,\n\n{topic} Uvítám vaše zkušenosti, klidně i mimo konferenci.\n\n"
            f"Díky,\n{name}\n")
    return (topic if rng.random() < 0.6 else "Re: " + topic), body


def otp(rng: random.Random) -> tuple[str, str, str]:
    code = f"{rng.randrange(1000000):06d}"
    text = (f"Your Someotpsite security code is {code}.\n\nThe code expires in 10 minutes. "
            "If you did not try to sign in, contact your administrator.\n")
    html = f"<html><body><p>Your Someotpsite security code is <b>{code}</b>.</p><p>The code expires in 10 minutes.</p></body></html>\n"
    return "Someotpsite Security Code", text, html


def parcel(rng: random.Random) -> tuple[str, str, str]:
    n = f"PZ{rng.randrange(10**9, 10**10)}"
    state = rng.choice(("je na cestě", "bude doručena dnes", "čeká na výdejním místě", "byla doručena"))
    text = f"Dobrý den,\n\nzásilka {n} {state}.\nSledování: https://track.parcelzone.cz/{n}\n\nParcelZone\n"
    return f"Zásilka {n} {state}", text, f"<html><body><p>Zásilka <b>{n}</b> {state}.</p></body></html>\n"


def invoice(rng: random.Random) -> tuple[str, str, str]:
    n = f"{rng.randrange(2025000, 2025999)}"
    amount = f"{rng.randrange(1200, 98000):,} Kč".replace(",", " ")
    text = f"Dobrý den,\n\nvystavili jsme fakturu č. {n} na částku {amount}.\nFaktura: https://app.invoicely.cz/f/{n}\n\nInvoicely\n"
    return f"Faktura {n}", text, f"<html><body><p>Faktura č. <b>{n}</b> na {amount}.</p></body></html>\n"


_NEWS = {
    "vinarstvi-morava.cz": ("Podzimní degustace a novinky ze sklepa", "Burčák je tu! Tento týden"),
    "techdigest-weekly.com": ("This week in infrastructure: 5 things to read", "TechDigest: DMARC, passkeys and more"),
    "kavarna-letna.cz": ("Nová sezónní káva", "Letná: program na víkend"),
    "cyklo-servis.cz": ("Sleva na zimní servis", "Cyklo Servis – novinky"),
}


def newsletter(rng: random.Random, brand: str) -> tuple[str, str, str]:
    subject = rng.choice(_NEWS[brand])
    text = f"{subject}\n\nPřečtěte si celé vydání na webu: https://{brand}/novinky\n\nOdhlásit: odkaz v patičce.\n"
    html = (f"<html><body><h1>{subject}</h1><p>Přečtěte si celé vydání na "
            f'<a href="https://{brand}/novinky">webu</a>.</p><p><small>Odhlásit se můžete odkazem v patičce.</small></p></body></html>\n')
    return subject, text, html


def hr(rng: random.Random, payday: bool, user: User) -> tuple[str, str]:
    if payday:
        return ("Výplatní páska je k dispozici",
                f"Dobrý den {user.name},\n\nvaše výplatní páska je k dispozici v PeopleHub.\n\nPersonální oddělení\n")
    what = rng.choice(("Žádost o dovolenou byla schválena", "Připomínka: školení BOZP", "Nový dokument k podpisu"))
    return what, f"Dobrý den {user.name},\n\n{what}. Podrobnosti najdete v PeopleHub.\n\nPersonální oddělení\n"


def bounce(host: str, rcpt: str, when) -> tuple[str, str, str]:
    text = (f"This is the mail system at host {host}.\n\nI'm sorry to have to inform you that your message could not\n"
            f"be delivered to one or more recipients.\n\n<{rcpt}>: unknown user\n")
    report = (f"Reporting-MTA: dns; {host}\nArrival-Date: {when:%a, %d %b %Y %H:%M:%S +0000}\n\n"
              f"Final-Recipient: rfc822; {rcpt}\nAction: failed\nStatus: 5.1.1\n"
              f"Diagnostic-Code: x-unix; user unknown\n")
    return "Undelivered Mail Returned to Sender", text, report


# ---------------------------------------------------------------- spam & co.

@dataclass(frozen=True, slots=True)
class Spammer:
    """A throwaway domain and how it sends: SPF passing (snowshoe), failing, or absent."""

    domain: str
    ip: str
    spf: str  # pass | fail | none
    signs: bool


@dataclass(frozen=True, slots=True)
class Bot:
    domain: str
    header_from: str
    route: Route
    signs: bool


_W1 = ("best", "mega", "smart", "quick", "prime", "daily", "top", "lucky", "green", "super", "ultra", "happy")
_W2 = ("deals", "offer", "promo", "bonus", "pharma", "loans", "crypto", "shop", "prize", "save", "invest", "gift")
_TLDS = ("com", "net", "biz", "info", "xyz", "top", "shop", "click", "online", "site")


def _spammers() -> tuple[Spammer, ...]:
    rng = random.Random("edrules-demo-spammers")  # fixed: the zone does not depend on --seed
    out, seen = [], set()
    while len(out) < 30:
        d = f"{rng.choice(_W1)}-{rng.choice(_W2)}{rng.randrange(10, 99)}.{rng.choice(_TLDS)}"
        if d in seen:
            continue
        seen.add(d)
        i = len(out)
        ip = f"203.0.113.{130 + i}" if i % 3 == 0 else f"192.0.2.{10 + 7 * i}"
        spf = ("pass", "none", "fail")[i % 3]
        out.append(Spammer(d, ip, spf, signs=(i % 6 == 0)))
    return tuple(out)


SPAMMERS = _spammers()


def spammer_dns(s: Spammer) -> DomainDns:
    spf = {"pass": f"v=spf1 ip4:{s.ip} -all", "fail": "v=spf1 ip4:198.18.0.1 -all", "none": None}[s.spf]
    return DomainDns(spf=spf, dmarc="v=DMARC1; p=none" if s.signs else None,
                     selectors=(Selector("default", 1024),) if s.signs else ())


_SPAM_SUBJECTS = (
    "You have won a $1000 gift card!", "Re: your invoice", "Zhubněte 10 kg za měsíc", "Exclusive offer just for you",
    "Your package could not be delivered", "Investujte do kryptoměn ještě dnes", "Cheap meds – 80% off",
    "Congratulations, you are selected", "Půjčka bez registru do 24 hodin", "Last chance: 70% discount",
)


def spam_sender(rng: random.Random) -> Bot:
    s = rng.choice(SPAMMERS)
    local = rng.choice(("info", "news", "offer", "support", "hello", "noreply"))
    if s.spf == "pass":
        envelope, ip, helo = f"{local}@{s.domain}", s.ip, f"mail.{s.domain}"
    else:
        ip = f"192.0.2.{rng.randrange(1, 255)}" if rng.random() < 0.8 else f"2001:db8:bad:{rng.randrange(1, 999)}::{rng.randrange(2, 99)}"
        helo = rng.choice((f"[{ip}]" if ":" not in ip else "localhost", "User", f"host{rng.randrange(999)}.{s.domain}"))
        other = rng.choice(SPAMMERS).domain
        envelope = f"{local}@{s.domain}" if rng.random() < 0.6 else f"{rng.choice(('bounce', 'mailer', 'root'))}@{other}"
    display = rng.choice(("Special Offers", "Customer Service", "Winner Notification", "Akce dne", ""))
    header_from = f"{display} <{local}@{s.domain}>" if display else f"<{local}@{s.domain}>"
    rdns = f"mail.{s.domain}" if s.spf == "pass" else None
    return Bot(s.domain, header_from, Route(envelope, helo, ip, rdns), s.signs)


def spam(rng: random.Random, domain: str) -> tuple[str, str, str]:
    subject = rng.choice(_SPAM_SUBJECTS)
    link = f"http://{domain}/{rng.randrange(10**5, 10**6)}"
    text = f"{subject}\n\nClick here: {link}\n\nTo unsubscribe reply STOP.\n"
    return subject, text, f'<html><body><h2>{subject}</h2><a href="{link}">CLICK HERE</a></body></html>\n'


def brand_phish(rng: random.Random, domain: str) -> tuple[str, str, str]:
    subject = rng.choice(("Unusual sign-in activity on your account", "Action required: verify your account",
                          "Your account will be suspended"))
    link = f"https://{domain}/verify?id={rng.randrange(10**7, 10**8)}"
    text = f"{subject}.\n\nVerify your identity within 24 hours: {link}\n\nSomeotpsite Security\n"
    return subject, text, f'<html><body><p>{subject}.</p><p><a href="{link}">Verify now</a></p></body></html>\n'


def parcel_phish(rng: random.Random, domain: str) -> tuple[str, str, str]:
    n = f"PZ{rng.randrange(10**9, 10**10)}"
    link = f"https://{domain}/platba/{n}"
    text = f"Dobrý den,\n\nzásilku {n} nelze doručit: doplaťte clo 49 Kč do 24 hodin: {link}\n\nParcelZone\n"
    return (f"Zásilka {n}: nutné doplatit clo", text,
            f'<html><body><p>Zásilku <b>{n}</b> nelze doručit.</p><a href="{link}">Zaplatit</a></body></html>\n')


def ceo_fraud(rng: random.Random, ceo: User, to: User) -> tuple[str, str]:
    subject = rng.choice(("Urgentní platba", "Jsi k dispozici?", "Důvěrné – akvizice", "Rychlá laskavost"))
    body = (f"{_first(to)},\n\npotřebuji, abys dnes ještě provedl(a) platbu dodavateli, je to důvěrné. "
            "Jsem na jednání a nemůžu telefonovat, odpověz mi prosím jen e-mailem.\n\n"
            f"{ceo.name}\nOdesláno z mobilu\n")
    return subject, body


def invoice_fraud(rng: random.Random, ceo: User, to: User) -> tuple[str, str]:
    iban = f"CZ{rng.randrange(10, 99)} 0800 0000 {rng.randrange(1000, 9999)} {rng.randrange(1000, 9999)} {rng.randrange(1000, 9999)}"
    body = (f"Dobrý den {to.name},\n\ndodavatel změnil bankovní spojení. Prosím uhraďte fakturu v příloze na nový účet "
            f"{iban} ještě dnes.\n\nDěkuji,\n{ceo.name}\n")
    return "Změna bankovního spojení dodavatele", body


def credential_phish(rng: random.Random, address: str, domain: str) -> tuple[str, str, str]:
    link = f"https://{domain}/owa/login?u={address}"
    subject = rng.choice(("Vaše poštovní schránka je plná", "Mailbox quota exceeded", "Ověřte svůj účet do 24 hodin"))
    text = f"{subject}.\n\nPřihlaste se a uvolněte místo: {link}\n\nIT podpora\n"
    return subject, text, f'<html><body><p>{subject}.</p><a href="{link}">Přihlásit</a></body></html>\n'


def malware_body(number: int) -> str:
    return f"Dobrý den,\n\nv příloze zasíláme fakturu č. {number} k úhradě.\n\nS pozdravem\nÚčtárna\n"


def inert_script(name: str) -> bytes:
    return (f"// {name}.js: edrules demo placeholder for a malicious script attachment.\n"
            "// It is inert: it does nothing and contains no malware.\n").encode("ascii")
