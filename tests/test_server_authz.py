"""`edrules serve` over HTTP: Jupyter locked down for every role, every endpoint x role x tenant in scope only,
CSRF on every POST, the magic link's GET harmless, cookie flags, and the URL it really listens on."""

from __future__ import annotations

import re
import socket
import time
from urllib.parse import parse_qs, urlparse

import pytest

from components import stop_pid
from web_client import Browserish
from web_server import PASSWORD, add_accounts, code_and_link, start_serve, start_sink

ROLES = {  # name -> address; "anonymous" has none
    "user_a": "user@a.test", "admin_a": "admin@a.test", "admin_b": "admin@b.test", "provider_a": "sp@provider.test",
}


@pytest.fixture(scope="module")
def sink():
    s = start_sink()
    yield s
    s.controller.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, sink):
    state = tmp_path_factory.mktemp("authz-state")
    add_accounts(state)
    served = start_serve(state, smtp_port=sink.port)
    yield served
    stop_pid(served.proc.pid)


def sign_in(server, address: str, password: str = PASSWORD) -> Browserish:
    b = Browserish(server.url)
    page = b.get("/login")
    r = b.post("/login", {"address": address, "password": password}, page=page.text)
    assert r.status_code == 200 and r.url.path == "/home", (address, r.status_code, r.text[:300])
    return b


@pytest.fixture(scope="module")
def clients(server):
    out = {name: sign_in(server, addr) for name, addr in ROLES.items()}
    out["anonymous"] = Browserish(server.url)
    out["anonymous"].get("/login")  # an _xsrf cookie, so refusals are about the session, not the form
    yield out
    for c in out.values():
        c.close()


JUPYTER = [
    ("GET", "/api/kernels"), ("POST", "/api/kernels"), ("GET", "/api/contents"),
    ("GET", "/api/contents/rule-editor.ipynb"), ("PUT", "/api/contents/evil.ipynb"), ("GET", "/api/sessions"),
    ("POST", "/api/sessions"), ("GET", "/api/terminals"), ("POST", "/api/terminals"), ("GET", "/terminals/1"),
    ("GET", "/api/kernelspecs"), ("GET", "/kernelspecs/python3/logo-64x64.png"), ("GET", "/api/config/notebook"),
    ("GET", "/api/nbconvert"), ("GET", "/nbconvert/html/rule-editor.ipynb"), ("GET", "/files/rule-editor.ipynb"),
    ("GET", "/view/rule-editor.ipynb"), ("GET", "/lab"), ("GET", "/tree"), ("GET", "/notebooks/rule-editor.ipynb"),
    ("GET", "/edit/rule-editor.ipynb"), ("GET", "/api/status"), ("GET", "/voila/tree"), ("GET", "/voila/"),
    ("GET", "/voila/files/rule-editor.ipynb"), ("GET", "/voila/api/contents"), ("GET", "/api/events/subscribe"),
]


@pytest.mark.parametrize("role", [*ROLES, "anonymous"])
def test_the_jupyter_rest_api_and_terminals_answer_403_or_404_to_every_role(clients, role):
    c = clients[role]
    for method, path in JUPYTER:
        r = c.request(method, path, follow=False, data={"_xsrf": c.cookies.get("_xsrf", "")} if method != "GET" else None,
                      headers={"X-XSRFToken": c.cookies.get("_xsrf", "")})
        if role == "anonymous" and r.status_code == 302:
            assert urlparse(r.headers["location"]).path == "/login", (method, path)
            continue
        assert r.status_code in (403, 404), (role, method, path, r.status_code, r.text[:200])


def test_a_request_without_a_session_never_reaches_a_page_or_a_dashboard(server, clients):
    """Every mounted edrules route (and the dashboards) sends an anonymous GET to the login page, and refuses a POST."""
    from edrules.server.extension import _all_handlers

    anon = clients["anonymous"]
    public = ("/login", "/logout")
    for pattern, _ in _all_handlers():
        path = re.sub(r"\(\?P<\w+>[^)]*\)", "mockid", pattern)
        if path.startswith(public):
            continue
        r = anon.get(path, follow=False)
        assert r.status_code in (302, 403, 404), (path, r.status_code)
        if r.status_code == 302:
            assert urlparse(r.headers["location"]).path == "/login", path
        p = anon.post(path, {"domain": "a.test"}, follow=False)
        assert p.status_code in (302, 403, 404, 405), (path, p.status_code)
    for page in ("whoami.ipynb", "rule-editor.ipynb"):
        r = anon.get(f"/voila/render/{page}", follow=False)
        assert r.status_code == 302 and urlparse(r.headers["location"]).path == "/login"
        assert "edrules_session" not in anon.cookies


SCOPE = {  # role -> domains it administers (pages that list accounts / policies)
    "user_a": set(), "admin_a": {"a.test"}, "admin_b": {"b.test"}, "provider_a": {"a.test"},
}


@pytest.mark.parametrize("role", list(ROLES))
def test_every_page_shows_each_role_only_its_own_scope(clients, role):
    c = clients[role]
    me = ROLES[role]
    home = c.get("/home")
    assert home.status_code == 200 and me in home.text
    account = c.get("/account")
    assert account.status_code == 200 and me in account.text
    for other in ROLES.values():
        if other != me:
            assert other not in account.text, f"{role}'s account page names {other}"
    admin = c.get("/admin", follow=False)
    if not SCOPE[role]:
        assert admin.status_code == 403
    else:
        assert admin.status_code == 200
        for dom in ("a.test", "b.test"):
            shown = f'id="domain-{dom}"' in admin.text
            assert shown == (dom in SCOPE[role]), (role, dom)
        # accounts of other tenants are not listed
        assert ("user@b.test" in admin.text) == ("b.test" in SCOPE[role])
        assert ("user@a.test" in admin.text) == ("a.test" in SCOPE[role])
    rule_editor = c.get("/voila/render/rule-editor.ipynb", follow=False)
    assert (rule_editor.status_code == 200) == (role == "provider_a"), (role, rule_editor.status_code)
    listed = "rule-editor.ipynb" in home.text
    assert listed == (role == "provider_a")


@pytest.mark.parametrize("role", [*ROLES, "anonymous"])
@pytest.mark.parametrize("domain", ["a.test", "b.test"])
def test_a_domain_policy_changes_only_for_an_admin_or_provider_of_that_domain(clients, role, domain):
    c = clients[role]
    page = c.get("/admin") if SCOPE.get(role) else c.get("/login")
    r = c.post("/admin/policy", {"domain": domain, "password_expiry_days": "0"}, page=page.text, follow=False)
    allowed = domain in SCOPE.get(role, set())
    assert (r.status_code == 200) == allowed, (role, domain, r.status_code)
    if not allowed:
        assert r.status_code in (403, 302)


def test_nobody_revokes_or_reads_another_accounts_session(server, clients):
    victim = sign_in(server, "other@a.test")
    from edrules.server.accounts import Accounts

    sessions = Accounts(server.state).sessions("other@a.test")
    attacker = clients["admin_a"]  # even an admin of the same domain
    page = attacker.get("/account")
    r = attacker.post("/account/sessions/revoke", {"session": sessions[0].id_hash}, page=page.text, follow=False)
    assert r.status_code == 404
    assert victim.get("/account").status_code == 200


def test_a_dashboard_kernel_answers_only_the_session_that_opened_it(clients):
    owner, other = clients["user_a"], clients["admin_a"]
    page = owner.get("/voila/render/whoami.ipynb")
    assert page.status_code == 200
    kernel_id = re.search(r'"kernelId":\s*"([0-9a-f-]{36})"', page.text).group(1)
    assert owner.get(f"/api/kernels/{kernel_id}").status_code == 200
    assert other.get(f"/api/kernels/{kernel_id}").status_code == 403
    assert clients["anonymous"].get(f"/api/kernels/{kernel_id}", follow=False).status_code in (302, 403)
    assert owner.request("DELETE", f"/api/kernels/{kernel_id}", headers={"X-XSRFToken": owner.cookies["_xsrf"]},
                         follow=False).status_code == 403


def test_a_post_without_the_session_csrf_token_or_the_xsrf_cookie_is_refused(server, clients):
    c = clients["admin_a"]
    page = c.get("/admin").text
    fields = c.form_fields(page)
    data = {"domain": "a.test", "password_expiry_days": "7"}
    no_csrf = c.request("POST", "/admin/policy", data={**data, "_xsrf": fields["_xsrf"]}, follow=False)
    assert no_csrf.status_code == 403
    wrong_csrf = c.request("POST", "/admin/policy", data={**data, "_xsrf": fields["_xsrf"], "csrf": "x" * 32},
                           follow=False)
    assert wrong_csrf.status_code == 403
    no_xsrf = c.request("POST", "/admin/policy", data={**data, "csrf": fields["csrf"]}, follow=False)
    assert no_xsrf.status_code == 403
    foreign = c.request("POST", "/admin/policy", data={**data, **fields}, headers={"Origin": "http://evil.test"},
                        follow=False)
    assert foreign.status_code in (403, 404)
    ok = c.request("POST", "/admin/policy", data={**data, **fields}, follow=False)
    assert ok.status_code == 200
    from edrules.server.accounts import Accounts
    # and one forged attempt was written to the audit trail
    assert any(a.action == "csrf.refused" for a in Accounts(server.state).audit_log(subject="admin@a.test"))


def test_logout_is_a_post_and_ends_the_session_server_side(server):
    b = sign_in(server, "user@b.test")
    sid = b.cookies["edrules_session"]
    assert b.get("/logout").status_code == 200  # a GET only offers the button
    assert b.get("/account", follow=False).status_code == 200
    page = b.get("/account").text
    b.post("/logout", {}, page=page)
    again = Browserish(server.url)
    again.cookies = {"edrules_session": sid}
    r = again.get("/account", follow=False)
    assert r.status_code == 302 and urlparse(r.headers["location"]).path == "/login"


def test_the_session_cookie_is_secure_httponly_and_samesite(server):
    b = sign_in(server, "user@a.test")
    header = next(h for h in b.set_cookie_headers if h.startswith("edrules_session="))
    assert "HttpOnly" in header and "Secure" in header and "SameSite=Lax" in header
    xsrf = next(h for h in b.set_cookie_headers if h.startswith("_xsrf="))
    assert "Secure" in xsrf and "SameSite=Strict" in xsrf


def test_a_mail_scanner_fetching_the_magic_link_neither_uses_nor_burns_it(server, sink):
    b = Browserish(server.url)
    page = b.get("/login/code")
    b.post("/login/code", {"address": "other@a.test"}, page=page.text)
    code, link = code_and_link(sink.last_to("other@a.test"))
    scanner = Browserish(server.url)
    for _ in range(2):
        r = scanner.get(link)
        assert r.status_code == 200 and "edrules_session" not in scanner.cookies
    token = parse_qs(urlparse(link).query)["t"][0]
    opened = b.get(link)
    r = b.post(link, {"t": token}, page=opened.text)
    assert r.url.path == "/home" and "other@a.test" in r.text
    cookie = next(h for h in b.set_cookie_headers if h.startswith("edrules_session=") and "expires" in h)
    expires = re.search(r"expires=([^;]+)", cookie).group(1)
    days = (time.mktime(time.strptime(expires, "%a, %d %b %Y %H:%M:%S GMT")) - time.mktime(time.gmtime())) / 86400
    assert 29.9 < days <= 30.01, "a passwordless session lasts 30 days"
    second = Browserish(server.url)
    page2 = second.get(link)
    assert second.post(link, {"t": token}, page=page2.text).status_code == 403, "single use"


def test_the_printed_url_is_the_port_it_really_listens_on_when_the_asked_one_is_busy(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        add_accounts(tmp_path, [("u@a.test", "user", ())])
        served = start_serve(tmp_path, port=port)
        try:
            actual = urlparse(served.url).port
            assert actual != port
            r = Browserish(served.url).get("/login")
            assert r.status_code == 200 and "Sign in" in r.text
            assert any(f"port {port} was busy" in line for line in served.stdout_lines)
        finally:
            stop_pid(served.proc.pid)
    finally:
        busy.close()


@pytest.mark.parametrize("role, target, allowed", [
    ("admin_a", "other@a.test", True), ("provider_a", "other@a.test", True),
    ("admin_b", "other@a.test", False), ("user_a", "other@a.test", False), ("anonymous", "other@a.test", False),
    ("admin_a", "sp@provider.test", False),  # a provider is not managed by its customer's admin
    ("admin_a", "admin@b.test", False), ("admin_b", "user@b.test", True),
])
def test_account_actions_reach_only_accounts_in_the_admins_domains(server, clients, role, target, allowed):
    from edrules.server.accounts import Accounts

    c = clients[role]
    page = c.get("/admin") if SCOPE.get(role) else c.get("/login")
    r = c.post("/admin/account", {"address": target, "action": "disable"}, page=page.text, follow=False)
    store = Accounts(server.state)
    assert (r.status_code == 200) == allowed, (role, target, r.status_code)
    assert store.get(target).disabled == allowed
    store.set_disabled(target, False, actor="test")


def test_the_account_page_lists_this_accounts_sessions_and_revokes_one(server):
    laptop, phone = sign_in(server, "user@b.test"), sign_in(server, "user@b.test")
    page = laptop.get("/account").text
    assert page.count('name="session"') >= 2 and "(this browser)" in page
    from edrules.server.accounts import Accounts, sha

    phone_hash = sha(phone.cookies["edrules_session"])
    assert f'value="{phone_hash}"' in page
    r = laptop.post("/account/sessions/revoke", {"session": phone_hash}, page=page)
    assert r.status_code == 200 and r.url.path == "/account"
    gone = phone.get("/home", follow=False)
    assert gone.status_code == 302 and urlparse(gone.headers["location"]).path == "/login"
    assert laptop.get("/home").status_code == 200
    assert any(a.action == "session.revoke" for a in Accounts(server.state).audit_log(subject="user@b.test"))


def test_the_browser_cannot_run_code_in_its_own_dashboard_kernel(server, clients, tmp_path):
    """Only widget (comm), kernel_info and shutdown messages pass: an execute_request is dropped."""
    import asyncio
    import json as _json
    import uuid

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    owner = clients["user_a"]
    page = owner.get("/voila/render/whoami.ipynb")
    kernel_id = re.search(r'"kernelId":\s*"([0-9a-f-]{36})"', page.text).group(1)
    marker = tmp_path / "pwned"

    def msg(msg_type: str, content: dict) -> str:
        return _json.dumps({"header": {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "x",
                                       "session": uuid.uuid4().hex, "version": "5.3", "date": ""},
                            "parent_header": {}, "metadata": {}, "content": content, "channel": "shell",
                            "buffers": []})

    async def talk(cookies: dict[str, str]) -> list[str]:
        ws_url = server.url.replace("http://", "ws://") + f"api/kernels/{kernel_id}/channels?session_id=x"
        req = HTTPRequest(ws_url, headers={"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
                                           "Origin": server.url.rstrip("/")})
        conn = await websocket_connect(req)
        conn.write_message(msg("execute_request", {"code": f"open({str(marker)!r}, 'w').write('x')", "silent": False,
                                                   "store_history": False, "user_expressions": {},
                                                   "allow_stdin": False}))
        conn.write_message(msg("kernel_info_request", {}))
        seen: list[str] = []
        try:
            while True:
                raw = await asyncio.wait_for(conn.read_message(), timeout=8)
                if raw is None:
                    break
                m = _json.loads(raw) if isinstance(raw, str) else {}
                seen.append(m.get("msg_type") or m.get("header", {}).get("msg_type", ""))
                if "kernel_info_reply" in seen:
                    await asyncio.sleep(2)  # give a (wrongly) running execute time to finish
                    break
        except asyncio.TimeoutError:
            pass
        conn.close()
        return seen

    seen = asyncio.run(talk(owner.cookies))
    assert "kernel_info_reply" in seen, seen  # the channel works for its owner ...
    assert "execute_reply" not in seen and not marker.exists()  # ... but runs no code

    async def intruder() -> None:
        await talk(clients["admin_a"].cookies)

    with pytest.raises(Exception):  # another session's upgrade is refused outright
        asyncio.run(intruder())


def test_a_recovery_code_completes_the_second_step_once(server):
    import pyotp

    from edrules.server.accounts import Accounts

    store = Accounts(server.state)
    store.add("recover@a.test", "user", (), PASSWORD)
    store.start_totp_enrolment("recover@a.test", pyotp.random_base32())
    codes = store.enable_totp("recover@a.test", actor="test")
    for attempt, expected in ((1, "/home"), (2, "/login/totp")):
        b = Browserish(server.url)
        page = b.get("/login")
        r = b.post("/login", {"address": "recover@a.test", "password": PASSWORD}, page=page.text)
        assert r.url.path == "/login/totp"
        r = b.post("/login/totp", {"recovery": codes[0]}, page=r.text)
        assert r.url.path == expected, attempt
    assert store.recovery_codes_left("recover@a.test") == 9


def test_password_expiry_never_bothers_a_passwordless_sign_in(server, sink):
    from edrules.server.accounts import Accounts, Policy

    store = Accounts(server.state)
    store.add("expired@x.test", "user", (), PASSWORD)
    store.set_policy(Policy("x.test", password_expiry_days=10), actor="test")
    store.backdate_password("expired@x.test", 20)
    b = Browserish(server.url)
    page = b.get("/login/code")
    sent = b.post("/login/code", {"address": "expired@x.test"}, page=page.text)
    code, _ = code_and_link(sink.last_to("expired@x.test"))
    r = b.post("/login/code/verify", {"address": "expired@x.test", "code": code}, page=sent.text)
    assert r.url.path == "/home" and "expired@x.test" in r.text
    pw = Browserish(server.url)
    page = pw.get("/login")
    r = pw.post("/login", {"address": "expired@x.test", "password": PASSWORD}, page=page.text)
    assert r.url.path == "/login/new-password", "while a password sign-in must renew it"


def test_code_requests_look_the_same_for_unknown_addresses_and_are_rate_limited(server, sink):
    b = Browserish(server.url)
    page = b.get("/login/code")
    unknown = b.post("/login/code", {"address": "ghost@a.test"}, page=page.text)
    known = b.post("/login/code", {"address": "user@b.test"}, page=page.text)
    strip = lambda html: re.sub(r'value="[^"]*"|<b>[^<]*</b>', "", html)  # noqa: E731
    assert unknown.status_code == known.status_code == 200 and strip(unknown.text) == strip(known.text)
    assert sink.count_to("ghost@a.test") == 0
    before = sink.count_to("user@b.test")
    for _ in range(4):
        b.post("/login/code", {"address": "user@b.test"}, page=page.text)
    time.sleep(0.5)
    assert sink.count_to("user@b.test") - before == 2, "3 codes per address per 10 minutes"


def test_a_relay_that_is_down_gives_a_clear_page_not_a_crash(tmp_path):
    from components import free_port

    add_accounts(tmp_path, [("u@a.test", "user", ())])
    served = start_serve(tmp_path, smtp_port=free_port())  # nothing listens there
    try:
        b = Browserish(served.url)
        page = b.get("/login/code")
        r = b.post("/login/code", {"address": "u@a.test"}, page=page.text)
        assert r.status_code == 503 and "could not be sent right now" in r.text
    finally:
        stop_pid(served.proc.pid)


def test_without_a_relay_the_login_page_offers_no_emailed_code(tmp_path):
    add_accounts(tmp_path, [("u@a.test", "user", ())])
    served = start_serve(tmp_path)
    try:
        assert "E-mail me a sign-in code" not in Browserish(served.url).get("/login").text
    finally:
        stop_pid(served.proc.pid)
