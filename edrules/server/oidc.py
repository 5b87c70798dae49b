"""Sign-in with an OpenID Connect provider: authorization code + PKCE (S256) via authlib.

The account must already exist: the provider's *verified* e-mail links the provider's subject
to it on the first sign-in (later sign-ins go by (issuer, subject), so a changed e-mail at the
provider does not move the login to another account). State, nonce and the PKCE verifier live
in a signed, HttpOnly, 10-minute cookie, never in a URL.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import warnings

import httpx

with warnings.catch_warnings():  # authlib 1.7+ announces its 2.0 module moves; the 1.x API still works
    warnings.simplefilter("ignore")
    from authlib.integrations.httpx_client import AsyncOAuth2Client
    from authlib.jose import JsonWebKey, jwt
    from authlib.oidc.core import CodeIDToken
from jupyter_server.auth.decorator import allow_unauthenticated
from tornado import web

from edrules.server.handlers import OidcProvider
from edrules.server.login import LoginFlow, login_form
from edrules.server.pages import e, message

STATE_COOKIE = "edrules_oidc"
_DISCOVERY: dict[str, tuple[float, dict[str, Any]]] = {}


async def discover(issuer: str) -> dict[str, Any]:
    hit = _DISCOVERY.get(issuer)
    if hit and hit[0] > time.time():
        return hit[1]
    async with httpx.AsyncClient(timeout=10) as client:
        meta = (await client.get(issuer.rstrip("/") + "/.well-known/openid-configuration")).raise_for_status().json()
        meta["_jwks"] = (await client.get(meta["jwks_uri"])).raise_for_status().json()
    if meta.get("issuer", "").rstrip("/") != issuer.rstrip("/"):
        raise web.HTTPError(502, "OIDC discovery names another issuer")
    _DISCOVERY[issuer] = (time.time() + 300, meta)
    return meta


class OidcFlow(LoginFlow):
    def provider_or_404(self, name: str) -> OidcProvider:
        p = self.ctx.provider(name)
        if p is None:
            raise web.HTTPError(404)
        return p

    def redirect_uri(self, p: OidcProvider) -> str:
        root = (self.ctx.public_url or f"{self.request.protocol}://{self.request.host}{self.base}").rstrip("/")
        return f"{root}/login/oidc/{p.name}/callback"

    def client(self, p: OidcProvider) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(client_id=p.client_id, client_secret=p.client_secret or None,
                                 scope="openid email profile", redirect_uri=self.redirect_uri(p),
                                 code_challenge_method="S256", timeout=10)


class OidcStartHandler(OidcFlow):
    @allow_unauthenticated
    async def get(self, name: str) -> None:
        p = self.provider_or_404(name)
        meta = await discover(p.issuer)
        state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
        async with self.client(p) as client:
            url, _ = client.create_authorization_url(meta["authorization_endpoint"], state=state, nonce=nonce,
                                                     code_verifier=verifier)
        self.set_signed_cookie(STATE_COOKIE, json.dumps({"p": p.name, "s": state, "n": nonce, "v": verifier,
                                                         "next": self.next_url()}),
                               expires_days=None, max_age=600, path=self.base, httponly=True, secure=True,
                               samesite="Lax")
        self.redirect(url)


class OidcCallbackHandler(OidcFlow):
    """The provider sends the browser back here with ?code&state. A GET that signs in, as OIDC
    requires; state (bound to this browser's cookie), nonce and PKCE make it unforgeable."""

    def fail(self, why: str, status: int = 403) -> None:
        self.clear_cookie(STATE_COOKIE, path=self.base)
        self.page("Sign in", login_form(self, error=why), status=status)

    @allow_unauthenticated
    async def get(self, name: str) -> None:
        p = self.provider_or_404(name)
        raw = self.get_signed_cookie(STATE_COOKIE, max_age_days=1)
        try:
            saved = json.loads(raw) if raw else None
        except ValueError:
            saved = None
        state = self.get_argument("state", "")
        if not saved or saved.get("p") != p.name or not secrets.compare_digest(saved.get("s", ""), state):
            self.fail("That sign-in attempt expired or did not start here; try again.")
            return
        if self.get_argument("error", None):
            self.fail(f"{p.label} refused the sign-in: {self.get_argument('error_description', self.get_argument('error'))}")
            return
        meta = await discover(p.issuer)
        try:
            async with self.client(p) as client:
                token = await client.fetch_token(meta["token_endpoint"], code=self.get_argument("code", ""),
                                                 code_verifier=saved["v"], grant_type="authorization_code")
            claims = jwt.decode(token["id_token"], JsonWebKey.import_key_set(meta["_jwks"]), claims_cls=CodeIDToken,
                                claims_options={"iss": {"essential": True, "values": [meta["issuer"]]},
                                                "aud": {"essential": True, "values": [p.client_id]}},
                                claims_params={"nonce": saved["n"], "client_id": p.client_id})
            claims.validate(leeway=60)
        except Exception as exc:  # any failure of the exchange or the ID token: no sign-in
            self.accounts.audit(f"oidc:{p.name}", "login.failure", "", f"oidc: {type(exc).__name__}: {exc}"[:200],
                                self.client_ip)
            self.fail(f"Signing in with {p.label} failed; try again.")
            return
        self.clear_cookie(STATE_COOKIE, path=self.base)
        issuer, subject = meta["issuer"], str(claims["sub"])
        address = self.accounts.oidc_account(issuer, subject)
        if address is None:
            email, verified = claims.get("email"), claims.get("email_verified")
            if not email or verified is not True:
                self.fail(f"{p.label} did not vouch for your e-mail address, so it cannot be linked to an account.")
                return
            acc = self.accounts.get(email)
            if acc is None:
                self.accounts.audit(email.lower(), "login.failure", email.lower(), f"oidc:{p.name} no account",
                                    self.client_ip)
                self.fail(f"There is no edrules account for {email}. Ask your administrator for one.")
                return
            self.accounts.link_oidc(issuer, subject, acc.address)
            self.accounts.audit(acc.address, "oidc.link", acc.address, f"{issuer} {subject}", self.client_ip)
            address = acc.address
        acc = self.accounts.get(address)
        if acc is None or acc.disabled:
            self.fail("This account is disabled.")
            return
        if acc.locked_until > time.time():
            from edrules.server.accounts import Locked
            self.fail(str(Locked(acc.locked_until)))
            return
        self.request.arguments["next"] = [saved.get("next", self.base).encode()]
        self.advance(acc, f"oidc:{p.name}")


HANDLERS = [
    (r"/login/oidc/(?P<name>[a-z0-9_-]+)", OidcStartHandler),
    (r"/login/oidc/(?P<name>[a-z0-9_-]+)/callback", OidcCallbackHandler),
]

_ = (e, message)
