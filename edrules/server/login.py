"""Sign-in: password, e-mailed code / magic link, TOTP second step, forced enrolment, password expiry, logout.

A login is a small state machine kept in the session row: after the first factor the browser
holds a *pending* session (stage 'mfa', 'enroll' or 'password', 10 minutes) that opens no page;
only when every step the account and its domain policy demand is done does it get a fresh
session id with stage 'ok' (a new id, so a pre-login cookie can never become a signed-in one).
"""

from __future__ import annotations

import asyncio
import smtplib

from jupyter_server.auth.decorator import allow_unauthenticated
from tornado import web

from edrules.errors import EdrulesError
from edrules.server import mfa
from edrules.server.accounts import PASSWORDLESS_SESSION_SECONDS, SESSION_SECONDS, Account, Locked
from edrules.server.handlers import BaseHandler, safe_next
from edrules.server.mail import send_login_code
from edrules.server.pages import e, message

STEPS = ("mfa", "enroll", "password")
GENERIC_FAILURE = "Wrong address or password."


class LoginFlow(BaseHandler):
    """Shared steps of every sign-in method."""

    def next_url(self) -> str:
        return safe_next(self.get_argument("next", None), self.base)

    def next_field(self) -> str:
        return f'<input type="hidden" name="next" value="{e(self.next_url())}">'

    def step_due(self, acc: Account, method: str, after: str | None) -> str:
        """The first step still due after `after`, or 'ok'."""
        policy = self.accounts.policy(acc.domain)
        start = STEPS.index(after) + 1 if after else 0
        for step in STEPS[start:]:
            if step == "mfa" and acc.totp_enabled:
                return step
            if step == "enroll" and policy.mfa_required and not acc.totp_enabled:
                return step
            if step == "password" and method == "password" and self.accounts.password_expired(acc):
                return step
        return "ok"

    def advance(self, acc: Account, method: str, after: str | None = None) -> None:
        """Go to the next due step, or finish the login, and redirect there."""
        self.redirect(self.step_to(acc, method, after))

    def step_to(self, acc: Account, method: str, after: str | None = None) -> str:
        """Start the next due step (or the signed-in session): sets the cookie, returns where to go."""
        acc = self.accounts.get(acc.address) or acc
        step = self.step_due(acc, method, after)
        old = self.edrules_session
        if old is not None:
            self.accounts.end_session(old.id_hash)
        if step == "ok":
            lifetime = PASSWORDLESS_SESSION_SECONDS if method == "code" else SESSION_SECONDS
            sid = self.accounts.new_session(acc.address, stage="ok", method=method, ip=self.client_ip,
                                            user_agent=self.request.headers.get("User-Agent", ""), lifetime=lifetime)
            self.accounts.audit(acc.address, "login.success", acc.address, method, self.client_ip)
            self.set_session_cookie(sid, lifetime)
            return self.next_url()
        sid = self.accounts.new_session(acc.address, stage=step, method=method, ip=self.client_ip,
                                        user_agent=self.request.headers.get("User-Agent", ""))
        self.set_session_cookie(sid, 600)
        target = {"mfa": "login/totp", "enroll": "login/enroll", "password": "login/new-password"}[step]
        return f"{self.base}{target}?next={web.escape.url_escape(self.next_url())}"

    def pending(self, stage: str) -> tuple[Account, str] | None:
        s = self.edrules_session
        if s is None or s.stage != stage:
            return None
        acc = self.account
        return (acc, s.method) if acc and not acc.disabled else None


def login_form(h: LoginFlow, *, error: str | None = None, notice: str | None = None, address: str = "") -> str:
    buttons = "".join(
        f'<a class="button secondary" href="{e(h.base)}login/oidc/{e(p.name)}?next={e(web.escape.url_escape(h.next_url()))}">'
        f"Sign in with {e(p.label)}</a> " for p in h.ctx.oidc)
    providers = f'<p class="or">or</p><div class="providers">{buttons}</div>' if buttons else ""
    code = (f'<p class="or">or</p><p style="text-align:center"><a class="button secondary" href="{e(h.base)}login/code'
            f'?next={e(web.escape.url_escape(h.next_url()))}">E-mail me a sign-in code</a></p>') if h.ctx.smtp else ""
    return f"""<div class="card narrow"><h1>Sign in</h1>{message(error, notice)}
<form method="post" action="{e(h.base)}login">{h.forms()}{h.next_field()}
<label for="address">E-mail address</label><input type="email" id="address" name="address" value="{e(address)}" autocomplete="username" required autofocus>
<label for="password">Password</label><input type="password" id="password" name="password" autocomplete="current-password" required>
<button type="submit">Sign in</button></form>{code}{providers}</div>"""


class LoginHandler(LoginFlow):
    """Jupyter Server mounts this as its login page (IdentityProvider.login_handler_class)."""

    @allow_unauthenticated
    def get(self) -> None:
        if self.principal is not None:
            self.redirect(self.next_url())
            return
        self.page("Sign in", login_form(self))

    @allow_unauthenticated
    async def post(self) -> None:
        address = self.get_body_argument("address", "").strip().lower()
        password = self.get_body_argument("password", "")
        if not self.accounts.allow_attempt(f"login-ip:{self.client_ip}", 30, 300):
            self.page("Sign in", login_form(self, error="Too many sign-in attempts from here; wait five minutes.",
                                             address=address), status=429)
            return
        try:
            # argon2 takes ~130 ms: keep the event loop free for other requests meanwhile
            acc = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.accounts.check_password(address, password, ip=self.client_ip))
        except Locked as exc:
            self.page("Sign in", login_form(self, error=str(exc), address=address), status=403)
            return
        if acc is None:
            self.page("Sign in", login_form(self, error=GENERIC_FAILURE, address=address), status=403)
            return
        self.advance(acc, "password")


class LogoutHandler(BaseHandler):
    @allow_unauthenticated
    def get(self) -> None:
        # A GET never signs out (a prefetch or an <img> could); it offers the button.
        self.page("Sign out", f'<div class="card narrow"><h1>Sign out?</h1><form method="post" '
                  f'action="{e(self.base)}logout">{self.forms()}<button type="submit">Sign out</button></form></div>')

    @allow_unauthenticated
    def post(self) -> None:
        s = self.edrules_session
        if s is not None:
            self.accounts.end_session(s.id_hash)
            self.accounts.audit(s.address, "logout", s.address, "", self.client_ip)
        self.clear_session_cookie()
        self.redirect(f"{self.base}login")


# --- second factor -----------------------------------------------------------------------------
class TotpHandler(LoginFlow):
    def form(self, error: str | None = None) -> str:
        return f"""<div class="card narrow"><h1>Two-step verification</h1>{message(error)}
<p>Enter the 6-digit code from your authenticator app.</p>
<form method="post">{self.forms()}{self.next_field()}
<label for="code">Code</label><input class="code" type="text" id="code" name="code" inputmode="numeric" autocomplete="one-time-code" maxlength="7" autofocus>
<button type="submit">Verify</button></form>
<details><summary>Lost your device? Use a recovery code</summary>
<form method="post">{self.forms()}{self.next_field()}<label for="recovery">Recovery code</label>
<input type="text" id="recovery" name="recovery" autocomplete="off"><button type="submit" class="secondary">Use recovery code</button></form></details></div>"""

    @allow_unauthenticated
    def get(self) -> None:
        if self.pending("mfa") is None:
            self.redirect(f"{self.base}login")
            return
        self.page("Two-step verification", self.form())

    @allow_unauthenticated
    def post(self) -> None:
        got = self.pending("mfa")
        if got is None:
            self.redirect(f"{self.base}login")
            return
        acc, method = got
        if not self.accounts.allow_attempt(f"totp:{acc.address}", 10, 300):
            self.page("Two-step verification", self.form("Too many codes tried; wait five minutes."), status=429)
            return
        try:
            recovery = self.get_body_argument("recovery", "").strip()
            ok = (self.accounts.use_recovery_code(acc.address, recovery, ip=self.client_ip) if recovery else
                  self.accounts.check_totp(acc.address, self.get_body_argument("code", ""), ip=self.client_ip))
        except Locked as exc:
            self.accounts.end_session(self.edrules_session.id_hash)
            self.clear_session_cookie()
            self.page("Two-step verification", f'<div class="card narrow"><h1>Account locked</h1>{message(str(exc))}'
                      f'<p><a href="{e(self.base)}login">Back to sign-in</a></p></div>', status=403)
            return
        if not ok:
            self.page("Two-step verification", self.form("That code is wrong or was already used."), status=403)
            return
        self.advance(acc, method, after="mfa")


def enrolment_body(h: BaseHandler, address: str, secret: str, error: str | None = None, extra: str = "",
                   notice: str | None = None) -> str:
    qr = mfa.qr_svg_data_uri(mfa.provisioning_uri(secret, address))
    return f"""<div class="card narrow"><h1>Set up your authenticator app</h1>{message(error, notice)}
<p>Scan this QR code with an authenticator app (Google Authenticator, Aegis, 1Password, FreeOTP ...).</p>
<img class="qr" src="{qr}" alt="QR code for your authenticator app" width="230" height="230">
<details id="show-secret"><summary>Can't scan? Show code</summary>
<p>Type this key into your app (time-based, 6 digits, 30 seconds):</p><p class="secret" id="text-secret">{e(mfa.spaced(secret))}</p>
<p class="muted">Account: {e(address)} · Issuer: {e(mfa.ISSUER)}</p></details>
<form method="post">{h.forms()}{extra}
<label for="code">Then enter the code the app shows</label><input class="code" type="text" id="code" name="code" inputmode="numeric" autocomplete="one-time-code" maxlength="7">
<button type="submit">Confirm</button></form></div>"""


def recovery_codes_body(h: BaseHandler, codes: list[str], next_url: str) -> str:
    items = "".join(f"<li>{e(c)}</li>" for c in codes)
    return f"""<div class="card narrow"><h1>Save your recovery codes</h1>
<p>Each code signs you in once if you lose your authenticator. Store them somewhere safe: they are not shown again.</p>
<ol class="codes" id="recovery-codes">{items}</ol><a class="button" href="{e(next_url)}">Continue</a></div>"""


class EnrolHandler(LoginFlow):
    """TOTP enrolment: forced by the 'MFA required' policy during login, or chosen from the account page."""

    def target(self) -> tuple[Account, str | None] | None:
        got = self.pending("enroll")
        if got is not None:
            return got[0], got[1]
        if self.principal is not None and self.account and not self.account.totp_enabled:
            return self.account, None
        return None

    @allow_unauthenticated
    def get(self) -> None:
        t = self.target()
        if t is None:
            self.redirect(f"{self.base}login" if self.principal is None else f"{self.base}account")
            return
        acc = t[0]
        secret = self.accounts.totp_secret(acc.address)
        if not secret:
            secret = mfa.new_secret()
            self.accounts.start_totp_enrolment(acc.address, secret)
        why = (f"{acc.domain} requires two-step verification: set it up to finish signing in."
               if t[1] is not None else None)
        self.page("Set up two-step verification", enrolment_body(self, acc.address, secret, extra=self.next_field(),
                                                                 notice=why))

    @allow_unauthenticated
    def post(self) -> None:
        t = self.target()
        if t is None:
            raise web.HTTPError(403)
        acc, method = t
        secret = self.accounts.totp_secret(acc.address)
        try:
            ok = bool(secret) and self.accounts.check_totp(acc.address, self.get_body_argument("code", ""),
                                                           ip=self.client_ip, confirming=True)
        except Locked as exc:
            self.page("Set up two-step verification", f'<div class="card narrow">{message(str(exc))}</div>', status=403)
            return
        if not ok:
            self.page("Set up two-step verification",
                      enrolment_body(self, acc.address, secret, "That code does not match; try the next one.",
                                     extra=self.next_field()), status=403)
            return
        codes = self.accounts.enable_totp(acc.address, actor=acc.address)
        if method is not None:  # during login: finish it, then show the codes once
            target = self.step_to(acc, method, after="enroll")
            self.page("Recovery codes", recovery_codes_body(self, codes, target))
            return
        self.page("Recovery codes", recovery_codes_body(self, codes, f"{self.base}account"))


class NewPasswordHandler(LoginFlow):
    def form(self, error: str | None = None) -> str:
        return f"""<div class="card narrow"><h1>Choose a new password</h1>{message(error)}
<p>Your domain's policy says your password has expired.</p>
<form method="post">{self.forms()}{self.next_field()}
<label for="password">New password (at least 10 characters)</label><input type="password" id="password" name="password" autocomplete="new-password">
<label for="again">Again</label><input type="password" id="again" name="again" autocomplete="new-password">
<button type="submit">Save and continue</button></form></div>"""

    @allow_unauthenticated
    def get(self) -> None:
        if self.pending("password") is None:
            self.redirect(f"{self.base}login")
            return
        self.page("New password", self.form())

    @allow_unauthenticated
    def post(self) -> None:
        got = self.pending("password")
        if got is None:
            raise web.HTTPError(403)
        acc, method = got
        pw, again = self.get_body_argument("password", ""), self.get_body_argument("again", "")
        if pw != again:
            self.page("New password", self.form("The two passwords differ."), status=400)
            return
        if self.accounts.check_password_reuse(acc.address, pw):
            self.page("New password", self.form("Choose a password you have not used here."), status=400)
            return
        try:
            self.accounts.set_password(acc.address, pw, actor=acc.address)
        except EdrulesError as exc:
            self.page("New password", self.form(exc.message), status=400)
            return
        self.advance(acc, method, after="password")


# --- passwordless ------------------------------------------------------------------------------
class CodeRequestHandler(LoginFlow):
    def form(self, error: str | None = None, address: str = "") -> str:
        return f"""<div class="card narrow"><h1>Sign in with an e-mailed code</h1>{message(error)}
<p>We send a link and a code to your address. They work once, for 10 minutes, and keep this browser signed in for 30 days.</p>
<form method="post" action="{e(self.base)}login/code">{self.forms()}{self.next_field()}
<label for="address">E-mail address</label><input type="email" id="address" name="address" value="{e(address)}" autocomplete="username" required autofocus>
<button type="submit">Send me a code</button></form>
<p class="muted"><a href="{e(self.base)}login">Sign in with a password instead</a></p></div>"""

    @allow_unauthenticated
    def get(self) -> None:
        self.page("E-mailed code", self.form())

    @allow_unauthenticated
    def post(self) -> None:
        address = self.get_body_argument("address", "").strip().lower()
        if "@" not in address:
            self.page("E-mailed code", self.form("Enter your e-mail address.", address), status=400)
            return
        policy = self.accounts.policy(address.rpartition("@")[2])
        if policy.passwordless_disabled:
            self.accounts.audit(address, "code.refused", address, "passwordless disabled by policy", self.client_ip)
            self.page("E-mailed code", self.form(f"Sign-in by e-mailed code is turned off for {policy.domain}; "
                                                 "sign in with your password.", address), status=403)
            return
        if not self.accounts.allow_attempt(f"code-ip:{self.client_ip}", 20, 600):
            self.page("E-mailed code", self.form("Too many codes requested from here; wait ten minutes.", address),
                      status=429)
            return
        issued = self.accounts.issue_login_code(address, ip=self.client_ip)
        if issued is not None:
            token, code = issued
            root = (self.ctx.public_url or f"{self.request.protocol}://{self.request.host}{self.base}").rstrip("/")
            link = f"{root}/login/magic?t={token}&next={web.escape.url_escape(self.next_url())}"
            try:
                send_login_code(self.ctx.smtp, self.ctx.mail_from, address, link, code)
            except (EdrulesError, OSError, smtplib.SMTPException) as exc:
                self.accounts.audit(address, "code.send_failed", address, f"{type(exc).__name__}: {exc}"[:200],
                                    self.client_ip)
                self.page("E-mailed code", self.form("The sign-in mail could not be sent right now; try again "
                                                     "later or sign in with your password.", address), status=503)
                return
        # The same answer whether or not the address has an account: no account discovery here.
        self.page("Check your mail", f"""<div class="card narrow"><h1>Check your mail</h1>
<p>If <b>{e(address)}</b> has an account, a sign-in link and code are on their way. Open the link, or type the code here.</p>
<form method="post" action="{e(self.base)}login/code/verify">{self.forms()}{self.next_field()}
<input type="hidden" name="address" value="{e(address)}">
<label for="code">Code from the e-mail</label><input class="code" type="text" id="code" name="code" inputmode="numeric" autocomplete="one-time-code" maxlength="9" autofocus>
<button type="submit">Sign in</button></form></div>""")


class CodeVerifyHandler(LoginFlow):
    @allow_unauthenticated
    def post(self) -> None:
        address = self.get_body_argument("address", "").strip().lower()
        if not self.accounts.allow_attempt(f"code-verify:{address}", 10, 600):
            self.page("E-mailed code", f'<div class="card narrow">{message("Too many codes tried; wait ten minutes.")}</div>',
                      status=429)
            return
        try:
            acc = self.accounts.redeem_login_code(address=address, code=self.get_body_argument("code", ""),
                                                  ip=self.client_ip)
        except Locked as exc:
            self.page("E-mailed code", f'<div class="card narrow">{message(str(exc))}</div>', status=403)
            return
        if acc is None:
            self.page("E-mailed code", f"""<div class="card narrow"><h1>That code did not work</h1>
{message("The code is wrong, expired or already used.")}<p><a href="{e(self.base)}login/code">Send a new code</a></p></div>""",
                      status=403)
            return
        self.advance(acc, "code")


class MagicLinkHandler(LoginFlow):
    """The e-mailed link. Its GET only shows a button: a mail scanner fetching the link must
    neither consume nor use the code; the POST from this page signs in."""

    @allow_unauthenticated
    def get(self) -> None:
        token = self.get_argument("t", "")
        self.page("Sign in", f"""<div class="card narrow"><h1>Sign in to edrules</h1>
<p>Press the button to finish signing in on this browser (it stays signed in for 30 days).</p>
<form method="post">{self.forms()}{self.next_field()}<input type="hidden" name="t" value="{e(token)}">
<button type="submit" id="magic-sign-in">Sign in</button></form></div>""")

    @allow_unauthenticated
    def post(self) -> None:
        try:
            acc = self.accounts.redeem_login_code(token=self.get_body_argument("t", ""), ip=self.client_ip)
        except Locked as exc:
            self.page("Sign in", f'<div class="card narrow">{message(str(exc))}</div>', status=403)
            return
        if acc is None:
            self.page("Sign in", f"""<div class="card narrow"><h1>This link no longer works</h1>
{message("Sign-in links work once, for 10 minutes.")}<p><a href="{e(self.base)}login/code">Send a new one</a></p></div>""",
                      status=403)
            return
        self.advance(acc, "code")


HANDLERS = [
    (r"/login/totp", TotpHandler),
    (r"/login/enroll", EnrolHandler),
    (r"/login/new-password", NewPasswordHandler),
    (r"/login/code", CodeRequestHandler),
    (r"/login/code/verify", CodeVerifyHandler),
    (r"/login/magic", MagicLinkHandler),
]
