"""The demo tenant's traffic: one generator per scenario, each yielding drafts for one day.

Each scenario draws from its own random stream (seeded by name), so adding or changing one
scenario leaves the others' messages byte-identical.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from edrules.facts import Category
from edrules.synth import text
from edrules.synth.calendar import any_time, count, is_workday, prague_offset_minutes, working_time
from edrules.synth.draft import Draft, Route
from edrules.synth.mime import Attachment, Content, zip_bytes
from edrules.synth.world import (
    OTP_FROM, OUTBOUND, OUTBOUND_IP, PARCEL_FROM, PARTNERS, SES_SELECTOR, TENANT_DOMAIN, User,
)


@dataclass(frozen=True, slots=True)
class Mailbox:
    user: User
    address: str

    @property
    def header(self) -> str:
        return f"{self.user.name} <{self.address}>"


@dataclass(frozen=True, slots=True)
class Ctx:
    """What every scenario may use: the tenant's mailboxes by role."""

    mailboxes: tuple[Mailbox, ...]

    @property
    def ceo(self) -> Mailbox:
        return self.mailboxes[0]

    @property
    def finance(self) -> Mailbox:
        return self.mailboxes[1]

    @property
    def otp_user(self) -> Mailbox:
        return self.mailboxes[2]

    @property
    def parcel_user(self) -> Mailbox:
        """Allow-listed the parcel notifications (a sales user when the tenant has one)."""
        return self.mailboxes[min(3, len(self.mailboxes) - 1)]

    def by_role(self, *roles: str) -> tuple[Mailbox, ...]:
        found = tuple(m for m in self.mailboxes if m.user.role in roles)
        return found or self.mailboxes

    def pick(self, rng: random.Random, k: int = 1, exclude: Mailbox | None = None) -> list[Mailbox]:
        pool = [m for m in self.mailboxes if m != exclude]
        return rng.sample(pool, min(k, len(pool)))


Generator = Callable[[Ctx, random.Random, date], Iterator[Draft]]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    label: Category
    story: str
    generate: Generator


# ---------------------------------------------------------------- helpers

def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _msgid(rng: random.Random, domain: str) -> str:
    return f"<{_hex(rng, 12)}.{_hex(rng, 8)}@{domain}>"


def _ses_id(rng: random.Random, when: datetime) -> str:
    """Amazon SES message id: 0100 + epoch milliseconds in hex, then a UUID and -000000."""
    ms = int(when.timestamp() * 1000)
    return (f"01000{ms:011x}-{_hex(rng, 8)}-{_hex(rng, 4)}-{_hex(rng, 4)}-{_hex(rng, 4)}-"
            f"{_hex(rng, 12)}-000000")


def ses_route(rng: random.Random, envelope_domain: str = "amazonses.com", region: str | None = None,
              when: datetime | None = None, local: str | None = None) -> Route:
    if region == "eu-central-1":
        b, c = 224 + rng.randrange(16), 1 + rng.randrange(254)
        ip, helo = f"69.169.{b}.{c}", f"b{b}-{c}.smtp-out.eu-central-1.amazonses.com"
    else:
        b, c = 64 + rng.randrange(32), 1 + rng.randrange(254)
        ip, helo = f"54.240.{b}.{c}", f"a{b}-{c}.smtp-out.amazonses.com"
    return Route(f"{local or _ses_id(rng, when)}@{envelope_domain}", helo, ip, helo)


MAILCHIMP_HOSTS = (
    ("mail26.atl121.mcsv.net", "205.201.131.26"),
    ("mail65.atl141.mcsv.net", "205.201.134.65"),
    ("mail143.suw11.mcsv.net", "198.2.133.143"),
    ("mail7.sea31.rsgsv.net", "198.2.180.7"),
    ("mail211.sea91.rsgsv.net", "198.2.141.211"),
)


def _when(rng: random.Random, day: date, office: bool = True) -> tuple[datetime, int]:
    t = working_time(rng, day) if office else any_time(rng, day)
    return t, prague_offset_minutes(t)


def _draft(scenario: str, label: Category, when: tuple[datetime, int], route: Route, rcpts: list[Mailbox],
           content: Content, signers: tuple[tuple[str, str], ...], message_id: str) -> Draft:
    return Draft(scenario, label, when[0], when[1], route, tuple(m.address for m in rcpts), content,
                 signers, message_id)


def _to(rcpts: list[Mailbox]) -> tuple[tuple[str, str], ...]:
    out = [("To", rcpts[0].header)]
    if len(rcpts) > 1:
        out.append(("Cc", ", ".join(m.header for m in rcpts[1:])))
    return tuple(out)


# ---------------------------------------------------------------- ham

def colleagues(ctx: Ctx, rng: random.Random, day: date) -> Iterator[Draft]:
    if not is_workday(day):
        return
    for author in ctx.mailboxes:
        for _ in range(count(rng, 0.7)):
            rcpts = ctx.pick(rng, 1 + (rng.random() < 0.35) + (rng.random() < 0.15), exclude=author)
            subject, body = text.colleague(rng, author.user, rcpts[0].user)
            content = Content((("From", author.header), *_to(rcpts), ("Subject", subject)), body)
            route = Route(author.address, OUTBOUND, OUTBOUND_IP, OUTBOUND)
            yield _draft("colleague", Category.HAM, _when(rng, day), route, rcpts, content,
                         ((TENANT_DOMAIN, "nw2025"),), _msgid(rng, TENANT_DOMAIN))


def partners(ctx: Ctx, rng: random.Random, day: date) -> Iterator[Draft]:
    if not is_workday(day):
        return
    names = sorted(PARTNERS)
    for _ in range(count(rng, 0.55 * len(ctx.mailboxes))):
        domain = rng.choice(names)
        host, ip, people = PARTNERS[domain]
        person = rng.choice(people)
        local = text.local_part(person)
        display = person if " " in person else f"{person.capitalize()} | {domain}"
        rcpt = [rng.choice(ctx.by_role("sales", "logistics", "finance", "purchasing"))]
        subject, body = text.partner(rng, person, rcpt[0].user, domain)
        content = Content(((("From", f"{display} <{local}@{domain}>")), *_to(rcpt), ("Subject", subject)), body)
        route = Route(f"{local}@{domain}", host, ip, host)
        signers = text.partner_signers(domain)
        yield _draft("partner", Category.HAM, _when(rng, day), route, rcpt, content, signers, _msgid(rng, domain))


LIST = "members@lists.cargo-forum.org"
LIST_POSTERS = (
    ("Jiří Malý", "jiri.maly@bohemia-logistics.cz", True),
    ("Klaus Becker", "klaus.becker@danube-parts.de", False),
    ("Radek Šimek", "radek.simek@freepost-mail.cz", True),
    ("Ivana Bartošová", "ivana@cargo-forum.org", False),
    ("Petra Havlíková", "p.havlikova@krumlov-print.cz", False),
)


def mailing_list(ctx: Ctx, rng: random.Random, day: date) -> Iterator[Draft]:
    """A Mailman list: it munges From only for posters whose domain publishes a strict DMARC policy."""
    subscribers = ctx.by_role("logistics")[:2]
    for _ in range(count(rng, 1.0 if is_workday(day) else 0.3)):
        name, poster, munge = rng.choice(LIST_POSTERS)
        subject, body = text.list_post(rng, name)
        when = _when(rng, day)
        msgid = _msgid(rng, poster.rpartition("@")[2])
        sender = f'"{name} via cargo-forum" <{LIST}>' if munge else f"{name} <{poster}>"
        poster_domain = poster.rpartition("@")[2]
        author_sig = text.author_signers(poster_domain)
        for sub in subscribers:
            verp = f"members-bounces+{sub.address.replace('@', '=')}@lists.cargo-forum.org"
            headers = [("From", sender), ("To", LIST), ("Subject", f"[cargo-forum] {subject}")]
            if munge:
                headers.append(("Reply-To", f"{name} <{poster}>"))
            content = Content(tuple(headers), body)
            list_headers = (
                ("List-Id", "Cargo Forum members <members.lists.cargo-forum.org>"),
                ("List-Unsubscribe", "<mailto:members-leave@lists.cargo-forum.org>"),
                ("Precedence", "list"),
            )
            yield Draft("mailing_list", Category.HAM, when[0], when[1],
                        Route(verp, "lists.cargo-forum.org", "198.51.100.90", "lists.cargo-forum.org"),
                        (sub.address,), content, author_sig, msgid,
                        footer="\n-- \ncargo-forum mailing list\nhttps://lists.cargo-forum.org/members\n",
                        resign=(("cargo-forum.org", "list"),), list_headers=list_headers)


def ses_otp(ctx: Ctx, rng: random.Random, day: date) -> Iterator[Draft]:
    """The README story: OTP codes from DoNotReply@someotpsite.cz via Amazon SES to one user."""
    if not is_workday(day) or rng.random() > 0.55:
        return
    user = ctx.otp_user
    for _ in range(1 + (rng.random() < 0.2)):  # sometimes a second code after a timeout
        when = _when(rng, day)
        route = ses_route(rng, when=when[0])
        subject, body, html = text.otp(rng)
        content = Content((("From", f"<{OTP_FROM}>"), ("To", f"<{user.address}>"), ("Subject", subject)),
                          body, html)
        yield _draft("ses_otp", Category.HAM, when, route, [user], content,
                     (("someotpsite.cz", "qpv3hp79ulhgw5mzbwxm4lcbtqqkzbgx"), ("amazonses.com", SES_SELECTOR)),
                     f"<{route.envelope_from.partition('@')[0]}@email.amazonses.com>")


def ses_parcel(ctx: Ctx, rng: random.Random, day: date) -> Iterator[Draft]:
    for _ in range(count(rng, 0.08 * len(ctx.mailboxes))):
        rcpt = [ctx.parcel_user] if rng.random() < 0.4 else ctx.pick(rng)
        when = _when(rng, day, office=False)
        route = ses_route(rng, "eu-central-1.amazonses.com", "eu-central-1", when[0])
        subject, body, html = text.parcel(rng)
        content = Content((("From", f"ParcelZone <{PARCEL_FROM}>"), ("To", rcpt[0].header),
                           ("Subject", subject)), body, html)
        yield _draft("ses_parcel", Category.HAM, when, route, rcpt, content,
                     (("parcelzone.cz", "k5tqbvo3ymr6exmzz4mq6mc2ebbp4wdq"), ("amazonses.com", SES_SELECTOR)),
                     f"<{route.envelope_from.partition('@')[0]}@eu-central-1.amazonses.com>")


def ses_invoice(ctx: Ctx, rng: random.Random, day: date) -> Iterator[Draft]:
    """SES with a custom MAIL FROM domain: the envelope is the brand's own, so strict is happy."""
    if not is_workday(day):
        return
    for _ in range(count(rng, 0.45)):
        rcpt = [ctx.finance] if rng.random() < 0.7 else ctx.pick(rng)
        when = _when(rng, day)
        sesid = _ses_id(rng, when[0])
        route = ses_route(rng, "bounce.invoicely.cz", local=sesid)
        subject, body, html = text.invoice(rng)
        content = Content((("From", "Invoicely <faktury@invoicely.cz>"), ("To", rcpt[0].header),
                           ("Subject", subject)), body, html)
        yield _draft("ses_invoice", Category.HAM, when, route, rcpt, content,
                     (("invoicely.cz", "b6u3n7xsyxwbhw4zgyqhfd3fq2rdq2ce"), ("amazonses.com", SES_SELECTOR)),
                     f"<{sesid}@email.amazonses.com>")


NEWSLETTERS = (
    # brand, From, weekday, every n weeks, roles, brand signs?
    ("vinarstvi-morava.cz", "Vinařství Morava <novinky@vinarstvi-morava.cz>", 3, 1, ("CEO", "marketing"), True),
    ("techdigest-weekly.com", "TechDigest Weekly <digest@techdigest-weekly.com>", 0, 1, ("IT admin", "marketing", "support"), True),
    ("kavarna-letna.cz", "Kavárna Letná <ahoj@kavarna-letna.cz>", 4, 2, ("sales", "HR", "finance"), True),
    ("cyklo-servis.cz", "Cyklo Servis <info@cyklo-servis.cz>", 5, 2, ("logistics", "IT admin"), False),
)


def newsletters(ctx: Ctx, rng: random.Random, day: date) -> Iterator[Draft]:
    """Mailchimp campaigns: one copy per subscriber, VERP envelope at mcsv.net/rsgsv.net."""
    week = day.isocalendar().week
    for brand, sender, weekday, every, roles, signs in NEWSLETTERS:
        if day.weekday() != weekday or week % every:
            continue
        campaign = _hex(rng, 10)
        subject, body, html = text.newsletter(rng, brand)
        host, ip = MAILCHIMP_HOSTS[rng.randrange(len(MAILCHIMP_HOSTS))]
        when = _when(rng, day)
        user_id = _hex(rng, 25)
        for sub in ctx.by_role(*roles):
            rcpt_tag = sub.address.replace("@", "=")
            route = Route(f"bounce-mc.us21_{user_id[:8]}.{campaign}-{rcpt_tag}@{host}", host, ip, host)
            headers = (
                ("From", sender), ("To", f"<{sub.address}>"), ("Subject", subject), ("Reply-To", sender),
                ("List-Unsubscribe", f"<https://{brand.split('.')[0]}.us21.list-manage.com/unsubscribe?u={user_id}&id={campaign}>, "
                                     f"<mailto:unsubscribe-mc.us21_{user_id[:8]}.{campaign}-{rcpt_tag}@unsubscribe.mailchimpapp.net>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
                ("List-Id", f"{brand} <{user_id}.list-id.mcsv.net>"),
                ("X-MC-User", user_id),
                ("Feedback-ID", f"21:21-{user_id[:8]}:{campaign}:mailchimp"),
            )
            signers = ((brand, "k2"),) if signs else ()
            yield _draft("newsletter", Category.HAM, when, route, [sub], Content(headers, body, html),
                         signers + (("mcsv.net", "k3"),),
                         f"<{_hex(rng, 24)}@{brand}>")


def hr_saas(ctx: Ctx, rng: random.Random, day: date) -> Iterator[Draft]:
    """An HR SaaS sends as hr@ the tenant with a delegated DKIM key: DMARC-aligned, envelope its own."""
    # pay slips on the 10th, or on the Friday before when the 10th falls on a weekend
    payday = (day.day == 10 and is_workday(day)) or (day.day in (8, 9) and day.weekday() == 4)
    rcpts = list(ctx.mailboxes) if payday else ([ctx.pick(rng)[0]] if is_workday(day) and rng.random() < 0.25 else [])
    for rcpt in rcpts:
        when = _when(rng, day)
        subject, body = text.hr(rng, payday, rcpt.user)
        bounce = f"bounces+{_hex(rng, 10)}-{rcpt.address.replace('@', '=')}@em.peoplehub-hr.com"
        route = Route(bounce, "o1.em.peoplehub-hr.com", "198.51.100.121", "o1.em.peoplehub-hr.com")
        content = Content((("From", f"Personální oddělení <hr@{TENANT_DOMAIN}>"), ("To", rcpt.header),
                           ("Subject", subject)), body)
        yield _draft("hr_saas", Category.HAM, when, route, [rcpt], content,
                     ((TENANT_DOMAIN, "peoplehub1"), ("peoplehub-hr.com", "ph")), _msgid(rng, "em.peoplehub-hr.com"))


def bounce(ctx: Ctx, rng: random.Random, day: date) -> Iterator[Draft]:
    """A partner MTA's delivery status notification: null envelope sender, HELO identity."""
    if not is_workday(day) or rng.random() > 0.15:
        return
    rcpt = [rng.choice(ctx.by_role("sales", "logistics"))]
    host, ip, _people = PARTNERS["bohemia-logistics.cz"]
    when = _when(rng, day)
    typo = rng.choice(("dispecnik", "objednavk", "jiri.maly1", "hana.kolarova2"))
    subject, body, report = text.bounce(host, f"{typo}@bohemia-logistics.cz", when[0])
    content = Content((("From", f"Mail Delivery System <MAILER-DAEMON@{host}>"), ("To", rcpt[0].header),
                       ("Subject", subject), ("Auto-Submitted", "auto-replied")), body, report=report)
    yield _draft("bounce", Category.HAM, when, Route("", host, ip, host), rcpt, content, (), _msgid(rng, host))


# ---------------------------------------------------------------- spam, phishing, malware

def spam(ctx: Ctx, rng: random.Random, day: date) -> Iterator[Draft]:
    for _ in range(count(rng, 0.9 * len(ctx.mailboxes))):
        rcpts = ctx.pick(rng, 1 + (rng.random() < 0.25))
        when = _when(rng, day, office=False)
        bot = text.spam_sender(rng)
        subject, body, html = text.spam(rng, bot.domain)
        content = Content((("From", bot.header_from), *_to(rcpts), ("Subject", subject)), body, html)
        signers = ((bot.domain, "default"),) if bot.signs else ()
        yield _draft("spam", Category.SPAM, when, bot.route, rcpts, content, signers, _msgid(rng, bot.domain))


def spam_via_ses(ctx: Ctx, rng: random.Random, day: date) -> Iterator[Draft]:
    """Spam from an abused SES account: only amazonses.com signs, the From is the spammer's."""
    for _ in range(count(rng, 0.05 * len(ctx.mailboxes))):
        rcpt = ctx.pick(rng)
        when = _when(rng, day, office=False)
        route = ses_route(rng, when=when[0])
        bot = text.spam_sender(rng)
        subject, body, html = text.spam(rng, bot.domain)
        content = Content((("From", bot.header_from), ("To", rcpt[0].header), ("Subject", subject)), body, html)
        yield _draft("spam_via_ses", Category.SPAM, when, route, rcpt, content,
                     (("amazonses.com", SES_SELECTOR),),
                     f"<{route.envelope_from.partition('@')[0]}@email.amazonses.com>")


def ceo_fraud(ctx: Ctx, rng: random.Random, day: date) -> Iterator[Draft]:
    """CEO fraud in its two common shapes, alternating by day:

    the CEO's own address in From with the attacker's envelope and Reply-To (nothing aligns,
    strict calls it a forgery), or only her display name on a freemail account whose SPF,
    DKIM and DMARC all pass (no From-policy catches that; only the content does).
    """
    if not is_workday(day) or rng.random() > 0.35:
        return
    rcpt = [ctx.finance] if rng.random() < 0.75 else [rng.choice(ctx.by_role("sales", "HR"))]
    when = _when(rng, day)
    subject, body = text.ceo_fraud(rng, ctx.ceo.user, rcpt[0].user)
    ceo = ctx.ceo.user
    if day.toordinal() % 3:
        ip = f"203.0.113.{80 + rng.randrange(8)}"
        route = Route(f"mailer{rng.randrange(10, 99)}@office-securemail.net",
                      f"vps{ip.rsplit('.', 1)[1]}.office-securemail.net", ip, None)
        headers = (("From", ctx.ceo.header), ("To", rcpt[0].header), ("Subject", subject),
                   ("Reply-To", f"{ceo.name} <{ceo.local}.ceo@freepost-mail.cz>"))
        signers: tuple[tuple[str, str], ...] = ()
    else:
        freemail = f"{ceo.local}.{rng.choice(('office', 'ceo', 'private'))}@freepost-mail.cz"
        ip = f"198.51.100.{130 + rng.randrange(8)}"
        route = Route(freemail, "smtp.freepost-mail.cz", ip, "smtp.freepost-mail.cz")
        headers = (("From", f"{ceo.name} <{freemail}>"), ("To", rcpt[0].header), ("Subject", subject))
        signers = (("freepost-mail.cz", "fp1"),)
    content = Content(headers, body)
    yield _draft("ceo_fraud", Category.PHISHING, when, route, rcpt, content, signers,
                 _msgid(rng, route.envelope_from.rpartition("@")[2]))


def ses_forged_brand(ctx: Ctx, rng: random.Random, day: date) -> Iterator[Draft]:
    """An attacker's SES account writes a brand's From: only amazonses.com signs, DMARC fails.

    someotpsite.cz publishes p=quarantine, so DMARC refuses the forgery in every From-policy;
    parcelzone.cz publishes p=none, so trusting the header From as written (`relaxed`) or a
    `via amazonses` pair delivers it to the user who allow-listed the brand. `aligned` does not.
    """
    if rng.random() > 0.3:
        return
    if day.toordinal() % 2:  # alternate the two brands so both appear in any month
        rcpt = [ctx.otp_user] if rng.random() < 0.7 else ctx.pick(rng)
        sender = f"<{OTP_FROM}>" if rcpt[0] == ctx.otp_user else "Someotpsite Security <security@someotpsite.cz>"
        subject, body, html = text.brand_phish(rng, "someotpsite-login.top")
    else:
        rcpt = [ctx.parcel_user]
        sender = f"ParcelZone <{PARCEL_FROM}>"
        subject, body, html = text.parcel_phish(rng, "parcelzone-cz.delivery")
    when = _when(rng, day, office=False)
    route = ses_route(rng, when=when[0])
    content = Content((("From", sender), ("To", f"<{rcpt[0].address}>"), ("Subject", subject)), body, html)
    yield _draft("ses_forged_brand", Category.PHISHING, when, route, rcpt, content,
                 (("amazonses.com", SES_SELECTOR),),
                 f"<{route.envelope_from.partition('@')[0]}@email.amazonses.com>")


def lookalike_brand(ctx: Ctx, rng: random.Random, day: date) -> Iterator[Draft]:
    """A look-alike domain with SPF, DKIM and DMARC all passing: authentication is not trust."""
    if rng.random() > 0.15:
        return
    rcpt = [ctx.otp_user] if rng.random() < 0.5 else ctx.pick(rng)
    when = _when(rng, day, office=False)
    route = Route("alerts@someotpsite-security.cz", "mail.someotpsite-security.cz", "203.0.113.66", "mail.someotpsite-security.cz")
    subject, body, html = text.brand_phish(rng, "someotpsite-security.cz")
    content = Content((("From", "Someotpsite <alerts@someotpsite-security.cz>"), ("To", rcpt[0].header),
                       ("Subject", subject)), body, html)
    yield _draft("lookalike_brand", Category.PHISHING, when, route, rcpt, content,
                 (("someotpsite-security.cz", "default"),), _msgid(rng, "someotpsite-security.cz"))


def lookalike_tenant(ctx: Ctx, rng: random.Random, day: date) -> Iterator[Draft]:
    """Invoice fraud from n0rthwind-traders.cz (zero for o): SPF passes for the look-alike."""
    if not is_workday(day) or rng.random() > 0.18:
        return
    rcpt = [ctx.finance]
    when = _when(rng, day)
    addr = f"{ctx.ceo.user.local}@n0rthwind-traders.cz"
    route = Route(addr, "mail.n0rthwind-traders.cz", "203.0.113.70", None)
    subject, body = text.invoice_fraud(rng, ctx.ceo.user, rcpt[0].user)
    content = Content((("From", f"{ctx.ceo.user.name} <{addr}>"), ("To", rcpt[0].header), ("Subject", subject)), body)
    yield _draft("lookalike_tenant", Category.PHISHING, when, route, rcpt, content, (), _msgid(rng, "n0rthwind-traders.cz"))


def credential_phish(ctx: Ctx, rng: random.Random, day: date) -> Iterator[Draft]:
    for _ in range(count(rng, 0.07 * len(ctx.mailboxes))):
        rcpt = ctx.pick(rng)
        when = _when(rng, day, office=False)
        bot = text.spam_sender(rng)
        subject, body, html = text.credential_phish(rng, rcpt[0].address, bot.domain)
        content = Content((("From", f"IT podpora {TENANT_DOMAIN} <{bot.route.envelope_from}>"),
                           ("To", rcpt[0].header), ("Subject", subject)), body, html)
        yield _draft("credential_phish", Category.PHISHING, when, bot.route, rcpt, content, (), _msgid(rng, bot.domain))


def malware(ctx: Ctx, rng: random.Random, day: date) -> Iterator[Draft]:
    """A spoofed partner 'invoice' with a zipped script (an inert placeholder, not real malware)."""
    if rng.random() > 0.3:
        return
    rcpt = [ctx.finance] if rng.random() < 0.5 else ctx.pick(rng)
    when = _when(rng, day, office=False)
    number = rng.randrange(1000, 9999)
    name = f"Faktura_{day:%Y}_{number}"
    payload = text.inert_script(name)
    att = Attachment(f"{name}.zip", "application", "zip", zip_bytes(f"{name}.js", payload, when[0]))
    ip = f"192.0.2.{rng.randrange(1, 255)}"
    spoofed = "ucetni@bohemia-logistics.cz"
    route = Route(spoofed, f"[{ip}]", ip, None)
    content = Content((("From", f"Účtárna Bohemia Logistics <{spoofed}>"), ("To", rcpt[0].header),
                       ("Subject", f"Faktura {day:%Y}-{number} k úhradě")), text.malware_body(number), None, att)
    yield _draft("malware", Category.MALWARE, when, route, rcpt, content, (), _msgid(rng, "bohemia-logistics.cz"))


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("colleague", Category.HAM, "colleagues writing to each other through the tenant's outbound relay", colleagues),
    Scenario("partner", Category.HAM, "business partners' own mail servers (one without DKIM, one over IPv6)", partners),
    Scenario("mailing_list", Category.HAM, "a Mailman list; From munged only for posters with strict DMARC", mailing_list),
    Scenario("ses_otp", Category.HAM, f"{OTP_FROM} OTP codes via Amazon SES to the IT admin, who allow-listed the sender", ses_otp),
    Scenario("ses_parcel", Category.HAM, "parcel notifications via Amazon SES eu-central-1, signed by the brand", ses_parcel),
    Scenario("ses_invoice", Category.HAM, "invoices via Amazon SES with a custom MAIL FROM (bounce.invoicely.cz)", ses_invoice),
    Scenario("newsletter", Category.HAM, "Mailchimp newsletters, brand- and mcsv.net-signed (one brand unsigned)", newsletters),
    Scenario("hr_saas", Category.HAM, "an HR SaaS sending as hr@ the tenant with a delegated DKIM key", hr_saas),
    Scenario("bounce", Category.HAM, "a partner MTA's bounces: null envelope sender <>, SPF and DMARC on the HELO name", bounce),
    Scenario("spam", Category.SPAM, "botnet and snowshoe spam, some with SPF/DKIM passing for throwaway domains", spam),
    Scenario("spam_via_ses", Category.SPAM, "spam through an abused Amazon SES account", spam_via_ses),
    Scenario("ceo_fraud", Category.PHISHING, "CEO fraud: the CEO's address with an unaligned envelope, or her name on a passing freemail account", ceo_fraud),
    Scenario("ses_forged_brand", Category.PHISHING, "someotpsite.cz and parcelzone.cz forged via an attacker's SES account (DKIM only amazonses.com)", ses_forged_brand),
    Scenario("lookalike_brand", Category.PHISHING, "someotpsite-security.cz look-alike with passing SPF/DKIM/DMARC", lookalike_brand),
    Scenario("lookalike_tenant", Category.PHISHING, "invoice fraud from n0rthwind-traders.cz", lookalike_tenant),
    Scenario("credential_phish", Category.PHISHING, "mailbox-quota credential phishing from throwaway domains", credential_phish),
    Scenario("malware", Category.MALWARE, "spoofed partner invoices with a zipped script (inert placeholder)", malware),
)


def drafts(ctx: Ctx, seed: int, start: date, days: int) -> list[Draft]:
    """All drafts of the month, ordered by time (ties by scenario order)."""
    out: list[tuple[datetime, int, int, Draft]] = []
    for si, sc in enumerate(SCENARIOS):
        rng = random.Random(f"{seed}:{sc.name}")
        n = 0
        for offset in range(days):
            for d in sc.generate(ctx, rng, start + timedelta(days=offset)):
                out.append((d.sent, si, n, d))
                n += 1
    out.sort(key=lambda x: x[:3])
    return [x[3] for x in out]
