"""The base handler every edrules page and POST endpoint derives from, and the handler registry.

`BaseHandler` gives a handler the signed-in `Principal`, the session, and two anti-forgery
checks on every state-changing request: tornado's `_xsrf` double-submit cookie (Jupyter Server
enforces it on every non-GET request) and, when a session cookie comes with the request, the
session-bound `csrf` form field (or `X-CSRF-Token` header). A GET never changes state.

Adding pages (for the dashboards helper): subclass `BaseHandler` and either call
`register_handlers([(r"/quarantine/release", ReleaseHandler)])` at import time of a module named
`edrules/server/pages_*.py` (every such module is imported when the server starts), or expose
`HANDLERS = [...]` in that module. Patterns are relative to the server's base URL.

    class ReleaseHandler(BaseHandler):
        @authenticated                      # anonymous -> 302 to /login?next=...
        def post(self):
            item = store.get(self.get_body_argument("item"))
            if item is None or not can_access(self.principal, item.recipient):
                raise HTTPError(404)        # never say "exists but not yours"
            ...
"""

from __future__ import annotations

import functools
import hmac
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlparse

from jupyter_server.base.handlers import JupyterHandler
from tornado import web

from edrules.server import pages
from edrules.server.accounts import Account, Accounts, Session
from edrules.server.principal import Principal

SESSION_COOKIE = "edrules_session"

_REGISTERED: list[tuple[str, type]] = []


def register_handlers(handlers: list[tuple[str, type]]) -> None:
    """Mount extra handlers (pattern relative to the base URL, handler class) when the server starts."""
    _REGISTERED.extend(handlers)


def registered_handlers() -> list[tuple[str, type]]:
    return list(_REGISTERED)


@dataclass(frozen=True)
class OidcProvider:
    name: str           # in URLs: /login/oidc/<name>
    label: str          # on the button: "Sign in with <label>"
    issuer: str
    client_id: str
    client_secret: str = ""


@dataclass(frozen=True)
class ServerContext:
    """What the handlers share: the account store and the server's settings."""

    accounts: Accounts
    state_dir: Path
    dashboards: Path
    db: Path | None = None
    smtp: tuple[str, int] | None = None
    mail_from: str = "edrules@localhost"
    public_url: str | None = None
    oidc: tuple[OidcProvider, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # for pages added by other modules

    def provider(self, name: str) -> OidcProvider | None:
        return next((p for p in self.oidc if p.name == name), None)

    def quarantine(self):
        """The gateway's quarantine store in this state directory (edrules.runtime.store), opened once."""
        if "quarantine" not in self.extra:
            from edrules.runtime.store import open_store

            self.extra["quarantine"] = open_store(self.state_dir)
        return self.extra["quarantine"]


def authenticated(method: Callable) -> Callable:
    """Like tornado's, but a pending login (TOTP still due) counts as signed out."""

    @functools.wraps(method)
    def wrapper(self: "BaseHandler", *args, **kwargs):
        if self.principal is None:
            if self.request.method in ("GET", "HEAD"):
                self.redirect(self.login_url_for(self.request.uri))
                return None
            raise web.HTTPError(403)
        return method(self, *args, **kwargs)

    return wrapper


class BaseHandler(JupyterHandler):
    """Session, Principal and CSRF for edrules pages; see the module docstring."""

    @property
    def ctx(self) -> ServerContext:
        return self.settings["edrules"]

    @property
    def accounts(self) -> Accounts:
        return self.ctx.accounts

    @property
    def edrules_session(self) -> Session | None:
        if not hasattr(self, "_edrules_session"):
            self._edrules_session = self.accounts.session(self.get_cookie(SESSION_COOKIE))
        return self._edrules_session

    @property
    def principal(self) -> Principal | None:
        """The signed-in Principal, or None (also while a login is half done)."""
        s = self.edrules_session
        if s is None or s.stage != "ok":
            return None
        acc = self.account
        return acc.principal if acc else None

    @property
    def account(self) -> Account | None:
        s = self.edrules_session
        if s is None:
            return None
        if not hasattr(self, "_edrules_account"):
            self._edrules_account = self.accounts.get(s.address)
        return self._edrules_account

    @property
    def client_ip(self) -> str:
        return self.request.remote_ip or ""

    @property
    def base(self) -> str:
        return self.base_url if self.base_url.endswith("/") else self.base_url + "/"

    def login_url_for(self, next_url: str | None) -> str:
        return f"{self.base}login" + (f"?next={quote(safe_next(next_url, self.base), safe='')}" if next_url else "")

    async def prepare(self) -> None:
        await super().prepare()  # Jupyter: current user, then the _xsrf check on non-GET requests
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("X-Content-Type-Options", "nosniff")
        if self.request.method not in ("GET", "HEAD", "OPTIONS"):
            self.check_session_csrf()

    def check_session_csrf(self) -> None:
        s = self.edrules_session
        if s is None:
            return  # no session to ride on; tornado's _xsrf check still applied
        sent = self.get_body_argument("csrf", None) or self.request.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(sent.encode(), s.csrf.encode()):
            self.accounts.audit(s.address, "csrf.refused", s.address, self.request.path, self.client_ip)
            raise web.HTTPError(403, "CSRF token missing or wrong")

    def forms(self) -> str:
        """The hidden anti-forgery fields for a <form method=post>."""
        s = self.edrules_session
        return pages.hidden(s.csrf if s else "", self.xsrf_token.decode())

    def page(self, title: str, body: str, status: int = 200) -> None:
        self.set_status(status)
        p = self.principal
        s = self.edrules_session
        self.finish(pages.layout(title, body, who=p.address if p else None, csrf=s.csrf if s else "",
                                 xsrf=self.xsrf_token.decode(), base=self.base))

    def set_session_cookie(self, sid: str, lifetime: float) -> None:
        # Secure + HttpOnly + SameSite=Lax: never sent to script, never over plain HTTP off-loopback,
        # not sent on cross-site POSTs. Lax (not Strict) so the first page after an OIDC
        # redirect still carries it; the csrf field protects every POST anyway.
        self.set_cookie(SESSION_COOKIE, sid, path=self.base, httponly=True, secure=True, samesite="Lax",
                        expires=time.time() + lifetime)

    def clear_session_cookie(self) -> None:
        self.clear_cookie(SESSION_COOKIE, path=self.base, httponly=True, secure=True, samesite="Lax")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = {403: "You may not do that.", 404: "There is nothing here.",
                  405: "That method is not allowed here."}.get(status_code, "Something went wrong.")
        self.page(f"{status_code}", f'<div class="card narrow"><h1>{status_code}</h1><p>{pages.e(reason)}</p>'
                  f'<p><a href="{pages.e(self.base)}">Back to the dashboards</a></p></div>', status=status_code)


def safe_next(url: str | None, base: str = "/") -> str:
    """A same-site path to go to after login; anything else (another host, //evil) becomes the home page."""
    home = base + "home"
    if not url:
        return home
    p = urlparse(url)
    if p.scheme or p.netloc or not url.startswith("/") or url.startswith("//") or "\\" in url:
        return home
    url = url.rstrip("?")
    return home if url in (base, base.rstrip("/")) else url
