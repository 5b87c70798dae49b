"""Quick Release / Secure Release and Trust-sender confirmation pages for the links in digests.

GET shows what the link would do and a form; only the POST from that form acts, so a link
scanner, a preview bot or a crawler that fetches the link releases nothing. The token is
checked on both (signature, expiry, purpose, not yet used), consumed atomically on the POST
(single use), and bound to one item and its recipient. Under the domain's Secure Release
policy the POST also needs a signed-in principal (the login finishes only after TOTP where the
account enrolled it) who may access that recipient. Release and trust are the gateway
runtime's own functions (edrules.runtime.release / overrides); nothing here re-implements them.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated

from edrules.errors import EdrulesError
from edrules.server.handlers import BaseHandler
from edrules.server.pages import e
from edrules.server.principal import can_access

# The paths the digest links point at (edrules.runtime.digest.RELEASE_PATH / TRUST_PATH).
RELEASE_PATH = "/quarantine/release"
TRUST_PATH = "/quarantine/trust"
START_PATH = "/support"

_REFUSED = {
    "expired": ("This link has expired",
                "Release links are valid for a limited time. Open your quarantine report to release the message, "
                "or wait for the next digest."),
    "used": ("This link was already used",
             "Each link works once. If you released the message it is on its way; otherwise open your quarantine report."),
    "altered": ("This link is not valid",
                "The link was changed or cut off (some mail programs break long links). Copy the whole link from "
                "the digest, or open your quarantine report."),
    "wrong purpose": ("This link is not valid here", "The link belongs to another action."),
}


class _TokenPage(BaseHandler):
    purpose = "release"
    path = RELEASE_PATH

    # -- shared ------------------------------------------------------------------------------

    @property
    def site(self):
        from edrules.support.site import load_site

        if not hasattr(self, "_site"):
            self._site = load_site(self.ctx.state_dir)
        return self._site

    def refused(self, reason: str, status: int = 400) -> None:
        title, text = _REFUSED.get(reason, ("This link cannot be used", reason))
        self.page(title, f'<div class="card narrow edr-refused" data-reason="{e(reason)}"><h1>{e(title)}</h1>'
                         f'<p>{e(text)}</p><p><a href="{e(self.base)}voila/render/quarantine.ipynb">Open the quarantine '
                         f'report</a></p></div>', status=status)

    def claims_and_item(self, token: str):
        """(claims, item) or None after rendering the refusal page."""
        from edrules.runtime.tokens import TokenError, check_token

        if not token:
            # No link at all: this is not a Quick Release, just a page that needs a sign-in.
            if self.request.method == "GET":
                self.redirect(self.login_url_for(f"{self.base}voila/render/quarantine.ipynb"))
            else:
                self.refused("altered", 403)
            return None
        store = self.site.store()
        try:
            claims = check_token(self.site.release_key(), token, self.purpose, store=store)
        except TokenError as exc:
            self.refused(exc.reason, 410 if exc.reason in ("expired", "used") else 400)
            return None
        item = store.get(claims.item_id)
        if item is None or item.recipient != claims.recipient:
            self.refused("altered")
            return None
        return claims, item, store

    def opened(self):
        """(token, claims, item, store) of this request's link when the page may go on: a valid
        token for an item that exists, past the Secure Release gate; None after rendering why not."""
        token = self.token_arg()
        got = self.claims_and_item(token)
        if got is None or not self.gate(got[1]):
            return None
        return (token, *got)

    def used_up(self, store, claims) -> bool:
        """Spend the link (single use, atomic: a second POST of the same link stops here)."""
        from edrules.runtime.tokens import TokenError, consume

        try:
            consume(store, claims)
        except TokenError as exc:
            self.refused(exc.reason, 410)
            return False
        return True

    def secure(self, item: Any) -> bool:
        """Secure Release is on for the recipient's domain: the domain's sign-in policy
        (edrules.server.accounts) or the site's support.yaml says so."""
        return bool(self.accounts.policy(item.recipient_domain).secure_release
                    or self.site.config(item.recipient_domain).secure_release)

    def secure_refusal(self, item: Any) -> str | None:
        """Under Secure Release: None when the signed-in principal may act, else why not."""
        if not self.secure(item):
            return None
        p = self.principal
        if p is None:
            return "login"
        if not can_access(p, item.recipient):
            return "forbidden"
        return None

    def summary(self, item: Any) -> str:
        rows = [("To", item.recipient), ("From", item.header_from or item.envelope_from or "-"),
                ("Subject", item.subject or "(no subject)"), ("Date", item.date or item.quarantined_at),
                ("Held because", f"{item.category}: {item.reason}")]
        return ("<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows) + "</table>")

    def form(self, token: str, button: str, extra: str = "") -> str:
        return (f'<form method="post" action="{e(self.base.rstrip("/") + self.path)}">{self.forms()}'
                f'<input type="hidden" name="token" value="{e(token)}">{extra}'
                f'<button type="submit" class="edr-confirm">{e(button)}</button></form>')

    def token_arg(self) -> str:
        return (self.get_body_argument("token", None) if self.request.method == "POST"
                else self.get_query_argument("token", None)) or ""

    def gate(self, item: Any) -> bool:
        """Secure Release gate; True when the page may go on (renders the refusal otherwise)."""
        why = self.secure_refusal(item)
        if why == "login":
            if self.request.method == "GET":
                self.redirect(self.login_url_for(self.request.uri))
            else:
                self.page("Sign in first", '<div class="card narrow edr-refused" data-reason="login"><h1>Sign in first</h1>'
                          '<p>Your domain uses Secure Release: sign in (with your second factor where enrolled), '
                          'then open the link again.</p></div>', status=403)
            return False
        if why == "forbidden":
            self.page("Not your message", '<div class="card narrow edr-refused" data-reason="forbidden"><h1>Not your '
                      'message</h1><p>This link is for another mailbox than the one you are signed in with.</p></div>',
                      status=403)
            return False
        return True

    def how(self, item: Any) -> str:
        return ("secure-" if self.secure(item) else "quick-") + self.purpose

    def actor(self, item: Any) -> str:
        p = self.principal
        return p.address if p is not None else f"link:{item.recipient}"


class ReleasePage(_TokenPage):
    purpose = "release"
    path = RELEASE_PATH

    @allow_unauthenticated  # the token is the credential; Secure Release checks the session itself
    def get(self) -> None:
        opened = self.opened()
        if opened is None:
            return
        token, claims, item, _store = opened
        if item.state != "quarantined":
            self.page("Already done", f'<div class="card narrow edr-done"><h1>Nothing to release</h1><p>This message was '
                      f'{e(item.state)}.</p></div>', status=409)
            return
        if item.category == "malware":
            self.page("Malware is not self-released", '<div class="card narrow edr-refused" data-reason="malware"><h1>'
                      'This message contains malware</h1><p>Only your domain admin or service provider can release '
                      'it.</p></div>', status=403)
            return
        self.page("Release this message?", f'<div class="card narrow edr-confirm-page"><h1>Release this message?</h1>'
                  f'{self.summary(item)}<p class="muted">Releasing delivers it to your inbox once. Only release mail you '
                  f'expected: the gateway held it for a reason.</p>{self.form(token, "Release this message")}</div>')

    @allow_unauthenticated
    def post(self) -> None:
        from edrules.runtime.release import release

        opened = self.opened()
        if opened is None:
            return
        token, claims, item, store = opened
        if item.category == "malware":
            self.refused("malware is never self-released: ask your domain admin or service provider", 403)
            return
        if not self.used_up(store, claims):
            return
        out = release(store, item.id, next_hop=self.site.next_hop, actor=self.actor(item), how=self.how(item),
                      key=self.site.release_key())
        if out.ok:
            self.page("Released", f'<div class="card narrow edr-released"><h1>Released</h1><p class="notice">The message '
                      f'is on its way to {e(item.recipient)}.</p>{self.summary(item)}</div>')
        else:
            self.page("Not released", f'<div class="card narrow edr-refused" data-reason="{e(out.status)}"><h1>Not '
                      f'released</h1><p>{e(out.status)}{": " + e(out.detail) if out.detail else ""}</p></div>',
                      status=409 if out.status != "failed" else 502)


class TrustPage(_TokenPage):
    purpose = "trust"
    path = TRUST_PATH

    def preview(self, item: Any):
        from edrules.support.quarantine_view import trust_preview

        return trust_preview(self.site, item)

    @allow_unauthenticated  # the token is the credential; Secure Release checks the session itself
    def get(self) -> None:
        opened = self.opened()
        if opened is None:
            return
        token, claims, item, _store = opened
        try:
            pv = self.preview(item)
        except EdrulesError as exc:
            self.page("Cannot trust this sender", f'<div class="card narrow edr-refused" data-reason="unauthenticated">'
                      f'<h1>Cannot trust this sender</h1><p>{e(exc)}</p></div>', status=409)
            return
        if item.category == "malware":
            self.refused("a sender of malware cannot be trusted from a link", 403)
            return
        self.page("Always trust this sender?", f'<div class="card narrow edr-confirm-page"><h1>Always trust this '
                  f'sender?</h1>{self.summary(item)}<h2>The entry</h2><p><code class="edr-entry">allow sender '
                  f'{e(pv.sender)} via {e(pv.via)} [{e(pv.scope)}]</code></p><p class="muted">{e(pv.why)}</p>'
                  f'<p class="edr-lets"><b>This lets through:</b> {e(pv.lets_through)}</p><p><b>Still checked:</b> '
                  f'{e(pv.still_checked)}</p>'
                  f'{self.form(token, "Trust this sender")}</div>')

    @allow_unauthenticated
    def post(self) -> None:
        opened = self.opened()
        if opened is None:
            return
        token, claims, item, store = opened
        if item.category == "malware":
            self.refused("a sender of malware cannot be trusted from a link", 403)
            return
        try:
            pv = self.preview(item)
        except EdrulesError as exc:
            self.refused(str(exc), 409)
            return
        if not self.used_up(store, claims):
            return
        choice = self.site.overrides().trust(item, self.actor(item))
        store.audit(self.actor(item), "trusted", self.how(item), item.id,
                    f"allow sender {choice.sender} via {choice.via} [{choice.scope}] ({choice.why})")
        self.page("Sender trusted", f'<div class="card narrow edr-trusted"><h1>Sender trusted</h1><p class="notice">'
                  f'{e(pv.sender)} via {e(pv.via)} is now trusted for {e(item.recipient)}.</p>'
                  f'<p>{e(pv.lets_through)}</p></div>')


class SupportStart(BaseHandler):
    """Where a sign-in lands: a domain admin whose domain has no policy yet goes to the wizard
    (its first login), everyone else to the quarantine report."""

    @allow_unauthenticated  # signed out: sent to the login, which comes back here
    def get(self) -> None:
        from edrules.support.quarantine_view import admin_domains
        from edrules.support.site import load_site
        from edrules.support.wizard import needs_wizard

        p = self.principal
        if p is None:
            self.redirect(self.login_url_for(self.request.uri))
            return
        site = load_site(self.ctx.state_dir)
        page = "quarantine"
        if any(needs_wizard(site, d) for d in admin_domains(p, site)):
            page = "wizard"
        self.redirect(f"{self.base}voila/render/{page}.ipynb")


HANDLERS = [(RELEASE_PATH, ReleasePage), (TRUST_PATH, TrustPage), (START_PATH, SupportStart)]
