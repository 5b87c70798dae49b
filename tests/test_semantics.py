"""The rule tables (edrules/rules/semantics.py) are complete and mean the same to both renderers:
every kind has a matcher and identities, every gate and placeholder names a real column, and a
template rendered by DuckDB reads exactly as the Python rendering the runtime uses."""

from __future__ import annotations

import duckdb
import pytest

from edrules.derive import DERIVED_COLUMNS, DERIVED_TYPES
from edrules.facts import MessageFacts
from edrules.rules import semantics as sem
from edrules.rules.model import EntryKind, FromPolicy, ListKind
from edrules.schema import REQUIRED_COLUMNS

COLUMNS = set(REQUIRED_COLUMNS["messages"])
BOOLEAN_COLUMNS = {c for c in DERIVED_COLUMNS if DERIVED_TYPES[c] == "BOOLEAN"} | {"from_invalid"}


def test_every_entry_kind_has_a_matcher_and_at_least_one_identity_of_a_stored_column():
    for kind in EntryKind:
        assert kind in sem.KIND_MATCHERS, kind
        fields = [i.field for i in sem.IDENTITIES if i.kind is kind]
        assert fields, f"{kind}: no identity to match"
        assert set(fields) <= COLUMNS, set(fields) - COLUMNS


def test_identity_fields_are_facts_or_derived_columns_and_list_ones_are_lists():
    names = set(MessageFacts.column_names()) | set(DERIVED_COLUMNS)
    for i in sem.IDENTITIES:
        assert i.field in names, i
        if i.many:
            assert i.field == "from_mailboxes" or DERIVED_TYPES.get(i.field) == "VARCHAR[]", i


@pytest.mark.parametrize("mode", list(FromPolicy))
def test_every_gate_is_a_boolean_column_or_always_or_via(mode):
    for g in sem.GATES:
        gate = g.under(mode)
        assert gate is None or gate in (sem.ALWAYS, sem.VIA) or gate in BOOLEAN_COLUMNS, (g, mode)


def test_the_gates_table_is_the_documented_one():
    """docs/rules.md "Identities an allow entry may match", read off the table."""
    def gate(mode, lst, form, field):
        return sem.gates_for(mode, lst, form).get(field)

    assert gate(FromPolicy.STRICT, ListKind.ALLOW, "plain", "header_from") is None  # strict ignores the header
    assert gate(FromPolicy.STRICT, ListKind.ALLOW, "plain", "envelope_from") == "env_ok"
    assert gate(FromPolicy.ALIGNED, ListKind.ALLOW, "plain", "header_from") == "header_aligned"
    assert gate(FromPolicy.ALIGNED, ListKind.ALLOW, "plain", "envelope_from_domain") == "env_spf_ok"
    assert gate(FromPolicy.RELAXED, ListKind.ALLOW, "plain", "header_from_domain") == "header_ok"
    for mode in FromPolicy:
        assert gate(mode, ListKind.ALLOW, "plain", "from_mailboxes") is None  # allow never reads a broken From
        assert gate(mode, ListKind.BLOCK, "plain", "from_mailboxes") == "from_invalid"
        assert gate(mode, ListKind.BLOCK, "plain", "header_from") == sem.ALWAYS
        for lst in ListKind:
            assert sem.gates_for(mode, lst, "pair") == {"header_from": sem.VIA, "header_from_domain": sem.VIA}


def test_forgery_terms_read_boolean_columns_and_every_mode_refuses_a_failed_header():
    for mode, terms in sem.FORGERY.items():
        assert ("header_ok", True) in terms, mode
        for col, _ in terms:
            assert col in BOOLEAN_COLUMNS, (mode, col)


def _placeholders_known(template: str, extra: set[str]) -> set[str]:
    return set(sem.placeholders(template)) - COLUMNS - extra


def test_every_template_placeholder_is_a_column_or_a_documented_name():
    entry = {"list", "entry", "identity", "value", "entry_id", "mode", "proof"}
    for step in sem.STEPS.values():
        assert not _placeholders_known(step.reason, entry), step
        assert not _placeholders_known(step.rule_id, entry), step
    for _, _, template in sem.FORGERY_REASONS:
        assert not _placeholders_known(template, {"mode"}), template
        assert template.endswith("From-policy")
    for check in sem.CHECKS.values():
        assert not _placeholders_known(check.proof, {"dkim_d", "via"}), check
    assert set(sem.placeholders(sem.PROVIDER_PROOF)) == {"via", "proof"}


@pytest.mark.parametrize("template", [
    *(s.reason for s in sem.STEPS.values() if s.reason),
    *(t for _, _, t in sem.FORGERY_REASONS),
    *(c.proof for c in sem.CHECKS.values()),
    sem.PROVIDER_PROOF, sem.ENTRY_PROOF, "it's {a}'s {b}", "{a}{b}", "no placeholder", "",
])
def test_duckdb_renders_every_template_exactly_as_python_does(template):
    con = duckdb.connect()
    names = sem.placeholders(template)
    for values in ({n: f"v'{i}" for i, n in enumerate(names)}, {n: None for n in names},
                   {n: (True if i % 2 else "ü.example") for i, n in enumerate(names)}):
        want = sem.render(template, values)
        expr = sem.render_sql(template, lambda n: "NULL" if values[n] is None else (
            "TRUE" if values[n] is True else sem.sql_literal(values[n])))
        assert con.execute(f"SELECT {expr}").fetchall()[0][0] == want.replace("True", "true"), template


def test_describe_entry_names_kind_value_subdomains_via_and_scope():
    from edrules.rules.parse import parse_rules

    p = parse_rules("allow:\n  - {domain: Example.COM, subdomains: true, via: ses, id: x,"
                    " scope: 'user:a@corp.example'}\n")
    assert sem.describe_entry(p.allow[0]) == "x (domain example.com and subdomains via amazonses for user:a@corp.example)"
