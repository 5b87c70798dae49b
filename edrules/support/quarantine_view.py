"""Quarantine report logic: what a principal may see, one page of it, a message's detail, and the actions.

Every read and every action passes through `can_access` (edrules.server, the one
authorisation predicate) and the release rules here; release, trust and delete are the gateway
runtime's own functions (edrules.runtime.release / overrides / store), never a copy of them.
An item the principal may not see reads exactly like an item that does not exist, so ids
cannot be probed.
"""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from edrules.errors import EdrulesError, Location

if TYPE_CHECKING:
    from edrules.support.site import Site

ORDERS = {  # label -> edrules.runtime.store order key
    "newest first": "-quarantined_at", "oldest first": "quarantined_at",
    "message date, newest": "-date", "message date, oldest": "date",
    "recipient A-Z": "recipient", "largest first": "-size", "smallest first": "size",
}
PAGE_SIZES = (10, 25, 50, 100)
STATES = ("quarantined", "released", "deleted")
ADMIN_ROLES = ("domain_admin", "provider")


class NotAllowed(EdrulesError):
    """The principal may not see or act on this item (worded like 'no such item' on purpose)."""


def _access() -> Callable[[Any, str], bool]:
    from edrules.server import can_access  # h-web's one predicate

    return can_access


def scope_of(principal: Any) -> dict[str, Any]:
    """Store filters that already narrow the list to what the principal may see; can_access is
    still applied to every row (defence in depth, and the one truth)."""
    role = getattr(principal, "role", "user")
    if role == "user":
        return {"recipients": [principal.address]}
    if role == "domain_admin":
        return {"domains": list(principal.domains)}
    return {"domains": list(principal.domains)} if getattr(principal, "domains", None) else {}


@dataclass(frozen=True, slots=True)
class Query:
    state: str | None = "quarantined"
    category: str | None = None
    search: str | None = None
    order: str = "newest first"
    page: int = 1
    page_size: int = 25
    recipient: str | None = None  # admins: one mailbox of their domain

    def validate(self) -> "Query":
        if self.order not in ORDERS:
            raise EdrulesError(f"unknown order {self.order!r}", Location(field="order"))
        if self.state is not None and self.state not in STATES:
            raise EdrulesError(f"unknown state {self.state!r}", Location(field="state"))
        if self.page_size not in PAGE_SIZES:
            raise EdrulesError(f"page size must be one of {PAGE_SIZES}", Location(field="page_size"))
        return replace(self, page=max(1, int(self.page)), search=(self.search or "").strip()[:200] or None)


@dataclass(frozen=True, slots=True)
class Page:
    items: tuple[Any, ...]
    total: int
    page: int
    pages: int
    query: Query


def list_page(store: Any, principal: Any, query: Query, *, access: Callable | None = None) -> Page:
    q = query.validate()
    can = access or _access()
    scope = scope_of(principal)
    if q.recipient:
        if not can(principal, q.recipient):
            return Page((), 0, 1, 1, q)
        scope = {"recipients": [q.recipient.lower()]}
    filters = dict(scope, state=q.state, category=q.category, search=q.search)
    total = store.count(**filters)
    pages = max(1, -(-total // q.page_size))
    page = min(q.page, pages)
    items = store.list(**filters, order=ORDERS[q.order], limit=q.page_size, offset=(page - 1) * q.page_size)
    return Page(tuple(i for i in items if can(principal, i.recipient)), total, page, pages, replace(q, page=page))


def get_item(store: Any, principal: Any, item_id: str, *, access: Callable | None = None) -> Any:
    item = store.get(item_id)
    if item is None or not (access or _access())(principal, item.recipient):
        raise NotAllowed(f"no quarantined message {item_id!r} for {getattr(principal, 'address', '?')}")
    return item


def release_refusal(principal: Any, item: Any) -> str | None:
    """Why this principal may not release this (already visible) item, or None."""
    if item.state == "deleted":
        return "this message was deleted"
    if item.state == "released":
        return "this message was already released"
    if item.category == "malware" and getattr(principal, "role", "user") not in ADMIN_ROLES:
        return "malware is never self-released: ask your domain admin or service provider"
    return None


def trust_refusal(principal: Any, item: Any) -> str | None:
    if item.category == "malware":
        return "a sender of malware cannot be trusted from the quarantine"
    return None


@dataclass(frozen=True, slots=True)
class Outcome:
    item_id: str
    ok: bool
    message: str


def release_one(site: "Site", store: Any, principal: Any, item_id: str, *, how: str,
                access: Callable | None = None) -> Outcome:
    """Release through the gateway runtime (SMTP re-injection, exactly once)."""
    from edrules.runtime.release import release

    try:
        item = get_item(store, principal, item_id, access=access)
    except NotAllowed as exc:
        return Outcome(item_id, False, str(exc))
    refusal = release_refusal(principal, item)
    if refusal:
        return Outcome(item_id, False, refusal)
    out = release(store, item_id, next_hop=site.next_hop, actor=principal.address, how=how, key=site.release_key())
    if out.ok:
        return Outcome(item_id, True, f"released to {item.recipient}")
    return Outcome(item_id, False, out.status + (f": {out.detail}" if out.detail else ""))


def trust_one(site: "Site", store: Any, principal: Any, item_id: str, *, how: str,
              access: Callable | None = None) -> Outcome:
    """Add the narrowest safe entry (edrules.runtime.overrides) and audit it."""
    try:
        item = get_item(store, principal, item_id, access=access)
    except NotAllowed as exc:
        return Outcome(item_id, False, str(exc))
    refusal = trust_refusal(principal, item)
    if refusal:
        return Outcome(item_id, False, refusal)
    try:
        choice = site.overrides().trust(item, principal.address)
    except EdrulesError as exc:  # nothing authenticated: a bare From is never trusted
        return Outcome(item_id, False, str(exc))
    text = f"allow sender {choice.sender} via {choice.via} [{choice.scope}] ({choice.why})"
    store.audit(principal.address, "trusted", how, item_id=item_id, detail=text)
    return Outcome(item_id, True, ("trusted: " if choice.created else "already trusted: ") + text)


def delete_one(store: Any, principal: Any, item_id: str, *, how: str, access: Callable | None = None) -> Outcome:
    try:
        item = get_item(store, principal, item_id, access=access)
    except NotAllowed as exc:
        return Outcome(item_id, False, str(exc))
    if item.state == "deleted":
        return Outcome(item_id, False, "already deleted")
    store.delete(item_id, principal.address, how)
    return Outcome(item_id, True, "deleted")


def bulk(site: "Site", store: Any, principal: Any, action: str, item_ids: Iterable[str], *, how: str,
         access: Callable | None = None) -> list[Outcome]:
    """One outcome per id; a refused item never stops the others."""
    fn = {"release": lambda i: release_one(site, store, principal, i, how=how, access=access),
          "trust": lambda i: trust_one(site, store, principal, i, how=how, access=access),
          "delete": lambda i: delete_one(store, principal, i, how=how, access=access)}.get(action)
    if fn is None:
        raise EdrulesError(f"unknown bulk action {action!r}", Location(field="action"))
    return [fn(i) for i in dict.fromkeys(item_ids)]


@dataclass(frozen=True, slots=True)
class TrustPreview:
    """What Trust sender would add, before it is added, in the words the page shows."""

    sender: str
    via: str
    scope: str
    why: str
    lets_through: str
    still_checked: str


def trust_preview(site: "Site", item: Any) -> TrustPreview:
    """The entry Overrides.trust would write (the runtime's own choose_via), described."""
    from edrules.runtime.overrides import choose_via

    sender = (item.header_from or "").strip().lower()
    if not sender or "@" not in sender:
        raise EdrulesError(f"cannot trust the sender of {item.id}: the message has no usable From address")
    via, why = choose_via(item, site.overrides().catalog)
    network = f"the {via} network" if "." not in via and "/" not in via else via
    lets = (f"Mail to {item.recipient} whose From is {sender} and that authenticates through {network} "
            f"(SPF or DKIM pass for it, checked on every message) is delivered, even when the From-policy "
            f"would call it a forgery or the scanner calls it spam or phishing.")
    still = (f"Mail that only claims to be from {sender} but comes from anywhere else is checked exactly as "
             f"before; other recipients are not affected; malware and block entries still win.")
    return TrustPreview(sender, via, f"user:{item.recipient}", why, lets, still)


# -- detail ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Detail:
    item: Any
    headers: list[tuple[str, str]]
    body_preview: str
    verdict: Any  # edrules.facts.Verdict under the domain's current pack (re-evaluated)
    current_pack: str
    facts: Any = field(repr=False, default=None)
    plain: str = ""


def _headers_and_preview(raw: bytes, limit: int = 1200) -> tuple[list[tuple[str, str]], str]:
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    headers = [(k, str(v)) for k, v in msg.items()]
    preview = ""
    try:
        for part in msg.walk():
            if part.get_content_maintype() == "text" and not part.is_multipart():
                payload = part.get_payload(decode=True) or b""
                preview = payload.decode(part.get_content_charset() or "utf-8", errors="replace")[:limit]
                break
    except Exception:  # a broken MIME body must not hide the headers
        preview = "(the body could not be decoded)"
    return headers, preview


def detail(site: "Site", store: Any, principal: Any, item_id: str, *, access: Callable | None = None,
           now: datetime | None = None) -> Detail:
    """Headers, a text preview, the stored reason, and the verdict + trace re-evaluated under
    the domain's current pack with the envelope the gateway recorded."""
    from edrules.ingest import TrustConfig, facts_from_bytes
    from edrules.backends.explain import explain_facts
    from edrules.support.analyzer import plain_english

    item = get_item(store, principal, item_id, access=access)
    raw = store.raw(item_id)
    headers, preview = _headers_and_preview(raw)
    domain = item.recipient.rpartition("@")[2]
    cfg = site.config(domain)
    policy = site.current_policy(domain)
    try:
        policy = site.overrides().merged(policy)
    except Exception:  # overrides are optional for the detail view; the verdict then says so
        pass
    trust = TrustConfig(authserv_ids=frozenset(cfg.trusted_authserv), relays=cfg.trusted_relays, auto_detect=False)
    ex = facts_from_bytes(raw, source=item_id, trust=trust, envelope_from=item.envelope_from,
                          recipients=[item.recipient], client_ip=item.client_ip, helo=item.helo)
    expl = explain_facts(ex.facts, policy, now=now)
    verdict = expl.verdicts[0] if expl.verdicts else None
    plain = plain_english(ex.facts, verdict, policy, expl.hint, {}) if verdict else ""
    return Detail(item, headers, preview, verdict, policy.name, ex.facts, plain)


def visible_domains(principal: Any, site: "Site") -> list[str]:
    """Domains whose pages (analyzer, wizard, traffic) the principal may open."""
    role = getattr(principal, "role", "user")
    if role == "provider":
        return sorted(set(getattr(principal, "domains", ()) or ()) | set(site.domains)) if not getattr(principal, "domains", None) else sorted(principal.domains)
    if role == "domain_admin":
        return sorted(principal.domains)
    return [principal.address.rpartition("@")[2]]


def admin_domains(principal: Any, site: "Site") -> list[str]:
    """Domains whose policy the principal may change (the wizard): admins and providers only."""
    if getattr(principal, "role", "user") not in ADMIN_ROLES:
        return []
    return visible_domains(principal, site)


def short(text: str | None, n: int = 60) -> str:
    text = text or ""
    return text if len(text) <= n else text[: n - 1] + "…"


def summarize(items: Sequence[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i.category] = out.get(i.category, 0) + 1
    return out


def trust_blast_radius(site: "Site", item: Any, preview: TrustPreview) -> dict[str, Any] | None:
    """What the previewed entry would have delivered on the domain's history (the workbench's
    what-if of the current pack plus that one entry), or None without a history dataset."""
    from edrules.rules.parse import parse_rules

    cfg = site.config(item.recipient_domain)
    if site.dataset_db is None or not cfg.dataset or not site.dataset_db.exists():
        return None
    from edrules.workbench import Workbench

    current = site.current_policy(item.recipient_domain)
    text = (f"name: preview\nallow:\n  - id: trust-preview\n    sender: {preview.sender}\n"
            f"    via: {preview.via}\n    scope: {preview.scope}\n")
    extra = parse_rules(text, source="trust preview")
    candidate = replace(current, allow=current.allow + extra.allow, providers={**current.providers, **extra.providers})
    with Workbench(site.dataset_db, dataset=cfg.dataset) as wb:
        c = wb.whatif(current, candidate).counts()
    return {"newly_delivered": c["newly_delivered"], "forged": c["newly_delivered_forged"],
            "by_label": c["newly_delivered_by_label"], "dataset": cfg.dataset}
