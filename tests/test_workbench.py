"""Workbench: what-if, exposure and suggest on a hand-built tenant, then the acceptance story on the demo tenant."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from click.testing import CliRunner

from edrules.facts import MessageFacts
from edrules.rules.model import FromPolicy
from edrules.schema import ensure_schema
from edrules.workbench import Backend, CandidateKind, Tier, Workbench
from edrules.workbench.packs import policy_digest, policy_to_rules_yaml, to_policy

TENANT = "example-tenant.cz"
ALICE = f"alice@{TENANT}"
BOB = f"bob@{TENANT}"
OTP = "donotreply@someotpsite.cz"
T0 = datetime(2026, 3, 2, 8, 0, 0)

CURRENT = f"""
name: current
from_policy: strict
allow:
  - id: otp-user-wish
    sender: {OTP}
"""


def _dkim(*sigs: tuple[str, str]) -> list[dict]:
    return [{"d": d, "s": "s1", "result": r, "org": d.split(".", d.count(".") - 1)[-1]} for d, r in sigs]


def _msg(n: int, *, hfrom: str, env: str, spf: str | None, dkim=(), dmarc: str | None = None,
         dmarc_policy: str | None = None, provider: str | None = None, label: str | None = None,
         rcpts=(ALICE,), ip: str = "198.51.100.7") -> tuple[dict, tuple[str, ...]]:
    hdom = hfrom.split("@")[1]
    edom = env.split("@")[1] if env else None
    org = lambda d: ".".join(d.split(".")[-2:]) if d else None  # every test domain is 2-label
    row = MessageFacts(msg_key=f"m{n:02d}", dataset="t", source=f"test#{n}", message_id=f"<m{n}@test>",
                       received_at=T0 + timedelta(hours=n)).to_row()
    row.update(header_from=hfrom, header_from_domain=hdom, header_from_org=org(hdom),
               envelope_from=env, envelope_from_domain=edom, envelope_from_org=org(edom),
               client_ip=ip, helo=f"out.{edom}", helo_org=org(edom), spf=spf, spf_domain=edom,
               dkim=[{"d": d, "s": "s1", "result": r, "org": org(d)} for d, r in dkim],
               dmarc=dmarc, dmarc_policy=dmarc_policy, bulk_provider=provider, category=label,
               subject=f"message {n}")
    return row, tuple(rcpts)


def mini_tenant() -> list[tuple[dict, tuple[str, ...]]]:
    ses = dict(provider="amazonses", ip="54.240.77.69")
    return [
        # 1-3: the OTP mails, brand-signed through SES, a new envelope sender each time
        *(_msg(i, hfrom=OTP, env=f"0100{i:04d}-otp@amazonses.com", spf="pass",
               dkim=(("someotpsite.cz", "pass"), ("amazonses.com", "pass")), dmarc="pass",
               dmarc_policy="quarantine", label="ham", **ses) for i in (1, 2, 3)),
        # 4: the brand forged through SES: DMARC fails under p=quarantine
        _msg(4, hfrom=OTP, env="0100abcd-x@amazonses.com", spf="pass", dkim=(("amazonses.com", "pass"),),
             dmarc="fail", dmarc_policy="quarantine", label="phishing", **ses),
        # 5: the brand forged from elsewhere while DMARC could not be evaluated
        _msg(5, hfrom=OTP, env="bounce@someotpsite-security.cz", spf="pass", dmarc="temperror",
             label="phishing", ip="203.0.113.66"),
        # 6: another SES brand, DKIM aligned (strict still calls it a forgery)
        _msg(6, hfrom="notify@parcelzone.cz", env="0100eeee-p@amazonses.com", spf="pass",
             dkim=(("parcelzone.cz", "pass"), ("amazonses.com", "pass")), dmarc="pass",
             dmarc_policy="none", label="ham", rcpts=(ALICE, BOB), **ses),
        # 7: SES spam with no brand signature
        _msg(7, hfrom="deals@cheapdeals.com", env="0100ffff-s@amazonses.com", spf="pass",
             dkim=(("amazonses.com", "pass"),), label="spam", **ses),
        # 8: a partner, fully aligned
        _msg(8, hfrom="orders@partner.cz", env="orders@partner.cz", spf="pass",
             dkim=(("partner.cz", "pass"),), dmarc="pass", dmarc_policy="reject", label="ham",
             rcpts=(BOB,)),
        # 9: CEO fraud: the tenant's own domain, DMARC fail
        _msg(9, hfrom=f"ceo@{TENANT}", env="x@evil-host.com", spf="pass", dmarc="fail",
             dmarc_policy="quarantine", label="phishing", rcpts=(BOB,)),
        # 10: a mailing list: From differs from the list envelope, nothing aligned
        _msg(10, hfrom="joe@member.org", env="bounce@listhost.org", spf="pass", label="ham",
             rcpts=(ALICE, BOB)),
        # 11: malware from the brand's address, brand-signed (a compromised account)
        _msg(11, hfrom=OTP, env="0100dddd-m@amazonses.com", spf="pass",
             dkim=(("someotpsite.cz", "pass"),), dmarc="pass", label="malware", **ses),
    ]


def build_db(path: Path, messages) -> Path:
    con = duckdb.connect(str(path))
    ensure_schema(con)
    rows = [m for m, _ in messages]
    df = pd.DataFrame(rows, columns=MessageFacts.column_names())
    con.register("df", df)
    con.execute("INSERT INTO messages SELECT * FROM df")
    rc = [{"dataset": m["dataset"], "msg_key": m["msg_key"], "recipient": r,
           "recipient_domain": r.split("@")[1], "recipient_source": "envelope"}
          for m, rs in messages for r in rs]
    con.register("rc", pd.DataFrame(rc))
    con.execute("INSERT INTO recipients SELECT * FROM rc")
    con.close()
    return path


@pytest.fixture(scope="module")
def mini_db(tmp_path_factory) -> Path:
    return build_db(tmp_path_factory.mktemp("wb") / "mini.duckdb", mini_tenant())


@pytest.fixture(scope="module")
def wb(mini_db):
    with Workbench(mini_db) as w:
        yield w


@pytest.fixture(scope="module")
def otp(wb):
    """Suggestions for delivering the three OTP mails, measured once for the module."""
    return wb.suggest(["m01", "m02", "m03"], CURRENT)


def keys(df: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted(zip(df["msg_key"], df["recipient"]))


# -- evaluate and what-if ------------------------------------------------------------------


def test_strict_pack_quarantines_the_otp_mails_as_forgery_despite_the_allow_entry(wb):
    v = wb.evaluate(CURRENT).set_index(["msg_key", "recipient"])
    for m in ("m01", "m02", "m03"):
        assert v.loc[(m, ALICE), "action"] == "quarantine"
        assert v.loc[(m, ALICE), "category"] == "forgery"
    assert v.loc[("m08", BOB), "action"] == "deliver"


def test_whatif_lists_exactly_the_recipient_rows_whose_action_changes(wb):
    relaxed = replace(wb.pack(CURRENT), name="relaxed", from_policy=FromPolicy.RELAXED)
    diff = wb.whatif(CURRENT, relaxed)
    # relaxed: the allow entry trusts the header From (1-3 and the DMARC-temperror forgery 5);
    # forgery only on DMARC fail, so 6 and the list mail 10 are delivered too; 7 stays spam.
    assert keys(diff.rows) == sorted([("m01", ALICE), ("m02", ALICE), ("m03", ALICE), ("m05", ALICE),
                                      ("m06", ALICE), ("m06", BOB), ("m10", ALICE), ("m10", BOB)])
    assert set(diff.rows["transition"]) == {"quarantine→deliver"}
    assert diff.counts()["newly_delivered_forged"] == 3  # m05, m10 x2
    assert diff.counts()["newly_delivered_by_label"] == {"ham": 7, "phishing": 1}
    # the most alarming row comes first: forged phishing newly delivered
    assert diff.rows.iloc[0]["msg_key"] == "m05"
    assert diff.rows.iloc[0]["rule_after"] == "otp-user-wish"


def test_whatif_summary_groups_changes_by_transition_label_and_forged_with_top_senders(wb):
    relaxed = replace(wb.pack(CURRENT), name="relaxed", from_policy=FromPolicy.RELAXED)
    s = wb.whatif(CURRENT, relaxed).summary.set_index(["transition", "label", "forged"])
    ham_clean = s.loc[("quarantine→deliver", "ham", False)]
    assert (ham_clean["recipients"], ham_clean["messages"]) == (5, 4)
    assert ham_clean["top_senders"] == "someotpsite.cz (3), parcelzone.cz (2)"
    assert ham_clean["top_providers"] == "amazonses (5)"
    phish = s.loc[("quarantine→deliver", "phishing", True)]
    assert (phish["recipients"], phish["top_senders"], phish["top_providers"]) == (1, "someotpsite.cz (1)", "- (1)")


def test_whatif_of_a_pack_against_itself_is_empty_and_counts_every_recipient_row(wb):
    diff = wb.whatif(CURRENT, CURRENT)
    assert diff.changed == 0 and diff.total == 13


def test_sql_and_runtime_backends_give_the_same_whatif(mini_db):
    relaxed = replace(to_policy(CURRENT), name="relaxed", from_policy=FromPolicy.RELAXED)
    out = []
    for backend in (Backend.SQL, Backend.RUNTIME):
        with Workbench(mini_db, backend=backend) as w:
            out.append(w.whatif(CURRENT, relaxed).rows[["msg_key", "recipient", "transition", "rule_after"]])
    pd.testing.assert_frame_equal(out[0], out[1])


def test_evaluations_are_cached_by_policy_content_not_by_object(wb):
    a = wb.verdict_table(CURRENT)
    b = wb.verdict_table(replace(wb.pack(CURRENT)))
    assert a == b
    assert policy_digest(wb.pack(CURRENT)) != policy_digest(replace(wb.pack(CURRENT), from_policy=FromPolicy.ALIGNED))


# -- exposure ------------------------------------------------------------------------------


def test_exposure_counts_what_each_allow_entry_delivers_and_how_much_is_suspect(wb):
    relaxed = CURRENT.replace("strict", "relaxed") + "  - id: partner\n    domain: partner.cz\n"
    ex = wb.exposure(relaxed).set_index("entry_id")
    otp = ex.loc["otp-user-wish"]
    # delivers m01-m03 (brand-signed via SES) and m05 (forged, from the attacker's host)
    assert (otp["messages"], otp["recipients"], otp["unaligned"], otp["forged"], otp["phishing"]) == (4, 4, 1, 1, 1)
    assert otp["unusual_network"] == 1  # m05 did not come through amazonses
    assert otp["top_networks"] == "amazonses (3), someotpsite-security.cz (1)"
    assert ex.loc["partner", "messages"] == 1 and ex.loc["partner", "forged"] == 0
    assert list(ex.index) == ["otp-user-wish", "partner"]


# -- suggest -------------------------------------------------------------------------------


def test_suggest_ranks_the_brand_via_ses_pair_first_and_relaxed_last_among_fixes(otp):
    s = otp
    best = s.best
    assert best.kind is CandidateKind.PAIR_PROVIDER and str(best.scope) == f"user:{ALICE}"
    assert (best.delivers, best.targets, best.new_other, best.tier) == (3, 3, 0, Tier.SAFE_FIX)
    relaxed = s.find(CandidateKind.FROM_RELAXED)
    assert relaxed.tier is Tier.RISKY and relaxed.new_forged == 3
    assert relaxed.new_by_label == {"ham": 4, "phishing": 1}
    assert s.rank_of(CandidateKind.PAIR_PROVIDER, "global") < s.rank_of(CandidateKind.FROM_RELAXED)
    assert all(c.tier is not Tier.SAFE_FIX for c in s.candidates[s.rank_of(CandidateKind.FROM_RELAXED) - 1:])


def test_suggest_flags_per_message_envelope_senders_as_not_durable(otp):
    env = otp.find(CandidateKind.ENVELOPE_SENDER)
    assert env.delivers == 3 and env.new_other == 0 and not env.durable
    assert "per-message envelope sender" in env.note


def test_suggest_shows_the_blast_radius_of_allowing_the_envelope_domain(otp):
    c = otp.find(CandidateKind.ENVELOPE_DOMAIN)
    # amazonses.com as a plain allow: the forged SES phishing and SES spam come in
    assert c.new_by_label == {"ham": 2, "phishing": 1, "spam": 1}
    assert c.tier is Tier.RISKY
    assert c.new_by_label.get("malware", 0) == 0  # malware is never delivered by an allow


def test_suggest_bulk_allow_delivers_other_ses_brands_but_not_the_ses_phishing(otp):
    c = otp.find(CandidateKind.BULK_ALLOW)
    assert c.new_by_label == {"ham": 2} and c.new_forged == 0 and c.tier is Tier.SAFE_FIX


def test_suggest_with_one_recipient_of_a_multi_recipient_message_offers_user_scope(wb):
    s = wb.suggest(pd.DataFrame({"msg_key": ["m06"], "recipient": [BOB]}), CURRENT)
    assert s.targets["recipient"].tolist() == [BOB]
    assert s.best.scope.value == BOB and s.best.delivers == 1 and s.best.new_other == 0


def test_suggest_resolves_quarantine_export_rows_to_the_full_message_by_message_id(tmp_path):
    export_row = dict(mini_tenant()[1][0], dataset="q", msg_key="q02", quarantine_state="quarantined")
    db = build_db(tmp_path / "with-export.duckdb", mini_tenant() + [(export_row, (ALICE,))])
    with Workbench(db, dataset="t") as w:
        s = w.suggest(["q02"], CURRENT)
    assert s.targets[["dataset", "msg_key", "recipient"]].values.tolist() == [["t", "m02", ALICE]]
    assert s.best.delivers == 1 and s.best.kind is CandidateKind.PAIR_PROVIDER


def test_suggest_rejects_messages_that_are_not_in_the_dataset(wb):
    from edrules.errors import EdrulesError

    with pytest.raises(EdrulesError, match="none of the chosen messages"):
        wb.suggest(["nope"], CURRENT)


def test_candidate_policies_round_trip_through_rules_yaml(otp):
    for c in otp.candidates:
        text = policy_to_rules_yaml(c.policy)
        back = to_policy(text)
        assert policy_digest(back) == policy_digest(c.policy), text


# -- messages finder -----------------------------------------------------------------------


def test_messages_finds_quarantined_mail_of_a_sender_under_a_pack(wb):
    found = wb.messages(header_from="DoNotReply@someotpsite.cz", pack=CURRENT, action="quarantine")
    assert found["msg_key"].tolist() == ["m01", "m02", "m03", "m04", "m05", "m11"]
    assert wb.messages(header_from=OTP, label="ham")["msg_key"].tolist() == ["m01", "m02", "m03"]


# -- CLI -----------------------------------------------------------------------------------


def _write_pack(path: Path, text: str, key: Path | None = None) -> Path:
    from edrules.pack import build_pack, write_pack

    write_pack(build_pack(to_policy(text), source_bytes=text.encode(), private_key_path=key,
                          created=datetime(2026, 3, 4)), path)
    return path


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    from edrules.pack import generate_keypair

    d = tmp_path_factory.mktemp("packs")
    private, _ = generate_keypair(d)
    relaxed = CURRENT.replace("name: current", "name: relaxed").replace("strict", "relaxed")
    return (_write_pack(d / "current.json", CURRENT, private), _write_pack(d / "relaxed.json", relaxed, private))


def test_whatif_cli_prints_counts_summary_and_the_most_alarming_row_first(mini_db, packs):
    from edrules.cli import cli

    res = CliRunner().invoke(cli, ["whatif", "--db", str(mini_db), "--pack", str(packs[0]),
                                   "--pack", str(packs[1]), "--limit", "3"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "what-if: current -> relaxed over 13 recipient rows"
    assert lines[1].startswith("changed: 8  newly delivered: 8 (6 messages; forged 3; ham 7, phishing 1)")
    assert "changed rows (top 3 of 8, most alarming first):" in res.output
    first_row = lines[lines.index("changed rows (top 3 of 8, most alarming first):") + 2]
    assert first_row.split()[:5] == ["m05", ALICE, "quarantine→deliver", "phishing", "yes"]


def test_whatif_cli_json_equals_the_python_api(mini_db, packs, wb):
    from edrules.cli import cli

    res = CliRunner().invoke(cli, ["whatif", "--db", str(mini_db), "--pack", str(packs[0]),
                                   "--pack", str(packs[1]), "--json", "--backend", "runtime"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["counts"] == wb.whatif(packs[0], packs[1]).counts()
    assert [r["msg_key"] for r in out["rows"]][:1] == ["m05"]
    assert out["now"] == "2026-03-03T19:00:00"  # a day after the newest message


def test_whatif_cli_refuses_one_pack_and_a_tampered_signed_pack(mini_db, packs, tmp_path):
    from edrules.cli import cli

    one = CliRunner().invoke(cli, ["whatif", "--db", str(mini_db), "--pack", str(packs[0])])
    assert one.exit_code != 0 and "exactly twice" in one.output
    doc = json.loads(packs[1].read_text())
    doc["policy"]["from_policy"] = "relaxed" if doc["policy"]["from_policy"] != "relaxed" else "strict"
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(doc))
    res = CliRunner().invoke(cli, ["whatif", "--db", str(mini_db), "--pack", str(packs[0]), "--pack", str(bad)])
    assert res.exit_code != 0


# -- widget rule editor --------------------------------------------------------------------


def test_rule_editor_shows_the_whatif_of_each_edit_against_the_deployed_pack(wb, tmp_path):
    from edrules.workbench.editor import RuleEditor

    ed = RuleEditor(wb, deployed=CURRENT, out_dir=tmp_path)
    assert ed.last.changed == 0
    ed.from_policy.value = "relaxed"
    assert ed.last.counts() == wb.whatif(CURRENT, replace(wb.pack(CURRENT), from_policy=FromPolicy.RELAXED)).counts()
    assert 'data-key="newly_delivered_forged" style="font-size:22px;font-weight:bold;color:#b33a3a">3<' in ed.counts.value
    assert bytes(ed.figure.value).startswith(b"\x89PNG")  # the transitions plot of this what-if
    ed.from_policy.value = "strict"
    ed.rows[0].via.value = "amazonses"  # turn the allow entry into a pair
    assert keys(ed.last.newly_delivered) == [("m01", ALICE), ("m02", ALICE), ("m03", ALICE)]


def test_rule_editor_shows_located_errors_for_an_invalid_entry_and_recovers(wb, tmp_path):
    from edrules.workbench.editor import RuleEditor

    ed = RuleEditor(wb, deployed=CURRENT, out_dir=tmp_path)
    row = ed.add_entry("block", "ip", "10.0.0.1/8")
    assert ed.last is None and "host bits set" in ed.counts.value and "block[0].ip" in ed.counts.value
    ed._remove(row)
    assert ed.last is not None and ed.last.changed == 0


def test_rule_editor_compiles_a_signed_pack_carrying_its_whatif(wb, tmp_path):
    from edrules.pack import load_pack
    from edrules.workbench.editor import RuleEditor

    ed = RuleEditor(wb, deployed=CURRENT, name="edited", out_dir=tmp_path)
    ed.bulk["amazonses"].value = "allow"
    compiled = ed.compile()
    loaded = load_pack(compiled.pack_path, pubkey_path=tmp_path / "keys" / "edrules-pack.pub")
    assert loaded.policy.bulk_mailers == {"amazonses": "allow"}
    assert loaded.metadata["whatif"]["counts"] == ed.last.counts()
    assert "verified" in ed.result.value


def test_pack_accepts_a_rules_dict_a_compiled_policy_dict_and_yaml_text_alike(wb):
    import yaml

    from edrules.pack import policy_to_dict

    policy = wb.pack(CURRENT)
    assert policy_digest(wb.pack(policy_to_dict(policy))) == policy_digest(policy)
    assert policy_digest(wb.pack(yaml.safe_load(CURRENT))) == policy_digest(policy)
    assert wb.pack(CURRENT, name="renamed").name == "renamed"


def test_every_whatif_option_and_workbench_method_is_documented():
    import inspect

    from edrules.workbench.cli import whatif

    doc = (Path(__file__).resolve().parent.parent / "docs" / "workbench.md").read_text()
    for param in whatif.params:
        for opt in param.opts:
            assert opt in doc, f"{opt} of `edrules whatif` is not in docs/workbench.md"
    public = [n for n, _ in inspect.getmembers(Workbench, predicate=inspect.isfunction) if not n.startswith("_")]
    public += [n for n, v in vars(Workbench).items() if isinstance(v, property) and not n.startswith("_")]
    for name in public:
        assert f"{name}(" in doc or f"`{name}`" in doc, f"Workbench.{name} is not in docs/workbench.md"


def test_load_wraps_ingest_and_the_loaded_messages_are_queryable(tmp_path):
    folder = Path(__file__).resolve().parent.parent / "data" / "demo-tenant" / "phishing"
    files = len(list(folder.glob("*.eml")))
    wb = Workbench(tmp_path / "loaded.duckdb", dataset="x", read_only=False)
    summary = wb.load([folder], dataset="x", label="phishing", jobs=1)
    assert summary.messages == files and summary.errors == 0
    assert wb.overview()["labels"] == {"phishing": files}
    again = wb.load([folder], dataset="x", label="phishing", jobs=1)
    assert again.duplicates == files  # idempotent
    wb.close()
