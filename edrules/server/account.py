"""Signed-in pages: the dashboards index, the account page (MFA, recovery codes, password,
sessions) and the admin page (domain policies, accounts, audit) for domain admins and providers."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tornado import web

from edrules.errors import EdrulesError
from edrules.server.accounts import Policy
from edrules.server.app import page_roles
from edrules.server.handlers import BaseHandler, authenticated
from edrules.server.pages import e, message, table
from edrules.server.principal import ROLE_LABELS


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else "never"


def dashboards_for(dashboards: Path, role: str) -> list[tuple[str, str, str]]:
    """(file name, title, first paragraph) of each dashboard notebook this role may open."""
    out = []
    for nb in sorted(dashboards.glob("*.ipynb")):
        try:
            data = json.loads(nb.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if role not in page_roles(data):
            continue
        title, about = nb.stem.replace("-", " ").capitalize(), ""
        for cell in data.get("cells", []):
            src = "".join(cell.get("source", ""))
            if cell.get("cell_type") == "markdown" and src.lstrip().startswith("# "):
                head, _, rest = src.lstrip()[2:].partition("\n")
                title, about = head.strip(), " ".join(rest.split("\n\n")[0].split())
                break
        out.append((nb.name, title, about))
    return out


class HomeHandler(BaseHandler):
    @authenticated
    def get(self) -> None:
        p = self.principal
        items = "".join(f'<li><a href="{e(self.base)}voila/render/{e(name)}">{e(title)}</a>'
                        f'<br><span class="muted">{e(about)}</span></li>'
                        for name, title, about in dashboards_for(self.ctx.dashboards, p.role))
        doms = "".join(f'<span class="pill">{e(d)}</span>' for d in sorted(p.domains))
        admin = (f'<p><a class="button secondary" href="{e(self.base)}admin">Domain policies and accounts</a></p>'
                 if p.role in ("domain_admin", "provider") else "")
        self.page("Dashboards", f"""<div class="card"><h1>Dashboards</h1>
<p>Signed in as <b>{e(p.address)}</b> · {e(p.label)} · {doms}</p>
<ul class="pages">{items or "<li class=muted>No dashboards for your role yet.</li>"}</ul>{admin}</div>""")


class AccountHandler(BaseHandler):
    @authenticated
    def get(self) -> None:
        self.render_account()

    def render_account(self, error: str | None = None, notice: str | None = None, status: int = 200) -> None:
        acc, s = self.account, self.edrules_session
        pol = self.accounts.policy(acc.domain)
        rows = []
        for other in self.accounts.sessions(acc.address):
            this = " (this browser)" if other.id_hash == s.id_hash else ""
            rows.append([e(when(other.created_at)) + e(this), e(other.method), e(other.ip), e(other.user_agent[:60]),
                         e(when(other.expires_at)),
                         f'<form method="post" action="{e(self.base)}account/sessions/revoke">{self.forms()}'
                         f'<input type="hidden" name="session" value="{e(other.id_hash)}">'
                         f'<button class="secondary" type="submit" style="margin:0">Revoke</button></form>'])
        if acc.totp_enabled:
            mfa = (f"<p>Two-step verification is <b>on</b>. Recovery codes left: "
                   f"{self.accounts.recovery_codes_left(acc.address)}.</p>"
                   f'<form method="post" action="{e(self.base)}account/recovery">{self.forms()}'
                   '<button class="secondary" type="submit">New recovery codes</button></form>')
        else:
            req = " Your domain requires it." if pol.mfa_required else ""
            mfa = (f"<p>Two-step verification is <b>off</b>.{e(req)}</p>"
                   f'<a class="button" href="{e(self.base)}login/enroll">Set up an authenticator app</a>')
        pw = ""
        if acc.has_password or True:
            expiry = f" Your domain's passwords expire after {pol.password_expiry_days} days." if pol.password_expiry_days else ""
            pw = f"""<div class="card"><h2>Password</h2><p class="muted">Last changed: {e(when(acc.password_changed_at))}.{e(expiry)}</p>
<form method="post" action="{e(self.base)}account/password">{self.forms()}
<label for="current">Current password</label><input type="password" id="current" name="current" autocomplete="current-password">
<label for="password">New password (at least 10 characters)</label><input type="password" id="password" name="password" autocomplete="new-password">
<button type="submit">Change password</button></form></div>"""
        doms = "".join(f'<span class="pill">{e(d)}</span>' for d in sorted(acc.domains))
        self.page("Account", f"""{message(error, notice)}<div class="card"><h1>Your account</h1>
<p><b>{e(acc.address)}</b> · {e(ROLE_LABELS[acc.role])} · {doms}</p></div>
<div class="card"><h2>Two-step verification</h2>{mfa}</div>{pw}
<div class="card"><h2>Where you are signed in</h2>{table(["Signed in", "How", "From", "Browser", "Until", ""], rows)}</div>""",
                  status=status)


class RevokeSessionHandler(AccountHandler):
    @authenticated
    def post(self) -> None:
        target = self.get_body_argument("session", "")
        mine = self.accounts.revoke(target, address=self.account.address, actor=self.account.address, ip=self.client_ip)
        if target == self.edrules_session.id_hash:
            self.clear_session_cookie()
            self.redirect(f"{self.base}login")
            return
        if not mine:
            raise web.HTTPError(404)
        self.redirect(f"{self.base}account")


class RecoveryCodesHandler(AccountHandler):
    @authenticated
    def post(self) -> None:
        from edrules.server.login import recovery_codes_body

        if not self.account.totp_enabled:
            raise web.HTTPError(400)
        codes = self.accounts.new_recovery_codes(self.account.address, actor=self.account.address)
        self.page("Recovery codes", recovery_codes_body(self, codes, f"{self.base}account"))


class PasswordHandler(AccountHandler):
    @authenticated
    def post(self) -> None:
        acc = self.account
        if acc.has_password and self.accounts.check_password(acc.address, self.get_body_argument("current", ""),
                                                             ip=self.client_ip) is None:
            self.render_account("The current password is wrong.", status=403)
            return
        try:
            self.accounts.set_password(acc.address, self.get_body_argument("password", ""), actor=acc.address)
        except EdrulesError as exc:
            self.render_account(exc.message, status=400)
            return
        self.render_account(notice="Password changed.")


class AdminHandler(BaseHandler):
    """Policies and accounts of the domains the principal administers (nothing else is listed)."""

    @authenticated
    def get(self) -> None:
        self.render_admin()

    def render_admin(self, error: str | None = None, notice: str | None = None, status: int = 200) -> None:
        p = self.principal
        if p.role not in ("domain_admin", "provider"):
            raise web.HTTPError(403)
        cards = []
        for dom in sorted(p.domains):
            pol = self.accounts.policy(dom)
            chk = lambda b: " checked" if b else ""  # noqa: E731
            users = [[e(a.address), e(ROLE_LABELS[a.role]), "on" if a.totp_enabled else "off",
                      "disabled" if a.disabled else ("locked" if a.locked_until > time.time() else "active"),
                      self.account_actions(a)]
                     for a in self.accounts.list(frozenset({dom}))]
            cards.append(f"""<div class="card" id="domain-{e(dom)}"><h2>{e(dom)}</h2>
<form method="post" action="{e(self.base)}admin/policy">{self.forms()}<input type="hidden" name="domain" value="{e(dom)}">
<label for="exp-{e(dom)}">Password expiry (days, 0 = never)</label><input type="number" min="0" max="3650" id="exp-{e(dom)}" name="password_expiry_days" value="{pol.password_expiry_days}" style="max-width:10rem">
<p><label style="display:inline;font-weight:400"><input type="checkbox" name="mfa_required" value="1"{chk(pol.mfa_required)}> Two-step verification required</label><br>
<label style="display:inline;font-weight:400"><input type="checkbox" name="passwordless_disabled" value="1"{chk(pol.passwordless_disabled)}> E-mailed sign-in codes disabled</label><br>
<label style="display:inline;font-weight:400"><input type="checkbox" name="secure_release" value="1"{chk(pol.secure_release)}> Secure release (users may not release mail themselves)</label></p>
<button type="submit">Save policy</button> <span class="muted">Last changed {e(when(pol.updated_at))}{" by " + e(pol.updated_by) if pol.updated_by else ""}</span></form>
<h2 style="margin-top:1.4rem">Accounts</h2>{table(["Address", "Role", "2-step", "State", ""], users)}</div>""")
        audit = [[e(when(a.at)), e(a.actor), e(a.action), e(a.subject), e(a.detail)]
                 for a in self.accounts.audit_log(subject_domains=p.domains, limit=30)]
        self.page("Administration", f"""{message(error, notice)}<div class="card"><h1>Your domains</h1>
<p class="muted">{e(p.label)} {e(p.address)}</p></div>{"".join(cards)}
<div class="card"><h2>Recent sign-in events</h2>{table(["When", "Who", "What", "Subject", "Detail"], audit)}</div>""",
                  status=status)


    def account_actions(self, a) -> str:
        if a.address == self.principal.address:
            return ""
        out = []
        for action, label, show in (("unlock", "Unlock", a.locked_until > time.time()),
                                    ("disable", "Disable", not a.disabled), ("enable", "Enable", a.disabled),
                                    ("reset-mfa", "Reset 2-step", a.totp_enabled)):
            if show:
                out.append(f'<form method="post" action="{e(self.base)}admin/account" style="display:inline">'
                           f'{self.forms()}<input type="hidden" name="address" value="{e(a.address)}">'
                           f'<input type="hidden" name="action" value="{action}">'
                           f'<button class="secondary" type="submit" style="margin:0 .3rem 0 0;padding:.3rem .7rem">'
                           f'{label}</button></form>')
        return "".join(out)


class AccountActionHandler(AdminHandler):
    """Unlock, disable, enable or reset the two-step verification of an account in the admin's domains."""

    @authenticated
    def post(self) -> None:
        p = self.principal
        target = self.accounts.get(self.get_body_argument("address", ""))
        # An admin acts on accounts *in* its domains, never on a peer admin or provider whose
        # scope reaches beyond them, and never on itself.
        if (target is None or not p.administers(target.domain) or target.address == p.address
                or (target.role != "user" and not target.domains <= p.domains)):
            raise web.HTTPError(404)
        action = self.get_body_argument("action", "")
        if action == "unlock":
            self.accounts.unlock(target.address, actor=p.address)
        elif action in ("disable", "enable"):
            self.accounts.set_disabled(target.address, action == "disable", actor=p.address)
        elif action == "reset-mfa":
            self.accounts.reset_mfa(target.address, actor=p.address)
        else:
            raise web.HTTPError(400)
        self.render_admin(notice=f"{target.address}: {action} done.")


class PolicyHandler(AdminHandler):
    @authenticated
    def post(self) -> None:
        p = self.principal
        dom = self.get_body_argument("domain", "").strip().lower()
        if not p.administers(dom):
            self.accounts.audit(p.address, "policy.refused", dom, "", self.client_ip)
            raise web.HTTPError(403)
        try:
            days = int(self.get_body_argument("password_expiry_days", "0") or 0)
            self.accounts.set_policy(Policy(dom, days, bool(self.get_body_argument("mfa_required", "")),
                                            bool(self.get_body_argument("passwordless_disabled", "")),
                                            bool(self.get_body_argument("secure_release", ""))),
                                     actor=p.address, ip=self.client_ip)
        except (ValueError, EdrulesError) as exc:
            self.render_admin(getattr(exc, "message", "password expiry must be a whole number of days"), status=400)
            return
        self.render_admin(notice=f"Policy for {dom} saved.")


HANDLERS = [
    (r"/home", HomeHandler),
    (r"/account", AccountHandler),
    (r"/account/sessions/revoke", RevokeSessionHandler),
    (r"/account/recovery", RecoveryCodesHandler),
    (r"/account/password", PasswordHandler),
    (r"/admin", AdminHandler),
    (r"/admin/policy", PolicyHandler),
    (r"/admin/account", AccountActionHandler),
]
