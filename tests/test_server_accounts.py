"""The account store behind `edrules serve`: passwords, lockout, TOTP replay, recovery and e-mailed codes, policies, sessions, audit."""

from __future__ import annotations

import time

import pyotp
import pytest
from click.testing import CliRunner

from edrules.cli import cli
from edrules.errors import EdrulesError
from edrules.server.accounts import MAX_FAILURES, Accounts, Locked, Policy
from edrules.server.principal import Principal, can_access

PW = "correct horse battery"


@pytest.fixture()
def store(tmp_path) -> Accounts:
    s = Accounts(tmp_path)
    s.add("user@a.test", "user", (), PW)
    s.add("admin@a.test", "domain_admin", ("a.test",), PW)
    return s


@pytest.mark.parametrize("principal, recipient, allowed", [
    (Principal("user@a.test", "user", frozenset({"a.test"})), "user@a.test", True),
    (Principal("user@a.test", "user", frozenset({"a.test"})), "USER@A.TEST", True),
    (Principal("user@a.test", "user", frozenset({"a.test"})), "other@a.test", False),
    (Principal("admin@a.test", "domain_admin", frozenset({"a.test"})), "anyone@a.test", True),
    (Principal("admin@a.test", "domain_admin", frozenset({"a.test"})), "x@b.test", False),
    (Principal("admin@a.test", "domain_admin", frozenset({"a.test"})), "x@sub.a.test", False),
    (Principal("admin@a.test", "domain_admin", frozenset({"a.test"})), "x@a.test.evil", False),
    (Principal("sp@p.test", "provider", frozenset({"a.test", "c.test"})), "x@c.test", True),
    (Principal("sp@p.test", "provider", frozenset({"a.test"})), "x@b.test", False),
    (None, "user@a.test", False),
    (Principal("admin@a.test", "domain_admin", frozenset({"a.test"})), "not-an-address", False),
])
def test_can_access_grants_exactly_the_principals_scope(principal, recipient, allowed):
    assert can_access(principal, recipient) is allowed


def test_a_principal_survives_its_json_round_trip_and_an_unknown_role_is_refused():
    p = Principal("sp@p.test", "provider", frozenset({"a.test", "c.test"}))
    assert Principal.from_json(p.to_json()) == p
    with pytest.raises(ValueError):
        Principal.from_json('{"address": "x@y.test", "role": "root", "domains": []}')


def test_password_is_stored_as_argon2_and_a_wrong_one_fails(store, tmp_path):
    raw = (tmp_path / "accounts.sqlite").read_bytes()
    assert PW.encode() not in raw and b"$argon2id$" in raw
    assert store.check_password("user@a.test", PW).address == "user@a.test"
    assert store.check_password("user@a.test", "wrong password") is None
    assert store.check_password("nobody@a.test", PW) is None


def test_repeated_wrong_passwords_lock_the_account_with_a_clear_message(store):
    for _ in range(MAX_FAILURES - 1):
        assert store.check_password("user@a.test", "wrong") is None
    with pytest.raises(Locked, match=r"locked until \d\d:\d\d UTC"):
        store.check_password("user@a.test", "wrong")
    with pytest.raises(Locked):  # even the right password is refused while locked
        store.check_password("user@a.test", PW)
    actions = [a.action for a in store.audit_log(subject="user@a.test")]
    assert actions.count("login.failure") >= MAX_FAILURES and "login.lockout" in actions
    store.unlock("user@a.test", actor="admin@a.test")
    assert store.check_password("user@a.test", PW) is not None


def test_a_totp_code_is_accepted_once_and_its_replay_is_refused(store):
    secret = pyotp.random_base32()
    store.start_totp_enrolment("user@a.test", secret)
    code = pyotp.TOTP(secret).now()
    assert store.check_totp("user@a.test", code, confirming=True)
    store.enable_totp("user@a.test", actor="user@a.test")
    assert not store.check_totp("user@a.test", code), "the same code within its window is a replay"
    assert "totp replay" in [a.detail for a in store.audit_log(subject="user@a.test")]


def test_a_totp_code_from_the_previous_window_is_accepted_but_not_older(store):
    secret = pyotp.random_base32()
    store.start_totp_enrolment("user@a.test", secret)
    totp = pyotp.TOTP(secret)
    assert not store.check_totp("user@a.test", totp.at(time.time() - 90), confirming=True)
    assert store.check_totp("user@a.test", totp.at(time.time() - 30), confirming=True)


def test_recovery_codes_work_once_each(store):
    store.start_totp_enrolment("user@a.test", pyotp.random_base32())
    codes = store.enable_totp("user@a.test", actor="user@a.test")
    assert len(codes) == 10 and len(set(codes)) == 10
    assert store.use_recovery_code("user@a.test", codes[0])
    assert not store.use_recovery_code("user@a.test", codes[0])
    assert store.recovery_codes_left("user@a.test") == 9


def test_an_emailed_code_is_single_use_and_the_link_token_too(store):
    token, code = store.issue_login_code("user@a.test")
    assert store.redeem_login_code(address="user@a.test", code=code).address == "user@a.test"
    assert store.redeem_login_code(address="user@a.test", code=code) is None
    assert store.redeem_login_code(token=token) is None, "the code and its link are one credential"


def test_an_emailed_code_expires_after_ten_minutes(store):
    token, code = store.issue_login_code("user@a.test")
    with store._db() as db:
        db.execute("UPDATE login_codes SET expires_at=?", (time.time() - 1,))
    assert store.redeem_login_code(token=token) is None


def test_five_wrong_guesses_burn_an_emailed_code(store):
    _, code = store.issue_login_code("user@a.test")
    for _ in range(5):
        assert store.redeem_login_code(address="user@a.test", code="00000000" if code != "00000000" else "1") is None
    assert store.redeem_login_code(address="user@a.test", code=code) is None


def test_emailed_codes_are_rate_limited_and_refused_when_policy_disables_them(store):
    assert all(store.issue_login_code("user@a.test") for _ in range(3))
    assert store.issue_login_code("user@a.test") is None, "a fourth code within ten minutes"
    store.set_policy(Policy("a.test", passwordless_disabled=True), actor="admin@a.test")
    assert store.issue_login_code("admin@a.test") is None
    assert store.issue_login_code("nobody@a.test") is None


def test_password_expiry_policy_marks_old_passwords_expired(store):
    acc = store.get("user@a.test")
    assert not store.password_expired(acc)
    store.set_policy(Policy("a.test", password_expiry_days=30), actor="admin@a.test")
    store.backdate_password("user@a.test", 31)
    assert store.password_expired(store.get("user@a.test"))
    assert "policy.change" in [a.action for a in store.audit_log(subject="a.test")]


def test_a_session_is_stored_hashed_and_revocable_only_by_its_owner(store, tmp_path):
    sid = store.new_session("user@a.test", stage="ok", method="password")
    assert sid.encode() not in (tmp_path / "accounts.sqlite").read_bytes()
    s = store.session(sid)
    assert not store.revoke(s.id_hash, address="admin@a.test", actor="admin@a.test")
    assert store.session(sid) is not None
    assert store.revoke(s.id_hash, address="user@a.test", actor="user@a.test")
    assert store.session(sid) is None


def test_disabling_an_account_ends_its_sessions(store):
    sid = store.new_session("user@a.test", stage="ok", method="password")
    store.set_disabled("user@a.test")
    assert store.session(sid) is None


def test_adding_an_account_twice_or_with_a_bad_role_or_address_is_a_clear_error(store):
    with pytest.raises(EdrulesError, match="already exists"):
        store.add("user@a.test")
    with pytest.raises(EdrulesError, match="unknown role"):
        store.add("x@a.test", "root")  # type: ignore[arg-type]
    with pytest.raises(EdrulesError, match="needs at least one --domain"):
        store.add("x@a.test", "domain_admin")
    with pytest.raises(EdrulesError, match="not an e-mail address"):
        store.add("no-at-sign")


def test_users_add_list_disable_from_the_command_line(tmp_path):
    run = CliRunner().invoke
    state = str(tmp_path / "state")
    r = run(cli, ["users", "add", "sp@p.test", "--role", "provider", "--domain", "a.test", "--domain", "c.test",
                  "--password-stdin", "--state", state], input=PW + "\n")
    assert r.exit_code == 0, r.output
    assert "sp@p.test (provider: a.test, c.test)" in r.output
    assert run(cli, ["users", "add", "u@a.test", "--state", state]).exit_code == 0
    assert run(cli, ["users", "disable", "u@a.test", "--state", state]).exit_code == 0
    listing = run(cli, ["users", "list", "--state", state]).output
    assert "sp@p.test\tprovider\ta.test,c.test\tpassword" in listing
    assert "u@a.test\tuser\ta.test\tdisabled" in listing
    bad = run(cli, ["users", "add", "x@a.test", "--role", "domain_admin", "--state", state], standalone_mode=False)
    assert isinstance(bad.exception, EdrulesError)


from hypothesis import given, settings, strategies as st  # noqa: E402

from edrules.server.handlers import safe_next  # noqa: E402


@settings(max_examples=300, derandomize=True)
@given(st.text(alphabet="/\\:.?#@%abcehlt ", max_size=30))
def test_the_after_login_target_is_always_a_path_on_this_site(url):
    target = safe_next(url, "/")
    assert target.startswith("/") and not target.startswith("//") and "\\" not in target
    assert "://" not in target.split("?")[0]


@pytest.mark.parametrize("url", ["//evil.test/x", "http://evil.test/", "https:evil.test", "/\\evil.test", "javascript:alert(1)"])
def test_an_offsite_after_login_target_becomes_the_home_page(url):
    assert safe_next(url, "/") == "/home"
