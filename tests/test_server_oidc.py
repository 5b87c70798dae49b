"""Sign-in with OpenID Connect against a real provider on loopback (oidc-provider-mock): code + PKCE, linking by verified e-mail."""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from components import missing, stop_pid
from web_client import Browserish
from web_server import add_accounts, start_serve, write_oidc_settings


@pytest.fixture(scope="module")
def provider():
    try:
        from oidc_provider_mock import User, run_server_in_thread
    except ImportError:
        missing("needs oidc-provider-mock (pip install -e '.[test]')")
    users = [User(sub="alice-sub", claims={"email": "user@a.test", "email_verified": True}),
             User(sub="mallory-sub", claims={"email": "admin@a.test", "email_verified": False}),
             User(sub="stranger-sub", claims={"email": "nobody@x.test", "email_verified": True})]
    with run_server_in_thread(port=0, user_claims=users) as srv:
        yield f"http://localhost:{srv.server_port}"


@pytest.fixture(scope="module")
def server(tmp_path_factory, provider):
    state = tmp_path_factory.mktemp("oidc-state")
    add_accounts(state)
    served = start_serve(state, oidc_file=write_oidc_settings(state / "oidc.yaml", provider))
    yield served
    stop_pid(served.proc.pid)


def begin(b: Browserish) -> httpx.URL:
    r = b.get("/login/oidc/mockid?next=/account", follow=False)
    assert r.status_code == 302
    return httpx.URL(r.headers["location"])


def provider_says(authorize: httpx.URL, sub: str) -> str:
    """Play the user at the provider's consent form: POST the authorize URL with the subject."""
    r = httpx.post(str(authorize), data={"sub": sub}, follow_redirects=False, timeout=10)
    assert r.status_code in (302, 303), r.text[:300]
    return r.headers["location"]


def test_the_login_page_offers_the_configured_provider(server):
    assert "Sign in with MockID" in Browserish(server.url).get("/login").text


def test_the_authorization_request_carries_state_nonce_and_an_s256_pkce_challenge_of_the_kept_verifier(server):
    b = Browserish(server.url)
    q = parse_qs(begin(b).query.decode())
    assert q["response_type"] == ["code"] and q["code_challenge_method"] == ["S256"]
    assert q["state"][0] and q["nonce"][0] and "openid" in q["scope"][0]
    # The provider does not check PKCE, so check the client: the challenge is S256(verifier kept in the cookie).
    signed = b.cookies["edrules_oidc"].strip('"')
    saved = json.loads(base64.b64decode(signed.split("|")[4].split(":", 1)[1]))
    challenge = base64.urlsafe_b64encode(hashlib.sha256(saved["v"].encode()).digest()).rstrip(b"=").decode()
    assert q["code_challenge"] == [challenge] and saved["s"] == q["state"][0] and saved["n"] == q["nonce"][0]
    assert "edrules_oidc" not in str(begin(b)), "the verifier is never in a URL"


def test_a_verified_email_links_the_provider_account_and_signs_in(server):
    b = Browserish(server.url)
    callback = provider_says(begin(b), "alice-sub")
    r = b.get(callback)
    assert r.status_code == 200 and r.url.path == "/account" and "user@a.test" in r.text
    from edrules.server.accounts import Accounts

    store = Accounts(server.state)
    assert store.sessions("user@a.test")[0].method == "oidc:mockid"
    assert any(a.action == "oidc.link" for a in store.audit_log(subject="user@a.test"))
    # a second sign-in goes by the linked subject
    b2 = Browserish(server.url)
    assert "user@a.test" in b2.get(provider_says(begin(b2), "alice-sub")).text


def test_an_unverified_email_is_never_linked(server):
    b = Browserish(server.url)
    r = b.get(provider_says(begin(b), "mallory-sub"))
    assert r.status_code == 403 and "did not vouch for your e-mail" in r.text
    assert "edrules_session" not in b.cookies


def test_a_provider_user_without_an_edrules_account_is_refused(server):
    b = Browserish(server.url)
    r = b.get(provider_says(begin(b), "stranger-sub"))
    assert r.status_code == 403 and "no edrules account for nobody@x.test" in r.text


def test_a_callback_started_in_another_browser_is_refused(server):
    attacker = Browserish(server.url)
    callback = provider_says(begin(attacker), "alice-sub")
    victim = Browserish(server.url)
    r = victim.get(callback)
    assert r.status_code == 403 and "did not start here" in r.text
    assert "edrules_session" not in victim.cookies


def test_a_code_is_exchanged_only_once(server):
    b = Browserish(server.url)
    callback = provider_says(begin(b), "alice-sub")
    assert b.get(callback).status_code == 200
    replay = Browserish(server.url)
    replay.cookies = {k: v for k, v in b.cookies.items() if k != "edrules_session"}
    assert replay.get(callback).status_code == 403
