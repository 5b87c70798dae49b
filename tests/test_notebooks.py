"""Execute every analyst notebook against data/ and check the numbers they show against plain SQL."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import duckdb
import nbformat
import pytest
from nbclient import NotebookClient

from edrules.pack import load_pack
from edrules.workbench.display import NUMBERS_MIME

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
ORDER = ("01-load-data", "02-explore-traffic", "03-allowlist-whatif", "04-from-policy",
         "05-bulk-mailers", "06-compile-and-deploy")
TENANT = "northwind-traders.cz"
MARTIN, EVA = f"martin.kral@{TENANT}", f"eva.horakova@{TENANT}"
OTP = "donotreply@someotpsite.cz"

# The rule facts below are written out here in plain SQL, on purpose apart from the
# workbench and the SQL backend, so a wrong number in a notebook cannot agree with itself.
ROWS = "FROM recipients r JOIN messages m USING (dataset, msg_key) WHERE r.dataset = 'demo'"
ENV_ORG = "CASE WHEN m.envelope_from = '' THEN m.helo_org ELSE m.envelope_from_org END"
HEADER_OK = ("NOT m.from_invalid AND NOT coalesce(m.dmarc = 'fail' "
             "AND m.dmarc_policy IN ('quarantine', 'reject'), FALSE)")
STRICT_FORGERY = f"(m.from_invalid OR m.header_from_org <> {ENV_ORG})"
ALIGNED = (f"(coalesce(m.dmarc = 'pass', FALSE) OR coalesce(m.spf = 'pass' AND {ENV_ORG} = m.header_from_org, FALSE)"
           " OR coalesce(list_bool_or(list_transform(m.dkim, lambda d: d.result = 'pass'"
           " AND d.org = m.header_from_org)), FALSE))")


def run(nb_name: str, env: dict[str, str]) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / f"{nb_name}.ipynb", as_version=4)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)  # the kernel inherits the environment
        NotebookClient(nb, timeout=300, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def numbers(nb: nbformat.NotebookNode) -> dict[str, dict]:
    out = {}
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            payload = o.get("data", {}).get(NUMBERS_MIME)
            if payload:
                out[payload["name"]] = payload["values"]
    return out


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """All notebooks, in order, against a fresh database that notebook 01 builds from data/
    with the demo's ingest steps."""
    tmp = tmp_path_factory.mktemp("notebooks")
    env = {"EDRULES_DB": str(tmp / "edrules.duckdb"), "EDRULES_OUT": str(tmp / "out"),
           "EDRULES_DATA": str(ROOT / "data")}
    if os.environ.get("EDRULES_SCREENSHOTS"):  # EDRULES_SCREENSHOTS=DIR saves every figure there
        env["EDRULES_SCREENSHOTS"] = os.environ["EDRULES_SCREENSHOTS"]
    books = {name: run(name, env) for name in ORDER}
    con = duckdb.connect(env["EDRULES_DB"], read_only=True)
    yield books, {name: numbers(nb) for name, nb in books.items()}, con, tmp, env
    con.close()


def one(con, sql: str) -> int:
    return con.execute(sql).fetchall()[0][0]


@pytest.mark.parametrize("name", ORDER)
def test_every_notebook_runs_without_errors_and_draws_its_main_figure(executed, name):
    books = executed[0]
    outputs = [o for c in books[name].cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_notebooks_are_what_build_py_generates():
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        import build
    finally:
        sys.path.pop(0)
    assert build.main(check=True) == 0


def test_01_shows_the_demo_tenant_counts_that_the_files_and_plain_sql_give(executed):
    _, nums, con, _, _ = executed
    shown = nums["01-load-data"]["demo tenant"]
    files = {label: len(list((ROOT / "data" / "demo-tenant" / label).glob("*.eml")))
             for label in ("ham", "spam", "phishing", "malware")}
    assert shown["labels"] == files
    assert shown["messages"] == sum(files.values()) == one(con, "SELECT count(*) FROM messages WHERE dataset = 'demo'")
    assert shown["recipients"] == one(con, "SELECT count(*) FROM recipients WHERE dataset = 'demo'")
    assert shown["ingest_errors"] == one(con, "SELECT count(*) FROM ingest_errors WHERE dataset = 'demo'") == 0


def test_02_deployed_policy_quarantines_exactly_the_rows_of_the_gateways_quarantine_export(executed):
    _, nums, con, _, _ = executed
    shown = nums["02-explore-traffic"]["deployed policy"]
    assert shown["quarantine"] == one(con, "SELECT count(*) FROM recipients WHERE dataset = 'demo-quarantine'")
    assert shown["deliver"] + shown["quarantine"] == shown["recipients"] == one(con, f"SELECT count(*) {ROWS}")


def test_02_quarantine_export_matches_the_deployed_policy_row_for_row(executed):
    _, nums, con, _, _ = executed
    shown = nums["02-explore-traffic"]["quarantine export match"]
    export = one(con, "SELECT count(*) FROM recipients WHERE dataset = 'demo-quarantine'")
    assert shown["export_rows"] == shown["quarantined_rows"] == shown["in_both"] == export
    assert shown["only_in_export"] == shown["only_quarantined"] == 0


def test_02_says_what_docs_rules_md_says_brand_dkim_does_not_rescue_bulk_mail_under_strict(executed):
    books, _, con, _, _ = executed
    text = "\n".join(c.source for c in books["02-explore-traffic"].cells if c.cell_type == "markdown")
    assert "even when the brand's own DKIM" in text and "unless the brand's own DKIM" not in text
    # the fact behind it, in plain SQL: brand-signed (aligned DKIM pass) SES ham that strict
    # still calls a forgery (header From org differs from the envelope org)
    brand_signed_forgeries = one(con, f"""SELECT count(*) FROM messages m WHERE dataset = 'demo'
        AND bulk_provider = 'amazonses' AND category = 'ham' AND {STRICT_FORGERY}
        AND list_bool_or(list_transform(m.dkim, lambda d: d.result = 'pass' AND d.org = m.header_from_org))""")
    assert brand_signed_forgeries > 0


def test_committed_notebooks_are_executed_and_their_numbers_equal_a_fresh_run(executed):
    books, nums, _, _, _ = executed
    for name in ORDER:
        committed = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        code = [c for c in committed.cells if c.cell_type == "code"]
        assert all(c.get("outputs") for c in code), f"{name} is committed without outputs"
        assert any("image/png" in o.get("data", {}) for c in code for o in c["outputs"])
        assert numbers(committed) == nums[name], f"{name}: committed outputs differ from a fresh run"


def test_02_and_05_show_amazonses_numbers_plain_sql_agrees_with(executed):
    _, nums, con, _, _ = executed
    ses = "FROM messages m WHERE dataset = 'demo' AND bulk_provider = 'amazonses'"
    for nb in ("02-explore-traffic", "05-bulk-mailers"):
        shown = nums[nb]["amazonses"]
        assert shown["messages"] == one(con, f"SELECT count(*) {ses}")
        assert shown["spf_pass"] == one(con, f"SELECT count(*) {ses} AND spf = 'pass'")
        assert shown["dmarc_pass"] == one(con, f"SELECT count(*) {ses} AND dmarc = 'pass'")
        assert shown["aligned"] == one(con, f"SELECT count(*) {ses} AND {ALIGNED}")
        assert shown["label_phishing"] == one(con, f"SELECT count(*) {ses} AND category = 'phishing'")


def test_03_best_fix_delivers_every_quarantined_otp_code_and_nothing_else_and_outranks_relaxed(executed):
    _, nums, con, _, _ = executed
    shown = nums["03-allowlist-whatif"]["someotpsite suggestions"]
    # the OTP codes: ham from the brand, each in the gateway's quarantine export
    otp_rows = one(con, f"""SELECT count(*) {ROWS} AND m.category = 'ham' AND m.header_from = '{OTP}'
        AND m.message_id IN (SELECT message_id FROM messages WHERE dataset = 'demo-quarantine')""")
    assert shown["targets"] == shown["best_delivers"] == otp_rows == 15
    assert shown["best_kind"] == "pair: header From via provider"
    assert shown["best"] == f"allow sender {OTP} via amazonses [user:{MARTIN}]"
    # the pair's reach in plain SQL: that From, SES authenticated, Martin, header not DMARC-refused
    pair_reach = one(con, f"""SELECT count(*) {ROWS} AND m.header_from = '{OTP}' AND r.recipient = '{MARTIN}'
        AND {HEADER_OK} AND m.category <> 'malware' AND m.spf = 'pass'
        AND (m.envelope_from_domain = 'amazonses.com' OR m.envelope_from_domain LIKE '%.amazonses.com')""")
    assert shown["best_new_other"] == pair_reach - otp_rows == 0
    assert shown["best_safe"] is True
    assert shown["relaxed_rank"] > 1 and shown["relaxed_delivers"] == otp_rows


def test_03_relaxed_whatif_shows_the_forged_parcel_notices_it_lets_in(executed):
    _, nums, con, _, _ = executed
    shown = nums["03-allowlist-whatif"]["relaxed what-if"]
    forged_parcel = one(con, f"""SELECT count(*) {ROWS} AND m.category = 'phishing' AND r.recipient = '{EVA}'
        AND m.header_from = 'notifikace@parcelzone.cz' AND {HEADER_OK}""")
    assert shown["newly_delivered_by_label"]["phishing"] == forged_parcel == 3
    assert nums["03-allowlist-whatif"]["someotpsite suggestions"]["relaxed_new_phishing"] == forged_parcel
    # strict quarantined these ham rows as forgeries; relaxed believes their From unless DMARC refuses it
    ham = one(con, f"SELECT count(*) {ROWS} AND m.category = 'ham' AND {STRICT_FORGERY} AND {HEADER_OK}")
    assert shown["newly_delivered_by_label"]["ham"] == ham
    assert shown["newly_delivered"] == ham + forged_parcel and shown["newly_stopped"] == 0
    assert shown["newly_delivered_forged"] >= forged_parcel


def test_04_aligned_delivers_only_authenticated_ham_and_relaxed_adds_the_forged_rest(executed):
    _, nums, con, _, _ = executed
    aligned, relaxed = nums["04-from-policy"]["aligned vs strict"], nums["04-from-policy"]["relaxed vs strict"]
    aligned_ham = one(con, f"SELECT count(*) {ROWS} AND m.category = 'ham' AND {STRICT_FORGERY} AND {ALIGNED}")
    assert aligned["newly_delivered"] == aligned["ham_authenticated"] == aligned_ham == 59
    assert aligned["forged"] == aligned["phishing"] == aligned["spam"] == 0
    beyond = nums["04-from-policy"]["aligned to relaxed"]
    assert beyond["newly_delivered"] == relaxed["newly_delivered"] - aligned["newly_delivered"]
    assert beyond["newly_delivered_forged"] == beyond["newly_delivered"]  # everything relaxed adds is forged


def test_05_bulk_allow_delivers_ses_ham_but_no_ses_phishing(executed):
    _, nums, con, _, _ = executed
    shown = nums["05-bulk-mailers"]["bulk allow amazonses"]
    ses_ham = one(con, f"SELECT count(*) {ROWS} AND m.category = 'ham' AND m.bulk_provider = 'amazonses' AND {STRICT_FORGERY}")
    assert shown["newly_delivered"] == shown["newly_delivered_by_label"]["ham"] == ses_ham == 26
    assert "phishing" not in shown["newly_delivered_by_label"]


def test_06_signed_pack_verifies_and_its_metadata_whatif_equals_the_recomputed_one(executed):
    _, nums, con, tmp, _ = executed
    shown = nums["06-compile-and-deploy"]
    assert shown["pack"] == {"name": "northwind-otp-pair", "signed": True, "whatif_against": "northwind-current"}
    assert shown["pack metadata what-if"] == shown["recomputed what-if"]
    assert shown["recomputed what-if"]["newly_delivered"] == nums["03-allowlist-whatif"]["someotpsite suggestions"]["targets"]
    # signed with the key `edrules demo` uses: packs/keys next to the database
    loaded = load_pack(tmp / "out" / "northwind-otp-pair.json", pubkey_path=tmp / "packs" / "keys" / "edrules-pack.pub")
    assert loaded.metadata["whatif"]["counts"] == shown["recomputed what-if"]
    assert [e.id for e in loaded.policy.allow][-1] == "suggest-1"


def test_notebook_output_is_identical_when_run_twice(executed):
    books, _, _, _, env = executed
    again = run("04-from-policy", env)

    def outputs(nb):
        return [[{k: v for k, v in o.items() if k != "execution_count"} for o in c.get("outputs", [])]
                for c in nb.cells]

    assert outputs(again) == outputs(books["04-from-policy"])


def test_suggest_for_the_single_ticket_message_ranks_a_safe_pair_above_relaxed(executed):
    from edrules.workbench import CandidateKind, Tier, Workbench

    _, _, con, _, env = executed
    ticket = con.execute(f"""SELECT m.msg_key FROM messages m WHERE m.dataset = 'demo' AND m.header_from = '{OTP}'
        AND m.category = 'ham' ORDER BY m.received_at LIMIT 1""").fetchall()[0][0]
    with Workbench(env["EDRULES_DB"], dataset="demo") as wb:
        s = wb.suggest([ticket], wb.pack(ROOT / "data" / "rules" / "current.yaml"))
    best, relaxed = s.best, s.find(CandidateKind.FROM_RELAXED)
    assert best.tier is Tier.SAFE_FIX and best.new_forged == 0 and best.new_by_label.get("phishing", 0) == 0
    assert best.kind is CandidateKind.PAIR_PROVIDER and best.delivers == 1
    assert relaxed.tier is Tier.RISKY and s.rank_of(CandidateKind.FROM_RELAXED) > s.rank_of(best.kind, str(best.scope))
    # the pair for Martin delivers all 14 other OTP codes too: durable, unlike the one-off envelope sender
    assert best.new_other == 14 and best.new_by_label == {"ham": 14}
    assert not s.find(CandidateKind.ENVELOPE_SENDER, str(best.scope)).durable


def test_06_deployed_to_the_gateway_runtime_the_pack_delivers_the_otp_codes_and_holds_the_phishing(executed):
    _, nums, con, _, _ = executed
    shown = nums["06-compile-and-deploy"]["gateway replay"]
    otp_from = f"FROM recipients r JOIN messages m USING (dataset, msg_key) WHERE r.dataset = 'demo' AND m.header_from = '{OTP}'"
    rows = one(con, f"SELECT count(*) {otp_from}")
    assert shown["messages"] == one(con, f"SELECT count(DISTINCT msg_key) {otp_from}")
    # the gateway serving today's pack holds every one of them, each in its quarantine store
    assert shown["today"] == {"quarantine": rows} and shown["store_today"] == rows
    # serving the new pack it delivers exactly what the signed what-if promised, by the new entry,
    # and still holds the mail claiming that From without passing DMARC (the phishing)
    whatif = nums["06-compile-and-deploy"]["recomputed what-if"]
    ham = one(con, f"SELECT count(*) {otp_from} AND m.category = 'ham'")
    held = one(con, f"SELECT count(*) {otp_from} AND coalesce(m.dmarc, '') <> 'pass'")
    assert shown["new"]["deliver"] == whatif["newly_delivered"] == ham == 15
    assert shown["new_delivered_by_rule"] == {"suggest-1": ham}
    assert shown["new"]["quarantine"] == shown["store_new"] == held == rows - ham
    assert one(con, f"SELECT count(*) {otp_from} AND coalesce(m.dmarc, '') <> 'pass' AND m.category = 'phishing'") == held
