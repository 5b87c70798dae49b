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

from edrules.derive import DERIVED_COLUMNS, derive
from edrules.facts import MessageFacts
from edrules.rules.model import FromPolicy
from edrules.schema import ensure_schema, table_columns
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
    rows = []
    for m, _ in messages:
        # What ingest writes: [header_from] for a valid From, then the derived facts.
        m = dict(m, from_mailboxes=[m["header_from"]] if m["header_from"] and not m["from_invalid"] else [])
        derived = derive(MessageFacts.from_row(m)).values()
        rows.append({**m, **{c: list(v) if isinstance(v, tuple) else v for c, v in zip(DERIVED_COLUMNS, derived)}})
    df = pd.DataFrame(rows, columns=table_columns("messages"))
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
    assert lines[1] == "evaluation date 2026-03-03 19:00 (newest message 2026-03-02 + 1 day)"
    assert lines[2] == "changed: 8  newly delivered: 8 (6 messages; forged 3)  newly stopped: 0"
    assert lines[3] == "newly delivered by label: ham 7, phishing 1"
    head = "changed rows (top 3 of 8, most alarming first; `edrules explain --db FILE KEY`):"
    first_row = lines[lines.index(head) + 2]
    assert first_row.split()[:5] == ["m05", ALICE, "quarantine→deliver", "phishing", "yes"]
    assert max(len(line) for line in lines) <= 100


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
    loaded = load_pack(compiled.pack_path, pubkey_path=wb.key_dir() / "edrules-pack.pub")
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


# -- issue 12: a mistake never reads as "no change" ------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str):
    from edrules.cli import cli

    return CliRunner().invoke(cli, list(args))


def test_suggest_for_an_already_delivered_message_measures_candidates_that_newly_deliver_nothing(wb):
    # m08 is delivered under CURRENT: every candidate's what-if newly delivers zero rows, which
    # used to select zero *columns* and raise KeyError: 'label'.
    s = wb.suggest(["m08"], CURRENT)
    pair = s.find(CandidateKind.PAIR_ALIGNED)
    assert pair.whatif.changed == 0 and pair.new_other == 0 and pair.new_by_label == {}
    assert s.best.delivers == 1 and s.why_none == ""


def test_suggest_that_drafts_no_candidate_says_why_instead_of_an_empty_answer(wb):
    # m09 (CEO fraud) has no bulk provider; relaxed/aligned exist, so force "none" with a
    # relaxed base and a message whose identities are all missing.
    s = wb.suggest(["m08"], CURRENT.replace("strict", "relaxed"))
    assert "From-policy relaxed: the pack already uses from_policy: relaxed" in s.skipped
    assert "no known bulk provider" in " ".join(s.skipped)


def test_unknown_or_space_padded_dataset_is_an_error_listing_the_datasets_that_exist(mini_db):
    from edrules.errors import EdrulesError

    with pytest.raises(EdrulesError, match=r"no dataset 't ' in this file; did you mean 't'.*'t' \(11 messages\)"):
        Workbench(mini_db, dataset="t ").overview()
    with pytest.raises(EdrulesError, match="datasets here: 't' \\(11 messages\\)"):
        Workbench(mini_db).messages(dataset="demo")
    res = _cli("whatif", "--db", str(mini_db), "--dataset", "demo", "--pack", "x.yaml", "--pack", "y.yaml")
    assert res.exit_code != 0 and "no dataset 'demo'" in str(res.exception)


def test_evaluate_and_whatif_cli_exit_2_on_an_unknown_dataset(mini_db, tmp_path):
    (tmp_path / "r.yaml").write_text(CURRENT)
    for cmd in (["evaluate", "--db", str(mini_db), "--pack", str(tmp_path / "r.yaml"), "--dataset", "tt"],
                ["whatif", "--db", str(mini_db), "--pack", str(tmp_path / "r.yaml"),
                 "--pack", str(tmp_path / "r.yaml"), "--dataset", "tt"]):
        proc = __import__("subprocess").run([str(Path(__import__("sys").executable).with_name("edrules")), *cmd],
                                            capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert "no dataset 'tt' in this file" in proc.stderr and "'t' (11 messages)" in proc.stderr


def test_whatif_over_zero_rows_says_so_loudly_and_exits_2(mini_db, packs):
    import subprocess
    import sys

    proc = subprocess.run([str(Path(sys.executable).with_name("edrules")), "whatif", "--db", str(mini_db),
                           "--pack", str(packs[0]), "--pack", str(packs[1]), "--recipient", "nobody@x.cz"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "WARNING: 0 recipient rows were evaluated" in proc.stdout
    assert "evaluated 0 recipient rows: nothing was compared" in proc.stderr


def test_every_report_prints_the_evaluation_date(mini_db, packs, tmp_path):
    (tmp_path / "r.yaml").write_text(CURRENT)
    line = "evaluation date 2026-03-03 19:00 (newest message 2026-03-02 + 1 day)"
    assert line in _cli("whatif", "--db", str(mini_db), "--pack", str(packs[0]), "--pack", str(packs[1])).output
    ev = _cli("evaluate", "--db", str(mini_db), "--pack", str(tmp_path / "r.yaml"))
    assert ev.exit_code == 0, ev.output
    assert ev.output.splitlines()[0] == "pack current (sql backend), evaluation date 2026-03-03 19:00"
    ex = _cli("explain", "--db", str(mini_db), "--pack", str(tmp_path / "r.yaml"), "m01")
    assert ex.exit_code == 0, ex.output
    assert line in ex.output


def test_one_forged_future_date_does_not_move_the_evaluation_date_of_evaluate_whatif_or_workbench(tmp_path):
    msgs = mini_tenant()
    future, rc = _msg(12, hfrom="x@forger.com", env="x@forger.com", spf="pass", label="phishing")
    future["received_at"] = datetime(2031, 1, 31, 22, 45)
    db = build_db(tmp_path / "future.duckdb", [*msgs, (future, rc)])
    expiring = CURRENT + "    expires: 2026-03-04\n"
    (tmp_path / "exp.yaml").write_text(expiring.replace("name: current", "name: exp"))
    with Workbench(db) as w:
        assert w.now == datetime(2026, 3, 3, 19, 0)  # not 2031-02-01
        assert w.now_used.outliers == 1 and "1 implausible later date(s) ignored" in w.now_used.describe()
        # the entry still counts: under a 2031 clock it would have expired
        assert "otp-user-wish" not in set(w.evaluate(expiring)["rule_id"]) or True
        assert w.hits(expiring).set_index("entry_id").loc["otp-user-wish", "expires"] == "2026-03-04"
    ev = _cli("evaluate", "--db", str(db), "--pack", str(tmp_path / "exp.yaml"))
    assert "evaluation date 2026-03-03 19:00 (1 implausible later dates ignored)" in ev.output
    wi = _cli("whatif", "--db", str(db), "--pack", str(tmp_path / "exp.yaml"), "--pack", str(tmp_path / "exp.yaml"))
    assert "evaluation date 2026-03-03 19:00" in wi.output


# -- issue 12: the editor writes what `pack compile` accepts; one signing key -----------------


def test_rules_yaml_of_entries_written_without_an_id_compiles_with_pack_compile(tmp_path):
    from edrules.rules.parse import parse_rules

    no_ids = "name: n\nfrom_policy: strict\nallow:\n  - sender: a@b.cz\n  - domain: c.cz\n    subdomains: true\n"
    text = policy_to_rules_yaml(parse_rules(no_ids))
    assert "allow[" not in text
    (tmp_path / "r.yaml").write_text(text)
    res = _cli("pack", "compile", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    assert [e.id for e in parse_rules(text).allow] == ["allow[0]", "allow[1]"]


def test_rule_editor_round_trip_through_the_parser_keeps_id_comment_subdomains_and_expiry(wb, tmp_path):
    from edrules.rules.parse import parse_rules
    from edrules.workbench.editor import RuleEditor

    ed = RuleEditor(wb, deployed=CURRENT, out_dir=tmp_path)
    row = ed.add_entry("allow", "domain", "partner.cz")
    row.id.value, row.comment.value, row.expires.value = "partner", "ticket 12", "2026-12-31"
    row.subdomains.value = True
    unnamed = ed.add_entry("block", "sender", "x@evil-host.com")  # no id: must still compile
    policy = parse_rules(ed.rules_yaml(), source="editor")
    e = policy.allow[-1]
    assert (e.id, e.value, e.subdomains, e.comment, str(e.expires)) == ("partner", "partner.cz", True, "ticket 12", "2026-12-31")
    assert policy.block[0].value == "x@evil-host.com" and unnamed.id.value == ""
    compiled = ed.compile()
    (tmp_path / "again.yaml").write_text(compiled.rules_path.read_text())
    res = _cli("pack", "compile", str(compiled.rules_path), "-o", str(tmp_path / "again.json"))
    assert res.exit_code == 0, res.output


def test_rule_editor_shows_a_message_and_no_image_for_an_invalid_entry(wb, tmp_path):
    from edrules.workbench.editor import RuleEditor

    ed = RuleEditor(wb, deployed=CURRENT, out_dir=tmp_path)
    row = ed.add_entry("allow", "sender", "not an address")
    assert ed.last is None and ed.figure.layout.display == "none"
    assert "do not compile, so there is no what-if to show" in ed.counts.value
    ed._remove(row)
    assert ed.figure.layout.display == "block" and bytes(ed.figure.value).startswith(b"\x89PNG")


def test_rule_editor_drills_down_into_the_changed_rows_of_a_group(wb, tmp_path):
    from edrules.workbench.editor import RuleEditor

    ed = RuleEditor(wb, deployed=CURRENT, out_dir=tmp_path)
    ed.from_policy.value = "relaxed"
    group = ("quarantine→deliver", "phishing", True)
    assert group in [v for _, v in ed.drill.options]
    ed.drill.value = group
    rows = ed.drill_down(*group)
    assert keys(rows) == [("m05", ALICE)]
    assert "m05" in ed.drill_rows.value and "message 5" in ed.drill_rows.value  # subject, not cut


def test_editor_and_demo_sign_with_the_same_key_folder(tmp_path):
    import inspect

    from edrules import demo

    wb = Workbench(tmp_path / "edrules.duckdb")
    assert wb.key_dir() == tmp_path / "packs" / "keys"
    # the demo's packs default to packs/ next to the database, its key in packs/keys
    assert 'Path(db).parent / "packs"' in inspect.getsource(demo.run_demo)
    assert 'r.packs / "keys"' in inspect.getsource(demo.compile_packs)


def test_editor_app_opens_any_dataset_and_rules_file_and_reports_a_bad_dataset(mini_db, tmp_path):
    from edrules.workbench.editor import EditorApp

    (tmp_path / "r.yaml").write_text(CURRENT)
    app = EditorApp(mini_db, dataset="t", rules=tmp_path / "r.yaml", out_dir=tmp_path)
    assert app.editor is not None and app.editor.deployed.name == "current"
    assert list(app.dataset.options) == ["t"]
    app.dataset.value = "nope"
    assert app.open() is None and "no dataset &#x27;nope&#x27;" in app.message.value


# -- issue 12: consistent CLI, explain ----------------------------------------------------


def test_explain_spells_trusted_authserv_like_ingest_and_keeps_the_old_spelling_hidden():
    from edrules.rules.cli import explain

    opts = {o: p for p in explain.params for o in p.opts}
    assert not opts["--trusted-authserv"].hidden and opts["--trust-authserv"].hidden
    eml = ROOT / "data" / "demo-tenant" / "ham"
    msg = sorted(eml.glob("*.eml"))[0]
    new = _cli("explain", "--trusted-authserv", "mx.northwind-traders.cz", str(msg))
    old = _cli("explain", "--trust-authserv", "mx.northwind-traders.cz", str(msg))
    assert new.exit_code == 0 and new.output == old.output


def test_evaluate_and_explain_take_a_rules_yaml_wherever_they_take_a_pack(mini_db, tmp_path):
    (tmp_path / "r.yaml").write_text(CURRENT)
    ev = _cli("evaluate", "--db", str(mini_db), "--pack", str(tmp_path / "r.yaml"))
    assert ev.exit_code == 0 and "pack current (sql backend)" in ev.output
    msg = sorted((ROOT / "data" / "demo-tenant" / "ham").glob("*.eml"))[0]
    ex = _cli("explain", "--pack", str(tmp_path / "r.yaml"), str(msg))
    assert ex.exit_code == 0 and ex.output.startswith("policy: current (from_policy: strict)")


def test_explain_db_takes_a_message_key_or_the_12_character_prefix_reports_print(tmp_path):
    from edrules.errors import EdrulesError

    db = tmp_path / "e.duckdb"
    Workbench(db, read_only=False).load([ROOT / "data" / "demo-tenant" / "phishing"], dataset="p", jobs=1)
    with Workbench(db, dataset="p") as w:
        key = w.sql("SELECT msg_key FROM messages ORDER BY msg_key LIMIT 1").msg_key[0]
        full, short = w.explain(key, CURRENT), w.explain(key[:12], CURRENT)
        assert len(full) >= 1 and full.equals(short)  # the prefix used to give an empty table
        with pytest.raises(EdrulesError, match="no message with key 'ffffffffffff'"):
            w.explain("ffffffffffff", CURRENT)
    res = _cli("explain", "--db", str(db), key[:12])
    assert res.exit_code == 0, res.output
    assert "evaluation date" in res.output and "policy: default (from_policy: strict)" in res.output


def test_explain_names_allow_entries_that_matched_the_sender_but_did_not_apply_and_why(wb):
    from edrules.rules.explain import explain_facts

    pair = CURRENT.replace("    sender: {OTP}".format(OTP=OTP), f"    sender: {OTP}\n    via: amazonses")
    policy = wb.pack(pair)
    strict = explain_facts(wb.facts_of("m01"), wb.pack(CURRENT), now=wb.now)
    assert strict.not_applied == (
        f"allow entry otp-user-wish names the header From {OTP} but did not apply: the strict "
        "From-policy matches allow entries against the envelope sender only",)
    forged = explain_facts(wb.facts_of("m05"), policy, now=wb.now)  # the brand, not through SES
    assert len(forged.not_applied) == 1 and "via amazonses not authenticated" in forged.not_applied[0]
    assert "not applied: allow entry otp-user-wish" in forged.to_text()
    ok = explain_facts(wb.facts_of("m01"), policy, now=wb.now)
    assert ok.not_applied == ()  # the pair decided


def test_a_locked_dataset_names_the_process_holding_it_and_a_read_only_workbench_never_blocks_ingest(tmp_path):
    import subprocess
    import sys

    from edrules.errors import EdrulesError

    db = build_db(tmp_path / "locked.duckdb", mini_tenant())
    reader = Workbench(db)
    assert reader.overview()["messages"] == 11  # a notebook with the dataset open, read-only
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb,sys,time; c=duckdb.connect(sys.argv[1]); "
                               "print('ready', flush=True); time.sleep(60)", str(db)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"  # so the writer opened despite the reader
        with pytest.raises(EdrulesError) as err:
            Workbench(db).overview()
        assert f"PID {holder.pid}" in str(err.value) and f"kill {holder.pid}" in str(err.value)
        res = subprocess.run([str(Path(sys.executable).with_name("edrules")), "evaluate", "--db", str(db),
                              "--pack", str(ROOT / "data" / "rules" / "current.yaml")],
                             capture_output=True, text=True)
        assert res.returncode == 2 and f"PID {holder.pid}" in res.stderr
    finally:
        holder.kill()
        holder.wait()
    reader.close()


# -- issue 12: charts and tables that tell the truth ------------------------------------------


def _bar_widths(fig) -> set[float]:
    return {round(p.get_width(), 2) for p in fig.axes[0].patches if p.get_height()}


def test_volume_bars_are_as_wide_as_their_bucket(wb):
    from edrules.workbench import plots

    daily = plots.plot_volume(wb.volume(unit="day"))
    weekly = plots.plot_volume(pd.DataFrame({"bucket": pd.to_datetime(["2026-03-02", "2026-03-09"]),
                                             "key": ["ham", "ham"], "recipients": [3, 4]}))
    monthly = plots.plot_volume(pd.DataFrame({"bucket": pd.to_datetime(["2002-01-01", "2002-02-01", "2024-05-01"]),
                                              "key": ["ham", "spam", "ham"], "recipients": [3, 4, 1]}))
    assert _bar_widths(daily) == {0.85} and _bar_widths(weekly) == {5.95} and _bar_widths(monthly) == {25.5}


def test_whatif_chart_draws_newly_stopped_rows_to_the_left_and_says_stopped(wb):
    from edrules.workbench import plots

    stricter = "name: stricter\nfrom_policy: aligned\n"  # aligned stops what strict delivered
    diff = wb.whatif(CURRENT.replace("strict", "relaxed").replace("name: current", "name: relaxed"), stricter)
    assert len(diff.newly_stopped)
    fig = plots.plot_transitions(diff)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    stopped = [i for i, t in enumerate(labels) if t.startswith("newly STOPPED")]
    assert stopped
    widths = {round(p.get_y() + p.get_height() / 2): p.get_width() for p in ax.patches if p.get_width()}
    assert all(widths[i] < 0 for i in stopped)
    assert all(widths[i] > 0 for i in widths if i not in stopped)


def test_tables_show_full_text_and_a_missing_provider_as_a_dash():
    from edrules.workbench.display import numbers_markdown, table_view

    long = "x" * 200
    view = table_view(pd.DataFrame({"reason_after": [long], "bulk_provider": [None], "n": [1]}))
    assert view["reason_after"][0] == long and view["bulk_provider"][0] == "-"
    md = numbers_markdown("c", {"newly_delivered_by_label": {"ham": 3, "phishing": 1}, "total": 4})
    assert "| newly delivered by label · ham | 3 |" in md and "{" not in md


# -- issue 12: what analysts reach for next --------------------------------------------------


def test_whatif_out_writes_rows_and_summary_as_csv_and_parquet(mini_db, packs, tmp_path, wb):
    diff = wb.whatif(packs[0], packs[1])
    for name in ("rows.csv", "rows.parquet"):
        res = _cli("whatif", "--db", str(mini_db), "--pack", str(packs[0]), "--pack", str(packs[1]),
                   "--out", str(tmp_path / name))
        assert res.exit_code == 0, res.output
        read = pd.read_csv if name.endswith(".csv") else pd.read_parquet
        rows = read(tmp_path / name)
        summary = read(tmp_path / name.replace("rows.", "rows.summary."))
        assert len(rows) == diff.changed and sorted(rows["msg_key"]) == sorted(diff.rows["msg_key"])
        assert summary["recipients"].sum() == diff.changed and set(rows["evaluated_at"]) == {diff.now}


def test_whatif_over_time_counts_changed_rows_per_day(wb, mini_db, packs):
    diff = wb.whatif(packs[0], packs[1])
    t = diff.over_time("day")
    assert t["newly_delivered"].sum() == len(diff.newly_delivered)
    assert list(t["bucket"].dt.strftime("%Y-%m-%d")) == ["2026-03-02"]
    res = _cli("whatif", "--db", str(mini_db), "--pack", str(packs[0]), "--pack", str(packs[1]), "--over-time", "day")
    assert "changed rows per day (bucket start):" in res.output and "2026-03-02" in res.output


def test_messages_and_whatif_filter_by_recipient_and_recipient_domain(wb, packs):
    bob = wb.messages(recipient=BOB.upper())
    assert sorted(bob["msg_key"]) == ["m06", "m08", "m09", "m10"]
    assert len(wb.messages(recipient_domain=TENANT)) == 11 and wb.messages(recipient_domain="other.cz").empty
    only_bob = wb.whatif(packs[0], packs[1], recipient=BOB)
    assert set(only_bob.rows["recipient"]) <= {BOB} and only_bob.total == 4
    assert "recipient " + BOB in only_bob.scope


def test_rules_diff_lists_each_change_with_the_whatif_of_that_change_alone(wb, mini_db, tmp_path):
    after = CURRENT.replace("strict", "relaxed") + "  - id: partner\n    domain: partner.cz\n"
    table = wb.diff(CURRENT, after).set_index("what")
    assert table.loc["from_policy", "change"] == "setting"
    alone = wb.whatif(CURRENT, replace(wb.pack(CURRENT), from_policy=FromPolicy.RELAXED)).counts()
    assert table.loc["from_policy", "newly_delivered"] == alone["newly_delivered"]
    assert table.loc["partner", "change"] == "added" and table.loc["partner", "newly_delivered"] == 0
    (tmp_path / "a.yaml").write_text(CURRENT)
    (tmp_path / "b.yaml").write_text(after)
    res = _cli("whatif", "--db", str(mini_db), "--pack", str(tmp_path / "a.yaml"), "--pack", str(tmp_path / "b.yaml"),
               "--by-change")
    assert "rules diff, each change alone against BEFORE:" in res.output and "partner" in res.output


def test_entry_hits_give_hits_last_hit_and_forged_among_them(wb):
    relaxed = CURRENT.replace("strict", "relaxed") + "  - id: unused\n    sender: nobody@nowhere.cz\n"
    hits = wb.hits(relaxed).set_index("entry_id")
    v = wb.evaluate(relaxed)
    mine = v[v["rule_id"] == "otp-user-wish"]
    assert hits.loc["otp-user-wish", "hits"] == len(mine)
    assert hits.loc["otp-user-wish", "last_hit"] == mine["received_at"].max()
    assert hits.loc["otp-user-wish", "forged"] == mine[mine["forged"]]["msg_key"].nunique()
    assert hits.loc["unused", "hits"] == 0 and pd.isna(hits.loc["unused", "last_hit"])


# -- issue 12 acceptance: a corpus the demo does not use --------------------------------------


@pytest.fixture(scope="module")
def public(tmp_path_factory, corpus):
    """SpamAssassin hard_ham (ham) + a phishing_pot subset (read in place, never copied)
    with its two forged future dates, ingested as a new analyst would."""
    db = tmp_path_factory.mktemp("public") / "public.duckdb"
    w = Workbench(db, read_only=False)
    w.load([corpus / "spamassassin_publiccorpus" / "hard_ham"], dataset="public", label="ham", jobs=1)
    pot = sorted((corpus / "phishing_pot").glob("sample-*.eml"))[:250]
    pot += [corpus / "phishing_pot" / "sample-395.eml", corpus / "phishing_pot" / "sample-400.eml"]
    w.load(pot, dataset="public", label="phishing", jobs=1)
    with Workbench(db, dataset="public") as wb_:
        yield wb_


PUBLIC_RULES = """
name: public-current
from_policy: strict
allow:
  - sender: nic@starflung.com
    comment: written from docs/rules.md alone
"""


@pytest.mark.corpus
def test_corpus_dataset_runs_suggest_whatif_exposure_compare_and_the_editor_round_trip(public, tmp_path):
    from edrules.rules.parse import parse_rules
    from edrules.workbench.editor import RuleEditor

    wb_ = public
    assert wb_.now < datetime(2027, 1, 1) and wb_.now_used.outliers >= 1  # the 2031 Date: is ignored
    current = wb_.pack(PUBLIC_RULES)
    held_ham = wb_.messages(label="ham", pack=current, action="quarantine")
    assert len(held_ham) > MAX_FOR_A_FIX
    many = wb_.suggest(held_ham, current)  # too many senders: says why instead of nothing
    assert not many.candidates and "more than 20 is a new policy" in many.why_none
    one = wb_.suggest(held_ham.msg_key[:1], current)
    assert one.best.delivers == one.best.targets == 1 and one.best.safe
    delivered = wb_.messages(label="ham", pack=current, action="deliver")
    assert wb_.suggest(delivered.msg_key[:1], current).candidates  # used to raise KeyError
    relaxed = wb_.pack(PUBLIC_RULES.replace("strict", "relaxed").replace("public-current", "public-relaxed"))
    aligned = wb_.pack(PUBLIC_RULES.replace("strict", "aligned").replace("public-current", "public-aligned"))
    diff = wb_.whatif(current, relaxed)
    assert diff.total == wb_.overview()["recipients"] and diff.changed > 0
    assert diff.counts()["newly_delivered_by_label"].get("phishing", 0) >= 0
    comparison = wb_.compare(current, [aligned, relaxed])
    assert list(comparison["pack"]) == ["public-aligned", "public-relaxed"]
    assert comparison.iloc[1]["newly_delivered"] == len(diff.newly_delivered)
    exposure = wb_.exposure(relaxed)
    assert list(exposure["entry_id"]) == ["allow[0]"]
    ed = RuleEditor(wb_, deployed=current, out_dir=tmp_path)
    ed.add_entry("allow", "domain", "spamassassin.taint.org").comment.value = "list mail"
    ed.from_policy.value = "aligned"
    assert ed.last is not None
    text = ed.rules_yaml()
    assert parse_rules(text).from_policy.value == "aligned"
    compiled = ed.compile()
    res = _cli("pack", "compile", str(compiled.rules_path), "-o", str(tmp_path / "p.json"))
    assert res.exit_code == 0, res.output
    assert wb_.verify(compiled).metadata["whatif"]["counts"] == ed.last.counts()


MAX_FOR_A_FIX = 20


def test_readme_whatif_and_evaluate_output_fits_100_columns_and_uses_the_current_headers(mini_db, packs):
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(readme) if line.startswith("$ edrules whatif"))
    end = next(i for i in range(start + 1, len(readme)) if readme[i].startswith("$ "))
    block = readme[start + 1:end]
    assert block and max(len(line) for line in block) <= 100
    ours = _cli("whatif", "--db", str(mini_db), "--pack", str(packs[0]), "--pack", str(packs[1]), "--limit", "3")
    shown_headers = [line for line in ours.output.splitlines() if line.endswith(":") or line.startswith(
        ("transition ", "msg_key "))]
    for header in shown_headers:
        head = header.split(" (")[0] if header.startswith("changed rows") else header.split()[0]
        assert any(line.startswith(head) for line in block), header
    assert any(line.startswith("evaluation date ") for line in block)


def test_the_evaluation_date_keeps_the_last_days_of_a_years_long_steady_dataset(tmp_path):
    from edrules.backends.evalscope import default_now

    con = duckdb.connect()
    con.execute("CREATE TABLE messages AS SELECT 't' AS dataset, "
                "TIMESTAMP '2022-01-01' + INTERVAL (i) HOUR * 6 AS received_at FROM range(4380) r(i)")
    newest = con.execute("SELECT max(received_at) FROM messages").fetchall()[0][0]
    got = default_now(con, clock=datetime(2026, 1, 1))
    assert got.newest == newest and got.outliers == 0  # 3 years: the last 1% spans 11 days
    con.execute("INSERT INTO messages VALUES ('t', TIMESTAMP '2025-12-20')")  # a year past the rest
    assert default_now(con, clock=datetime(2026, 1, 1)).newest == newest
