"""edrules demo: the demo database built from data/, checked against independent counts."""

from __future__ import annotations

import csv
import re
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from edrules.backends.sql import evaluate_sql
from edrules.cli import cli
from edrules.demo import DATA, SAMPLE_LABELS, STEPS, TENANT_LABELS, run_demo
from edrules.rules.parse import parse_rules_file
from edrules.synth.world import OUTBOUND, OUTBOUND_IP, PARCEL_FROM

_parser = BytesHeaderParser(policy=compat32)
NOT_MAIL = re.compile(r"^(licen[cs]e|copying|mit-license|readme)", re.I)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo run into a fresh database, with the tenant missing so the demo generates it."""
    tmp = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    run = run_demo(tmp / "edrules.duckdb", tenant=tmp / "tenant", echo=lines.append, jobs=1)
    return run, lines


@pytest.fixture
def con(demo):
    connection = duckdb.connect(str(demo[0].db), read_only=True)
    yield connection
    connection.close()


def _scalar(con, sql: str, *params) -> int:
    return con.execute(sql, list(params)).fetchall()[0][0]


def _file_recipients(path: Path) -> int:
    """Recipients as the gateway delivered them: Delivered-To for one, else To and Cc."""
    h = _parser.parsebytes(path.read_bytes())
    if h["Delivered-To"]:
        return 1
    return len(getaddresses(h.get_all("To", []) + h.get_all("Cc", [])))


def test_the_demo_generates_the_missing_tenant_and_ingests_every_message_file(demo, con):
    run, _lines = demo
    for label in TENANT_LABELS:
        files = sorted((run.tenant / label).glob("*.eml"))
        assert files, label
        assert _scalar(con, "SELECT count(*) FROM messages WHERE dataset = 'demo' AND category = ?", label) == len(files)
        assert _scalar(con, """SELECT count(*) FROM recipients r JOIN messages m USING (dataset, msg_key)
                               WHERE m.dataset = 'demo' AND m.category = ?""", label) == sum(
            _file_recipients(f) for f in files)
    assert _scalar(con, "SELECT count(*) FROM ingest_errors") == 0


def test_the_sample_is_ingested_with_its_folder_labels(demo, con):
    run, _lines = demo
    for rel, label in SAMPLE_LABELS.items():
        files = sum(1 for p in (run.sample / rel).iterdir() if p.is_file())
        got = con.execute("""SELECT category, count(*) FROM messages
                             WHERE dataset = 'sample' AND source LIKE ? GROUP BY ALL""", [f"%/{rel}/%"]).fetchall()
        assert got == [(label, files)], rel
    mail_files = [p for p in run.sample.rglob("*") if p.is_file() and not NOT_MAIL.match(p.name)]
    assert _scalar(con, "SELECT count(*) FROM messages WHERE dataset = 'sample'") == len(mail_files)


def test_the_quarantine_export_loads_as_one_row_per_quarantined_message(demo, con):
    run, _lines = demo
    with (run.tenant / "quarantine.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert _scalar(con, "SELECT count(*) FROM messages WHERE dataset = 'demo-quarantine'") == len(rows)
    assert _scalar(con, "SELECT count(*) FROM recipients WHERE dataset = 'demo-quarantine'") == sum(
        len(r["recipient"].split(";")) for r in rows)
    assert _scalar(con, """SELECT count(*) FROM messages WHERE dataset = 'demo-quarantine'
                           AND quarantine_state = 'quarantined'""") == len(rows)
    # each row names its .eml, so it is the same message (same key, same gateway time) as in the folders
    assert _scalar(con, """SELECT count(*) FROM messages q JOIN messages d
                           ON d.msg_key = q.msg_key AND d.dataset = 'demo' AND d.received_at = q.received_at
                           WHERE q.dataset = 'demo-quarantine'""") == len(rows)


def test_the_printed_summary_matches_an_independent_count(demo, con):
    _run, lines = demo
    start = lines.index(next(line for line in lines if "dataset summary" in line))
    printed = {}
    for line in lines[start + 2:]:
        if line.startswith("["):
            break
        dataset, label, messages, recipients = line.split()
        printed[(dataset, label)] = (int(messages), int(recipients))
    per_message = dict(((d, c), n) for d, c, n in con.execute(
        "SELECT dataset, coalesce(category, '(none)'), count(*) FROM messages GROUP BY ALL").fetchall())
    per_rcpt = dict(((d, c), n) for d, c, n in con.execute(
        """SELECT m.dataset, coalesce(m.category, '(none)'), count(*) FROM recipients r
           JOIN messages m ON m.dataset = r.dataset AND m.msg_key = r.msg_key GROUP BY ALL""").fetchall())
    assert printed == {k: (per_message[k], per_rcpt.get(k, 0)) for k in per_message}
    assert {("demo", "ham"), ("demo-quarantine", "spam"), ("sample", "(none)")} <= set(printed)


def _verdicts(con, rules: str, tenant: Path):
    policy = parse_rules_file(DATA / "rules" / rules)
    con.register("v", evaluate_sql(con, policy, dataset="demo"))
    try:
        return con.execute(
            """SELECT regexp_extract(m.source, '[^/]+/[^/]+$') AS eml, v.recipient, v.action, v.rule_id
               FROM v JOIN messages m ON m.dataset = v.dataset AND m.msg_key = v.msg_key""").fetchall()
    finally:
        con.unregister("v")


def test_the_current_rules_reproduce_the_gateways_quarantine_export(demo, con):
    run, _lines = demo
    held = {(eml, rcpt) for eml, rcpt, action, _rule in _verdicts(con, "current.yaml", run.tenant)
            if action == "quarantine"}
    with (run.tenant / "quarantine.csv").open(newline="", encoding="utf-8") as f:
        exported = {(row["eml"], rcpt) for row in csv.DictReader(f) for rcpt in row["recipient"].split(";")}
    assert held == exported and len(held) > 100


def test_the_printed_rules_table_lists_every_rules_file_and_the_exports_held_count(demo):
    run, lines = demo
    table = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in lines
             if line.strip().endswith(tuple("0123456789")) and ".yaml" in line}
    assert set(table) == {p.name for p in (DATA / "rules").glob("*.yaml")}
    with (run.tenant / "quarantine.csv").open(newline="", encoding="utf-8") as f:
        held = sum(len(row["recipient"].split(";")) for row in csv.DictReader(f))
    delivered, quarantined, ham_held, bad_delivered = table["current.yaml"]
    assert quarantined == held and bad_delivered == 0 and ham_held > 0
    assert table["fix-relaxed.yaml"][3] > 0 and table["fix-aligned.yaml"][3] == 0


def test_aligned_fixes_the_otp_case_while_relaxed_and_the_pair_let_the_parcel_forgery_in(demo, con):
    run, _lines = demo
    for rules in ("current.yaml", "fix-aligned.yaml", "fix-pair.yaml", "fix-relaxed.yaml"):
        v = _verdicts(con, rules, run.tenant)
        otp = {a for eml, _r, a, _id in v if eml.endswith("-ses_otp.eml")}
        forged = [(eml, r, a) for eml, r, a, _id in v if eml.endswith("-ses_forged_brand.eml")]
        parcel_forged = {a for eml, r, a in forged if PARCEL_FROM in (run.tenant / eml).read_text()}
        other_forged = {a for eml, r, a in forged if PARCEL_FROM not in (run.tenant / eml).read_text()}
        assert otp == ({"quarantine"} if rules == "current.yaml" else {"deliver"}), rules
        assert other_forged == {"quarantine"}, rules
        assert parcel_forged == ({"deliver"} if rules in ("fix-pair.yaml", "fix-relaxed.yaml") else {"quarantine"}), rules


def test_the_catalog_finds_the_sending_networks_the_tenant_readme_lists(demo, con):
    run, _lines = demo
    section = (run.tenant / "README.md").read_text().split("## Sending networks", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")][1:]
    readme = {(cells[0].strip(), label): int(n) for cells in rows
              for label, n in zip(TENANT_LABELS, cells[1:])}
    provider = {"Amazon SES": "amazonses", "Mailchimp": "mailchimp"}
    for (network, label), n in readme.items():
        where = f"bulk_provider = '{provider[network]}'" if network in provider else "bulk_provider IS NULL"
        assert _scalar(con, f"SELECT count(*) FROM messages WHERE dataset = 'demo' AND category = ? AND {where}",
                       label) == n, (network, label)


def test_the_client_ip_comes_from_the_gateway_hop_not_the_senders_own_hop(demo, con):
    _run, _lines = demo
    rows = con.execute("""SELECT DISTINCT client_ip, helo FROM messages
                          WHERE dataset = 'demo' AND source LIKE '%-colleague.eml'""").fetchall()
    assert rows == [(OUTBOUND_IP, OUTBOUND)]


def test_running_an_ingest_step_again_adds_nothing(demo):
    run, _lines = demo

    def count() -> int:
        with duckdb.connect(str(run.db), read_only=True) as c:
            return _scalar(c, "SELECT count(*) FROM messages")

    before = count()
    quarantine = next(s for s in STEPS if s.name == "quarantine")
    again = run_demo(run.db, tenant=run.tenant, echo=lambda _line: None, jobs=1, steps=(quarantine,))
    summary = again.summaries[0][1]
    assert count() == before and summary.duplicates == summary.messages > 0


def test_every_example_rules_file_parses():
    names = sorted(p.name for p in (DATA / "rules").glob("*.yaml"))
    assert names == ["current.yaml", "fix-aligned.yaml", "fix-bulk-amazonses.yaml", "fix-pair.yaml", "fix-relaxed.yaml"]
    for name in names:
        assert parse_rules_file(DATA / "rules" / name).allow


def test_the_bundled_sample_keeps_licences_and_has_nothing_from_phishing_pot():
    folders = sorted(p for p in (DATA / "sample").iterdir() if p.is_dir())
    assert "phishing_pot" not in {p.name for p in folders}
    readme = (DATA / "README.md").read_text()
    for folder in folders:
        assert f"`{folder.name}/`" in readme, folder.name
        if folder.name != "seed_example":
            assert any(NOT_MAIL.match(p.name) for p in folder.iterdir()), f"no licence file in {folder.name}"


def test_the_bundled_sample_files_are_byte_identical_to_the_corpus(corpus):
    for path in (DATA / "sample").rglob("*"):
        if path.is_file():
            assert path.read_bytes() == (corpus / path.relative_to(DATA / "sample")).read_bytes(), path


def test_the_demo_command_is_available_from_the_cli():
    result = CliRunner().invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0 and "--db" in result.output and "--tenant" in result.output


def test_the_demo_signs_every_example_pack_and_they_verify_with_its_public_key(demo):
    from edrules.pack import load_pack

    run, lines = demo
    public = run.packs / "keys" / "edrules-pack.pub"
    for rules_file in sorted(run.rules.glob("*.yaml")):
        loaded = load_pack(run.packs / f"{rules_file.stem}.json", pubkey_path=public)
        assert loaded.policy == parse_rules_file(rules_file)
        assert any(f"{rules_file.stem}.json" in line and loaded.signed_by in line for line in lines)


def test_the_demo_whatif_counts_equal_a_runtime_backend_replay_of_both_packs(demo, con):
    from datetime import timedelta

    from edrules.backends.runtime import RuntimeEvaluator
    from edrules.ingest import read_facts

    run, lines = demo
    facts = read_facts(con, dataset="demo")
    # the workbench evaluates at a day after the newest message; expiry is the only use of `now`
    now = max(f.received_at for f in facts if f.received_at) + timedelta(days=1)
    before = RuntimeEvaluator(parse_rules_file(run.rules / "current.yaml"))
    after = RuntimeEvaluator(parse_rules_file(run.rules / "fix-aligned.yaml"))
    changed = newly_delivered = 0
    for f in facts:
        for b, a in zip(before.evaluate(f, now=now), after.evaluate(f, now=now)):
            if b.action != a.action:
                changed += 1
                newly_delivered += a.action == "deliver"
    assert changed > 0
    summary = next(line for line in lines if line.strip().startswith("changed:"))
    assert f"changed: {changed} " in summary
    assert f"newly delivered: {newly_delivered} " in summary
