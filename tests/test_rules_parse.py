"""Rules YAML -> Policy: defaults, normalisation, and every documented error with its line."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edrules.errors import EdrulesError
from edrules.facts import Action
from edrules.rules.model import (
    DEFAULT_ACTIONS,
    DEFAULT_RETENTION_DAYS,
    BulkPolicy,
    EntryKind,
    FromPolicy,
    ScopeKind,
    ViaKind,
)
from edrules.rules.parse import RulesError, check_rules, parse_rules, parse_rules_file, rules_schema

DOCS = Path(__file__).resolve().parent.parent / "docs" / "rules.md"


def test_an_empty_rules_file_is_the_default_strict_policy():
    p = parse_rules("", source="tenant.yaml")
    assert p.name == "tenant"
    assert p.from_policy is FromPolicy.STRICT
    assert p.actions == DEFAULT_ACTIONS and p.retention_days == DEFAULT_RETENTION_DAYS
    assert (p.allow, p.block, p.bulk_mailers, p.inbound_enforce) == ((), (), {}, False)


def test_values_are_normalised_and_ids_generated_by_position():
    p = parse_rules("""
name: acme
from_policy: aligned
bulk_mailers: {ses: allow, sendgrid: scan, Mandrill: block}
actions: {spam: tag}
retention_days: {malware: 90}
inbound: {relays: [192.0.2.0/24, "::ffff:198.51.100.7"], enforce: true}
allow:
  - sender: DoNotReply@SomeOTPsite.CZ.
    via: ses
  - domain: Bücher.Example
    subdomains: true
    scope: domain:ACME.example
    expires: 2027-01-31
    id: books
  - ip: "2001:DB8::1"
block:
  - sender: x@y.example
    via: 203.0.113.0/24
  - domain: z.example
    via: Mail.Sender.example
    scope: user:Payroll@ACME.example
""")
    assert p.name == "acme" and p.from_policy is FromPolicy.ALIGNED
    assert p.bulk_mailers == {"amazonses": BulkPolicy.ALLOW, "mailchimp": BulkPolicy.BLOCK}
    assert p.actions["spam"] is Action.TAG and p.actions["malware"] is Action.QUARANTINE
    assert p.retention_days["malware"] == 90 and p.retention_days["spam"] == 30
    assert p.inbound_relays == ("192.0.2.0/24", "198.51.100.7/32") and p.inbound_enforce
    a0, a1, a2 = p.allow
    assert (a0.id, a0.kind, a0.value, a0.via.kind, a0.via.value) == (
        "allow[0]", EntryKind.SENDER, "donotreply@someotpsite.cz", ViaKind.PROVIDER, "amazonses")
    assert (a1.id, a1.value, a1.subdomains, a1.expires) == ("books", "xn--bcher-kva.example", True, date(2027, 1, 31))
    assert (a1.scope.kind, a1.scope.value) == (ScopeKind.DOMAIN, "acme.example")
    assert a2.value == "2001:db8::1/128" and a2.line == 16
    b0, b1 = p.block
    assert (b0.id, b0.via.kind, b0.via.value) == ("block[0]", ViaKind.CIDR, "203.0.113.0/24")
    assert (b1.via.kind, b1.via.value, str(b1.scope)) == (ViaKind.DOMAIN, "mail.sender.example", "user:payroll@acme.example")
    # The catalog entries the policy names are frozen into it (scan providers are not named).
    assert sorted(p.providers) == ["amazonses", "mailchimp"]
    assert "amazonses.com" in p.providers["amazonses"].envelope_suffixes


def _errors(text: str) -> list[EdrulesError]:
    return check_rules(text, source="rules.yaml")


# (rules text, expected message fragment, line, field) — the table in docs/rules.md "Errors".
ERROR_CASES = [
    ("name: x\n  bad: indent\n", "invalid YAML: mapping values are not allowed", 2, None),
    ("name: a\nname: b\n", "duplicate key 'name'", 2, "name"),
    ("allow:\n  - &x {sender: a@b.example}\n  - *x\n", "YAML anchors and aliases are not supported", 3, "allow[1]"),
    ("- just\n- a list\n", "a rules file must be a mapping", 1, None),
    ("name: x\nfrom_polcy: strict\n", "unknown key 'from_polcy'; did you mean 'from_policy'?", 2, "from_polcy"),
    ("allow: {sender: a@b.example}\n", "must be a list (got a mapping)", 1, "allow"),
    ("inbound:\n  enforce: yes please\n  relays: [192.0.2.0/24]\n", "must be true or false", 2, "inbound.enforce"),
    ("from_policy: strickt\n", "must be one of strict, aligned, relaxed (got 'strickt')", 1, "from_policy"),
    ("actions:\n  malware: deliver\n", "malware is never delivered", 2, "actions.malware"),
    ("retention_days: {spam: -1}\n", "must be between 0 and 36500 (got -1)", 1, "retention_days.spam"),
    ("bulk_mailers:\n  amazonsess: allow\n", "unknown provider 'amazonsess'; did you mean amazonses?", 2, "bulk_mailers.amazonsess"),
    ("bulk_mailers:\n  amazonses: allow\n  ses: block\n", "'ses' and 'amazonses' name the same provider amazonses", 3, "bulk_mailers.ses"),
    ("allow:\n  - sender: a@b.example\n    via: sendgird\n", "unknown provider 'sendgird'; did you mean sendgrid?", 3, "allow[0].via"),
    ("allow:\n  - comment: nothing\n", "an entry needs one of 'sender', 'domain' or 'ip'", 2, "allow[0]"),
    ("block:\n  - sender: a@b.example\n    domain: b.example\n", "this one has sender and domain: split it", 2, "block[0]"),
    ("allow:\n  - sender: not-an-address\n", "sender must be a full address", 2, "allow[0].sender"),
    ("allow:\n  - domain: a@b.example\n", "looks like an address; use 'sender'", 2, "allow[0].domain"),
    ("allow:\n  - domain: '*.example.com'\n", "write 'example.com' with 'subdomains: true'", 2, "allow[0].domain"),
    ("allow:\n  - domain: 'exa mple.com'\n", "not a valid domain", 2, "allow[0].domain"),
    ("allow:\n  - ip: 300.1.2.3\n", "not an IP address or CIDR", 2, "allow[0].ip"),
    ("allow:\n  - ip: 10.0.0.1/8\n", "has host bits set; did you mean 10.0.0.0/8?", 2, "allow[0].ip"),
    ("allow:\n  - sender: a@b.example\n    subdomains: true\n", "'subdomains' applies only to domain entries", 3, "allow[0].subdomains"),
    ("allow:\n  - ip: 192.0.2.1\n    via: amazonses\n", "ip entries cannot have 'via'", 3, "allow[0].via"),
    ("allow:\n  - sender: a@b.example\n    scope: tenant:x\n", "scope must be global, domain:", 3, "allow[0].scope"),
    ("allow:\n  - sender: a@b.example\n    id: 'has space'\n", "id must start with a letter or digit", 3, "allow[0].id"),
    ("allow:\n  - {sender: a@b.example, id: x}\nblock:\n  - {sender: c@d.example, id: x}\n", "duplicate id 'x' (first used at allow[0])", 4, "block[0].id"),
    ("allow:\n  - {sender: a@b.example, id: default}\n", "id 'default' is reserved", 2, "allow[0].id"),
    ("allow:\n  - sender: a@b.example\n    expires: next week\n", "expires must be a date (YYYY-MM-DD)", 3, "allow[0].expires"),
    ("inbound:\n  enforce: true\n", "inbound.relays is empty: every message would be rejected", 2, "inbound.enforce"),
]


@pytest.mark.parametrize("text,fragment,line,field", ERROR_CASES, ids=[c[1][:40] for c in ERROR_CASES])
def test_each_documented_error_names_the_file_line_and_field(text, fragment, line, field):
    errors = _errors(text)
    hits = [e for e in errors if fragment in e.message]
    assert hits, [str(e) for e in errors]
    loc = hits[0].location
    assert (loc.file, loc.line, loc.field) == ("rules.yaml", line, field)
    with pytest.raises(RulesError):
        parse_rules(text, source="rules.yaml")


def test_every_error_message_in_the_table_is_documented():
    doc = DOCS.read_text(encoding="utf-8")
    errors_section = doc.split("### Errors", 1)[1].split("## Rule packs", 1)[0]
    for _, fragment, _, _ in ERROR_CASES:
        # Compare the wording with the quoted names/values replaced by placeholders; the
        # problem after "invalid YAML:" is PyYAML's own text.
        fragment = fragment.split(":")[0] if fragment.startswith("invalid YAML") else fragment
        words = re.sub(r"\(got [^)]*\)|(?<=mean )\S+|'[^']*'|\[\d+\]|\d+(\.\d+)*(/\d+)?|\b\w+@\S+", "", fragment).split()
        assert all(w.strip("()[];,.:?") in errors_section for w in words), fragment


def test_all_errors_of_a_file_are_reported_at_once_in_line_order():
    text = (
        "name: x\n"
        "from_policy: loose\n"
        "bulk_mailers: {sengrid: allow}\n"
        "allow:\n"
        "  - sender: nobody\n"
        "  - ip: 10.0.0.1/8\n"
        "block:\n"
        "  - {domain: ok.example, colour: red}\n"
    )
    with pytest.raises(RulesError) as info:
        parse_rules(text, source="bad.yaml")
    err = info.value
    assert [e.location.line for e in err.errors] == [2, 3, 5, 6, 8]
    assert str(err).startswith("5 errors in rules:\n  bad.yaml:2 (from_policy): must be one of")


def test_an_unquoted_impossible_date_is_a_located_error_that_hides_none_of_the_others():
    text = (
        "name: x\n"
        "allow:\n"
        "  - sender: a@example.com\n"
        "    expires: 2026-13-01\n"
        "  - sender: nobody\n"
        "block:\n"
        "  - {domain: ok.example, expires: 2026-02-30}\n"
    )
    with pytest.raises(RulesError) as info:
        parse_rules(text, source="dates.yaml")
    got = [(e.location.line, e.location.field) for e in info.value.errors]
    assert got == [(4, "allow[0].expires"), (5, "allow[1].sender"), (7, "block[0].expires")]
    assert "2026-13-01" in info.value.errors[0].message


def test_a_yaml_tag_that_cannot_be_constructed_is_still_invalid_yaml():
    with pytest.raises(RulesError, match="invalid YAML"):
        parse_rules("name: !!python/name:os.system x\n", source="t.yaml")


def test_parse_rules_file_reads_a_file_and_reports_a_missing_one(tmp_path):
    f = tmp_path / "tenant.yaml"
    f.write_text("allow:\n  - sender: a@b.example\n", encoding="utf-8")
    assert parse_rules_file(f).allow[0].value == "a@b.example"
    with pytest.raises(EdrulesError, match="cannot read rules file"):
        parse_rules_file(tmp_path / "missing.yaml")


def test_the_json_schema_is_a_valid_draft_2020_12_schema():
    from edrules.rules.parse import _jsonschema

    _jsonschema().Draft202012Validator.check_schema(rules_schema())


def test_every_key_of_the_schema_is_documented_in_the_format_reference():
    doc = DOCS.read_text(encoding="utf-8").split("## Rules file format", 1)[1]
    schema = rules_schema()
    keys = set(schema["properties"]) | set(schema["$defs"]["entry"]["properties"])
    keys |= {f"inbound.{k}" for k in schema["properties"]["inbound"]["properties"]}
    keys |= set(schema["properties"]["actions"]["properties"])
    missing = [k for k in sorted(keys) if f"`{k}`" not in doc]
    assert missing == []


def test_every_yaml_example_in_the_docs_compiles():
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    assert blocks
    for block in blocks:
        parse_rules(block, source="docs/rules.md")


hostile_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=12),
    st.sampled_from(["strict", "amazonses", "a@b.example", "10.0.0.0/8", "domain:x.example", "2026-01-01"]),
)
hostile = st.recursive(
    hostile_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["name", "from_policy", "bulk_mailers", "actions", "allow", "block", "inbound",
                             "sender", "domain", "ip", "via", "scope", "expires", "id", "subdomains",
                             "relays", "enforce", "spam", "malware", "ses", "x"]),
            inner, max_size=5),
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile)
def test_the_parser_never_crashes_on_hostile_structures(data):
    text = yaml.safe_dump(data)
    try:
        parse_rules(text)
    except EdrulesError as exc:
        assert all(e.location is not None for e in getattr(exc, "errors", (exc,)))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
def test_the_parser_never_crashes_on_arbitrary_text(text):
    try:
        parse_rules(text)
    except EdrulesError:
        pass


entry_like = st.dictionaries(
    st.sampled_from(["sender", "domain", "ip", "subdomains", "via", "id", "scope", "comment", "expires", "colour"]),
    st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from(
        ["a@b.example", "b.example", "10.0.0.0/8", "has space", "x1", "", "global", "domain:x.example",
         "user:a@b.example", "tenant:x", "2026-01-01", "amazonses"])),
    max_size=4,
)
document_like = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.text(max_size=3), st.integers()),
    "from_policy": st.sampled_from(["strict", "aligned", "relaxed", "loose", 1]),
    "bulk_mailers": st.dictionaries(st.sampled_from(["amazonses", "x"]), st.sampled_from(["scan", "allow", "nope"]), max_size=2),
    "actions": st.dictionaries(st.sampled_from(["malware", "spam", "other"]), st.sampled_from(["deliver", "tag", "reject", "x"]), max_size=2),
    "retention_days": st.dictionaries(st.sampled_from(["spam", "bulk"]), st.one_of(st.integers(-1, 40000), st.text(max_size=2)), max_size=2),
    "inbound": st.dictionaries(st.sampled_from(["relays", "enforce", "other"]), st.one_of(st.booleans(), st.lists(st.sampled_from(["10.0.0.0/8", "", 3]), max_size=2)), max_size=2),
    "allow": st.one_of(st.lists(st.one_of(entry_like, st.integers()), max_size=4), st.just({})),
    "block": st.lists(entry_like, max_size=3),
    "extra": st.none(),
})


@settings(max_examples=300, deadline=None)
@given(document_like)
def test_the_compiled_fast_validator_and_jsonschema_agree_on_validity(doc):
    from edrules.rules.parse import _fast_validators, _jsonschema

    fast = _fast_validators()
    if fast is None:
        pytest.skip("fastjsonschema not installed: jsonschema validates alone")
    whole, _, invalid = fast
    try:
        whole(doc)
        fast_ok = True
    except invalid:
        fast_ok = False
    slow_ok = _jsonschema().Draft202012Validator(rules_schema()).is_valid(doc)
    assert fast_ok == slow_ok
    _, entry, _ = fast
    from edrules.rules.parse import _entry_schema

    entry_schema = _jsonschema().Draft202012Validator(_entry_schema())
    for item in [*(doc.get("allow") or []), *doc.get("block", [])]:
        try:
            entry(item)
            fast_entry_ok = True
        except invalid:
            fast_entry_ok = False
        assert fast_entry_ok == entry_schema.is_valid(item)
