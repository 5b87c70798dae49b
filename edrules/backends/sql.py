"""SQL backend: per-recipient verdicts for a whole dataset as one DuckDB query (docs/rules.md)."""

from __future__ import annotations

import ipaddress
import uuid
from contextlib import contextmanager
from datetime import date, datetime, timezone
from typing import Iterable, Iterator, Mapping

import duckdb
import pyarrow as pa

from edrules.facts import MessageFacts
from edrules.rules.model import (
    BulkPolicy,
    Entry,
    EntryKind,
    FromPolicy,
    ListKind,
    Policy,
    ScopeKind,
    ViaKind,
)

# Every value a policy carries (addresses, domains, CIDRs, providers, ids, actions, the dataset
# name, `now`) reaches DuckDB as a row of one of these registered tables; the SQL text only
# holds table names and the fixed words of the semantics ('pass', 'fail', 'quarantine', ...).
TABLE_ROLES = ("params", "actions", "entries", "cidrs", "masks", "via_checks", "provider_checks",
               "bulk", "probes", "ips")

VERDICT_COLUMNS = ("dataset", "msg_key", "recipient", "action", "category", "reason", "rule_id")

# Which message field a plain (no `via`) entry may match, and under which gate, per list and
# From-policy (docs/rules.md, "Identities an allow entry may match"). Operators as rows: a new
# mode is a new block of rows, not new SQL.
_PLAIN_PROBES: dict[FromPolicy, tuple[tuple[str, str, str, str], ...]] = {
    FromPolicy.STRICT: (
        ("allow", "sender", "envelope_from", "env_ok"),
        ("allow", "domain", "envelope_from_domain", "env_ok"),
    ),
    FromPolicy.ALIGNED: (
        ("allow", "sender", "envelope_from", "spf_env_ok"),
        ("allow", "sender", "header_from", "header_aligned"),
        ("allow", "domain", "envelope_from_domain", "spf_env_ok"),
        ("allow", "domain", "header_from_domain", "header_aligned"),
    ),
    FromPolicy.RELAXED: (
        ("allow", "sender", "envelope_from", "env_ok"),
        ("allow", "sender", "header_from", "header_ok"),
        ("allow", "domain", "envelope_from_domain", "env_ok"),
        ("allow", "domain", "header_from_domain", "header_ok"),
    ),
}
# Blocks match unauthenticated identities in every mode; pairs match the header From side
# when header_ok holds and the infrastructure is authenticated ("via" gate), on either list.
_COMMON_PROBES: tuple[tuple[str, str, str, str], ...] = tuple(
    row
    for lst in ("allow", "block")
    for row in (
        (lst, "ip", "client_ip", "always"),
        (lst, "sender", "header_from", "via"),
        (lst, "domain", "header_from_domain", "via"),
    )
) + (
    ("block", "sender", "envelope_from", "always"),
    ("block", "sender", "header_from", "always"),
    ("block", "domain", "envelope_from_domain", "always"),
    ("block", "domain", "header_from_domain", "always"),
)



def _under(domain: str, suffixes: str) -> str:
    """SQL: `domain` equals or sits label-wise under one of the list `suffixes`."""
    return f"coalesce(len(list_filter({suffixes}, lambda s: {domain} = s OR ends_with({domain}, '.' || s))) > 0, FALSE)"


def _dkim_under(suffixes: str) -> str:
    """SQL: some passing DKIM signature's d= equals or sits under one of `suffixes`."""
    return (f"coalesce(len(list_filter(d.dkim, lambda k: k.result = 'pass' AND "
            f"{_under('k.d', suffixes)})) > 0, FALSE)")


# Infrastructure check token -> the SQL deciding it for message `d` against a suffix list: a
# pair's `via` side and the bulk-mailer `allow` exemption ("provider authenticated") share them.
_CHECKS: dict[str, str] = {
    "spf_env_domain": "d.spf_pass AND " + _under("d.env_domain", "{x}.spf_env_domain"),
    "spf_envelope_from_domain": "d.spf_pass AND " + _under("d.envelope_from_domain", "{x}.spf_envelope_from_domain"),
    "dkim_d": _dkim_under("{x}.dkim_d"),
}


def _checks(x: str) -> str:
    return "(" + " OR ".join(f"({v.format(x=x)})" for v in _CHECKS.values()) + ")"


# Gate token -> SQL over message `d` and candidate hit `h` (a struct in the message's list).
_GATES: dict[str, str] = {
    "always": "TRUE",
    "env_ok": "d.env_ok",
    "spf_env_ok": "d.spf_pass AND d.env_ok",
    "header_ok": "d.header_ok",
    "header_aligned": "d.header_ok AND coalesce(d.aligned_auth, FALSE)",
    "via": "d.header_ok AND (h.via_cidr OR " + _checks("h") + ")",
}

# Forgery per From-policy, over the derived flags of CTE `d` (docs/rules.md "Derived facts"):
# every mode is a forgery when header_ok fails, so a stricter mode never passes what a weaker stops.
_FORGERY: dict[FromPolicy, str] = {
    FromPolicy.STRICT: "NOT d.header_ok OR coalesce(d.header_from_org <> d.env_org, FALSE)",
    FromPolicy.ALIGNED: "NOT d.header_ok OR NOT d.aligned_auth",
    FromPolicy.RELAXED: "NOT d.header_ok",
}

_REASONS: dict[str, str] = {
    "inbound": "client IP is outside the inbound relays and inbound.enforce is on",
    "malware": "the upstream scanner found malware; allow entries never override malware",
    "block": "matched block entry",
    "allow": "matched allow entry",
    "bulk": "mail from this bulk-mail network is blocked by bulk_mailers",
    "forgery": "forged sender",
    "phishing": "the upstream scanner classified it as phishing",
    "spam": "the upstream scanner classified it as spam",
    "clean": "no rule matched and it is not classified as malware, phishing or spam",
}


# Exactly the dotted quads `ipaddress.ip_address` accepts (no leading zeros, each part <= 255).
_V4_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V4_RE = rf"{_V4_OCTET}(\.{_V4_OCTET}){{3}}"

# aligned_auth is only read under `aligned` (forgery and header-From gates); the DKIM list scan
# it needs is the most expensive expression per message, so other modes skip it.
_ALIGNED_AUTH = """coalesce(t.dmarc = 'pass', FALSE)
           OR coalesce(spf_pass AND env_org = t.header_from_org, FALSE)
           OR coalesce(len(list_filter(t.dkim, lambda k: k.result = 'pass' AND k.org = t.header_from_org)) > 0, FALSE)"""


def _today(now: datetime | date | None) -> date:
    """The UTC calendar date expiry is judged by (docs/rules.md), as the runtime's _utc_date:
    `--now 2026-06-02T01:30+05:00` is 1 June. Naive datetimes are UTC."""
    if now is None:
        return datetime.now(timezone.utc).date()
    if isinstance(now, datetime):
        return (now.astimezone(timezone.utc) if now.tzinfo is not None else now).date()
    return now


def _ip_parts(text: str | None) -> tuple[int, int, int] | None:
    """(family, high 64 bits, low 64 bits) of an address; None when it is not one.

    Two UBIGINT halves keep the join keys native Arrow and DuckDB types (Arrow has no 128-bit
    unsigned integer); family keeps ::102:304 apart from 1.2.3.4, as the runtime does."""
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if getattr(ip, "scope_id", None) is not None:
        return None  # `2001:db8::5%eth0`: the runtime's inet_pton rejects zone ids, so must we
    n = int(ip)
    return ip.version, n >> 64, n & 0xFFFF_FFFF_FFFF_FFFF


def _cidr_parts(text: str) -> tuple[int, int, int, int]:
    """(family, prefix length, network high, network low)."""
    net = ipaddress.ip_network(text, strict=False)
    n = int(net.network_address)
    return net.version, net.prefixlen, n >> 64, n & 0xFFFF_FFFF_FFFF_FFFF


def _mask(family: int, plen: int) -> tuple[int, int]:
    bits = 32 if family == 4 else 128
    m = ((1 << plen) - 1) << (bits - plen)
    return m >> 64, m & 0xFFFF_FFFF_FFFF_FFFF


def _describe(e: Entry) -> str:
    target = f"{e.kind} {e.value}" + (" and subdomains" if e.subdomains else "")
    if e.via is not None:
        target += f" via {e.via.value}"
    if e.scope.kind is not ScopeKind.GLOBAL:
        target += f" for {e.scope}"
    return f"{e.id} ({target})"


def _entries(policy: Policy) -> Iterator[tuple[int, Entry]]:
    """(eid, entry) over both lists; eid is unique, `ord` (file order) is per list."""
    eid = 0
    for entries in (policy.block, policy.allow):
        for e in entries:
            yield eid, e
            eid += 1


def ip_table(addresses: Iterable[str | None]) -> pa.Table:
    """Integer form of each distinct IPv6 client IP text, for CIDR joins (unparseable ones left
    out). IPv4 texts are parsed inside the query (_V4_RE); IPv6 goes through `ipaddress`, so '::'
    forms and embedded dotted quads mean what they mean to the runtime; zone ids are no address."""
    rows = [(a, *p) for a in dict.fromkeys(addresses) if (p := _ip_parts(a)) is not None]
    return pa.table(
        {
            "client_ip": pa.array([r[0] for r in rows], pa.string()),
            "family": pa.array([r[1] for r in rows], pa.int8()),
            "hi": pa.array([r[2] for r in rows], pa.uint64()),
            "lo": pa.array([r[3] for r in rows], pa.uint64()),
        }
    )


def policy_tables(policy: Policy, *, now: datetime | date | None = None,
                  dataset: str | None = None) -> dict[str, pa.Table]:
    """The policy as tables, keyed by role (see TABLE_ROLES minus 'ips', which is data)."""
    actions = dict(policy.actions)
    mode = FromPolicy(policy.from_policy)
    params = pa.table(
        {
            "now_date": pa.array([_today(now)], pa.date32()),
            "from_policy": pa.array([str(mode)], pa.string()),
            "dataset": pa.array([dataset], pa.string()),
        }
    )
    fixed_ids = {"inbound": "inbound:relays", "malware": "category:malware",
                 "forgery": f"from_policy:{mode}", "phishing": "category:phishing",
                 "spam": "category:spam", "clean": "default"}  # block/allow/bulk: per row
    act_rows = []
    for cat, reason in _REASONS.items():
        action = str(actions.get(cat, "deliver"))
        if cat == "inbound":
            action = "reject"
        elif cat in ("allow", "clean"):
            action = "deliver"
        if cat == "forgery":
            reason = f"{reason} under the {mode} From-policy"
        act_rows.append((cat, action, reason, fixed_ids.get(cat)))

    cols: dict[str, list] = {k: [] for k in (
        "eid", "list", "ord", "id", "kind", "value", "subdomains", "via_kind", "scope_kind",
        "scope_value", "expires", "describe")}
    ords = {ListKind.BLOCK: 0, ListKind.ALLOW: 0}
    cidrs: list[tuple[str, int | None, int, int, int, int]] = []
    via_checks: list[tuple[int, str, str]] = []
    for eid, e in _entries(policy):
        lst = ListKind(e.list)
        cols["eid"].append(eid)
        cols["list"].append(str(lst))
        cols["ord"].append(ords[lst])
        ords[lst] += 1
        cols["id"].append(e.id)
        cols["kind"].append(str(e.kind))
        cols["value"].append(e.value)
        cols["subdomains"].append(bool(e.subdomains))
        cols["via_kind"].append(str(e.via.kind) if e.via is not None else None)
        cols["scope_kind"].append(str(e.scope.kind))
        cols["scope_value"].append(e.scope.value if e.scope.kind is not ScopeKind.GLOBAL else None)
        cols["expires"].append(e.expires)
        cols["describe"].append(_describe(e))
        if e.kind is EntryKind.IP:
            cidrs.append(("entry", eid, *_cidr_parts(e.value)))
        if e.via is not None:
            if e.via.kind is ViaKind.CIDR:
                cidrs.append(("via", eid, *_cidr_parts(e.via.value)))
            elif e.via.kind is ViaKind.DOMAIN:
                via_checks += [(eid, "spf_envelope_from_domain", e.via.value), (eid, "dkim_d", e.via.value)]
            else:
                p = policy.providers.get(e.via.value)
                if p is not None:  # a provider the pack does not define authenticates nothing
                    via_checks += [(eid, "spf_env_domain", s) for s in p.envelope_suffixes]
                    via_checks += [(eid, "dkim_d", s) for s in p.dkim_domains]
    for relay in policy.inbound_relays:
        cidrs.append(("relay", None, *_cidr_parts(relay)))
    masks = sorted({(c[2], c[3]) for c in cidrs})

    bulk = {str(k): BulkPolicy(v) for k, v in policy.bulk_mailers.items()}
    provider_checks: list[tuple[str, str, str]] = []
    for name, pol in bulk.items():
        p = policy.providers.get(name)
        if pol is BulkPolicy.ALLOW and p is not None:
            provider_checks += [(name, "spf_env_domain", s) for s in p.envelope_suffixes]
            provider_checks += [(name, "dkim_d", s) for s in p.dkim_domains]

    probes = _PLAIN_PROBES[mode] + _COMMON_PROBES
    s = pa.string()
    return {
        "params": params,
        "actions": pa.table({k: pa.array([r[i] for r in act_rows], s)
                             for i, k in enumerate(("category", "action", "reason", "rule_id"))}),
        "entries": pa.table(
            {
                "eid": pa.array(cols["eid"], pa.int32()),
                "list": pa.array(cols["list"], s),
                "ord": pa.array(cols["ord"], pa.int32()),
                "id": pa.array(cols["id"], s),
                "kind": pa.array(cols["kind"], s),
                "value": pa.array(cols["value"], s),
                "subdomains": pa.array(cols["subdomains"], pa.bool_()),
                "via_kind": pa.array(cols["via_kind"], s),
                "scope_kind": pa.array(cols["scope_kind"], s),
                "scope_value": pa.array(cols["scope_value"], s),
                "expires": pa.array(cols["expires"], pa.date32()),
                "describe": pa.array(cols["describe"], s),
            }
        ),
        "cidrs": pa.table(
            {
                "role": pa.array([c[0] for c in cidrs], s),
                "eid": pa.array([c[1] for c in cidrs], pa.int32()),
                "family": pa.array([c[2] for c in cidrs], pa.int8()),
                "plen": pa.array([c[3] for c in cidrs], pa.int16()),
                "net_hi": pa.array([c[4] for c in cidrs], pa.uint64()),
                "net_lo": pa.array([c[5] for c in cidrs], pa.uint64()),
            }
        ),
        "masks": pa.table(
            {
                "family": pa.array([m[0] for m in masks], pa.int8()),
                "plen": pa.array([m[1] for m in masks], pa.int16()),
                "hi_mask": pa.array([_mask(*m)[0] for m in masks], pa.uint64()),
                "lo_mask": pa.array([_mask(*m)[1] for m in masks], pa.uint64()),
            }
        ),
        "via_checks": pa.table(
            {
                "eid": pa.array([v[0] for v in via_checks], pa.int32()),
                "check_kind": pa.array([v[1] for v in via_checks], s),
                "suffix": pa.array([v[2] for v in via_checks], s),
            }
        ),
        "provider_checks": pa.table(
            {
                "provider": pa.array([v[0] for v in provider_checks], s),
                "check_kind": pa.array([v[1] for v in provider_checks], s),
                "suffix": pa.array([v[2] for v in provider_checks], s),
            }
        ),
        "bulk": pa.table(
            {
                "provider": pa.array(list(bulk), s),
                "policy": pa.array([str(v) for v in bulk.values()], s),
            }
        ),
        "probes": pa.table({k: pa.array([p[i] for p in probes], s)
                            for i, k in enumerate(("list", "kind", "field", "gate"))}),
    }


# Does hit `h` apply to the recipient row (docs/rules.md "Entry matching", scopes)?
_IN_SCOPE = ("(h.scope_kind = 'global' OR (h.scope_kind = 'domain' AND h.scope_value = r.recipient_domain)"
             " OR (h.scope_kind = 'user' AND h.scope_value = r.recipient))")


def _reason(decision: str, b: str, a: str, detail: str) -> str:
    """SQL: the reason text; `act` is the joined actions row (its reason is the template)."""
    return (f"CASE {decision} WHEN 'block' THEN act.reason || ' ' || {b}.describe "
            f"WHEN 'allow' THEN act.reason || ' ' || {a}.describe "
            f"WHEN 'forgery' THEN act.reason || ': ' || {detail} "
            f"WHEN 'bulk' THEN act.reason || ' (' || {detail} || ')' "
            f"WHEN 'inbound' THEN act.reason || ' (' || {detail} || ')' ELSE act.reason END")


def _rule_id(decision: str, b: str, a: str, provider: str) -> str:
    return (f"CASE {decision} WHEN 'block' THEN {b}.id WHEN 'allow' THEN {a}.id "
            f"WHEN 'bulk' THEN 'bulk:' || {provider} ELSE act.rule_id END")


def _needs_ips(policy: Policy) -> bool:
    return bool(policy.inbound_enforce or policy.inbound_relays
                or any(e.kind is EntryKind.IP or (e.via is not None and e.via.kind is ViaKind.CIDR)
                       for e in (*policy.allow, *policy.block)))


def verdict_sql(policy: Policy, *, names: Mapping[str, str] | None = None,
                messages: str = "messages", recipients: str = "recipients",
                dataset: str | None = None) -> str:
    """The DuckDB query producing VERDICT_COLUMNS, one row per recipients row.

    names maps each table role to the name it is registered under (default: the role itself).
    The policy only chooses the query's shape (From-policy mode, whether CIDRs and inbound
    enforcement take part); every value comes from the tables. `dataset` only switches the
    filter on; its value is params.dataset.

    Shape (why it is fast): the messages are read in a few narrow passes (distinct domains,
    distinct client IPs, one probe of the five identity fields against the small hit tables) and
    one full pass that decides every message and attaches its rare candidate hits; nothing the
    size of the traffic is materialised. The recipients then join that per-message result once,
    and only rows of messages with hits look at scopes."""
    n = {role: role for role in TABLE_ROLES} | dict(names or {})
    mode = FromPolicy(policy.from_policy)
    with_ips = _needs_ips(policy)
    ds_filter = f"WHERE t.dataset = (SELECT dataset FROM {n['params']})" if dataset is not None else ""
    gate_case = " ".join(f"WHEN '{k}' THEN {v}" for k, v in _GATES.items())

    ip_ctes = ip_join = via_join = inbound_join = ""
    ip_eid = "NULL::INTEGER"
    via_cidr = "FALSE"
    inbound_expr = "FALSE"
    if with_ips:
        ip_ctes = f"""
ip_values AS MATERIALIZED (  -- materialised: the regex below then runs once per distinct address
  SELECT DISTINCT client_ip FROM d
),
ip_keys AS MATERIALIZED (  -- each distinct client IP masked to every prefix length in use
  SELECT i.client_ip, i.family, k.plen, i.hi & k.hi_mask AS m_hi, i.lo & k.lo_mask AS m_lo
  FROM (
    SELECT client_ip, 4::TINYINT AS family, 0::UBIGINT AS hi,
      (split_part(client_ip, '.', 1)::UBIGINT << 24) + (split_part(client_ip, '.', 2)::UBIGINT << 16)
      + (split_part(client_ip, '.', 3)::UBIGINT << 8) + split_part(client_ip, '.', 4)::UBIGINT AS lo
    FROM ip_values WHERE regexp_full_match(client_ip, '{_V4_RE}')
    UNION ALL
    SELECT client_ip, family, hi, lo FROM {n['ips']}
  ) i JOIN {n['masks']} k ON k.family = i.family
),
ip_hits AS (  -- then one equi-join on (family, prefix, network): no range join, no nested loop
  SELECT i.client_ip, c.role, c.eid
  FROM ip_keys i
  JOIN {n['cidrs']} c ON c.family = i.family AND c.plen = i.plen AND c.net_hi = i.m_hi AND c.net_lo = i.m_lo
),
ip_entries AS (SELECT ip_hits.client_ip, ip_hits.eid FROM ip_hits JOIN live USING (eid) WHERE role = 'entry'),
ip_vias AS (SELECT DISTINCT client_ip, eid FROM ip_hits WHERE role = 'via'),
relay_ips AS (SELECT DISTINCT client_ip FROM ip_hits WHERE role = 'relay'),"""
        ip_join = "LEFT JOIN ip_entries ih ON ih.client_ip = m.client_ip"
        ip_eid = "ih.eid"
        via_join = "LEFT JOIN ip_vias vc ON vc.client_ip = c.client_ip AND vc.eid = c.eid"
        via_cidr = "vc.eid IS NOT NULL"
    if policy.inbound_enforce:
        # A missing or unparseable client IP is "not in any relay" (docs/rules.md: fail closed).
        inbound_expr = "ri.client_ip IS NULL"
        inbound_join = "LEFT JOIN relay_ips ri ON ri.client_ip = d.client_ip"
    after_forgery = "CASE WHEN d.category IN ('phishing', 'spam') THEN d.category ELSE 'clean' END"

    return f"""
WITH
prm AS (SELECT * FROM {n['params']}),
live AS (  -- expired entries are ignored (valid through `expires` inclusive)
  SELECT e.* FROM {n['entries']} e WHERE e.expires IS NULL OR e.expires >= (SELECT now_date FROM prm)
),
d AS NOT MATERIALIZED (  -- derived facts per message (docs/rules.md "Derived facts"); each use reads only its columns
  SELECT t.dataset, t.msg_key, t.envelope_from, t.header_from, t.envelope_from_domain,
         t.header_from_domain, t.client_ip, t.dkim, t.bulk_provider, t.category,
         t.header_from_org, t.dmarc, t.dmarc_policy,
         coalesce(t.from_invalid, FALSE) AS from_invalid,
         CASE WHEN t.envelope_from = '' THEN t.helo ELSE t.envelope_from_domain END AS env_domain,
         CASE WHEN t.envelope_from = '' THEN t.helo_org ELSE t.envelope_from_org END AS env_org,
         coalesce(t.spf = 'pass', FALSE) AS spf_pass,
         coalesce(t.dmarc = 'fail' AND t.dmarc_policy IN ('quarantine', 'reject'), FALSE) AS dmarc_enforced_fail,
         NOT coalesce(t.from_invalid, FALSE) AND NOT dmarc_enforced_fail AS header_ok,
         NOT (dmarc_enforced_fail AND coalesce(env_org = t.header_from_org, FALSE)) AS env_ok,
         {_ALIGNED_AUTH if mode is FromPolicy.ALIGNED else "NULL::BOOLEAN"} AS aligned_auth
  FROM {messages} t {ds_filter}
),
dom_values AS (
  SELECT DISTINCT v FROM (
    SELECT envelope_from_domain AS v FROM d UNION ALL SELECT header_from_domain FROM d
  ) WHERE v IS NOT NULL
),
dom_hits AS (  -- generated suffixes + equi-join: X matches D when X = D or X ends with '.' || D
  SELECT s.v, e.eid FROM (
    SELECT v, unnest(list_transform(range(len(p)), lambda i: array_to_string(p[i + 1:], '.'))) AS sfx
    FROM (SELECT v, string_split(v, '.') AS p FROM dom_values)
  ) s JOIN live e ON e.kind = 'domain' AND e.value = s.sfx AND (s.sfx = s.v OR e.subdomains)
),
senders AS (SELECT eid, value FROM live WHERE kind = 'sender'),{ip_ctes}
probe AS (  -- one narrow pass: the five identity fields against the small hit tables
  SELECT m.dataset, m.msg_key, m.client_ip,
         [{{'field': 'envelope_from', 'eid': s1.eid}}, {{'field': 'header_from', 'eid': s2.eid}},
          {{'field': 'envelope_from_domain', 'eid': h1.eid}}, {{'field': 'header_from_domain', 'eid': h2.eid}},
          {{'field': 'client_ip', 'eid': {ip_eid}}}] AS found
  FROM d m
  LEFT JOIN senders s1 ON s1.value = m.envelope_from
  LEFT JOIN senders s2 ON s2.value = m.header_from
  LEFT JOIN dom_hits h1 ON h1.v = m.envelope_from_domain
  LEFT JOIN dom_hits h2 ON h2.v = m.header_from_domain
  {ip_join}
  WHERE coalesce(s1.eid, s2.eid, h1.eid, h2.eid, {ip_eid}) IS NOT NULL
),
cand AS (  -- (message, field, entry) where the field's value matches the entry's value
  SELECT DISTINCT dataset, msg_key, client_ip, f.field, f.eid
  FROM (SELECT dataset, msg_key, client_ip, unnest(found) AS f FROM probe)
  WHERE f.eid IS NOT NULL
),
via_lists AS (  -- each pair's infrastructure suffixes, one list per check token
  SELECT eid, {", ".join(f"list(suffix) FILTER (WHERE check_kind = '{k}') AS {k}" for k in _CHECKS)}
  FROM {n['via_checks']} GROUP BY eid
),
cand_lists AS (  -- per message with any candidate: the entries, their gate and via evidence
  SELECT c.dataset, c.msg_key,
    list({{'ord': e.ord, 'list': e.list, 'scope_kind': e.scope_kind, 'scope_value': e.scope_value,
          'id': e.id, 'describe': e.describe, 'gate': p.gate, 'via_cidr': {via_cidr},
          {", ".join(f"'{k}': vl.{k}" for k in _CHECKS)}}}) AS cands
  FROM cand c
  JOIN live e ON e.eid = c.eid
  JOIN {n['probes']} p ON p.list = e.list AND p.kind = e.kind AND p.field = c.field
   AND (p.gate = 'via') = (e.via_kind IS NOT NULL)
  LEFT JOIN via_lists vl ON vl.eid = c.eid
  {via_join}
  GROUP BY ALL
),
bulk_lists AS (  -- bulk_mailers with each provider's suffixes (for the `allow` exemption)
  SELECT b.provider, b.policy,
         {", ".join(f"list(x.suffix) FILTER (WHERE x.check_kind = '{k}') AS {k}" for k in _CHECKS)}
  FROM {n['bulk']} b LEFT JOIN {n['provider_checks']} x ON x.provider = b.provider GROUP BY ALL
),
m0 AS (  -- the one full pass: steps 0-1 and 4-7 decided per message, gated hits attached
  SELECT d.dataset, d.msg_key,
    CASE WHEN {inbound_expr} THEN 'inbound' WHEN d.category = 'malware' THEN 'malware' END AS pre,
    CASE WHEN b.policy = 'block' THEN 'bulk'
         WHEN {_FORGERY[mode]} THEN
           CASE WHEN b.policy = 'allow' AND d.header_ok AND {_checks('b')} THEN {after_forgery} ELSE 'forgery' END
         ELSE {after_forgery} END AS post,
    CASE WHEN pre IS NULL AND cl.cands IS NOT NULL
         THEN list_filter(cl.cands, lambda h: coalesce(CASE h.gate {gate_case} END, FALSE)) END AS hits,
    list_min(list_filter(hits, lambda h: h.list = 'block' AND h.scope_kind = 'global')) AS gb,
    list_min(list_filter(hits, lambda h: h.list = 'allow' AND h.scope_kind = 'global')) AS ga,
    d.bulk_provider, d.from_invalid, d.header_from_org, d.env_org, d.client_ip
  FROM d
  LEFT JOIN bulk_lists b ON b.provider = d.bulk_provider
  LEFT JOIN cand_lists cl ON cl.dataset = d.dataset AND cl.msg_key = d.msg_key
  {inbound_join}
),
msg AS (
  SELECT m0.*,
    -- A scoped hit earlier in file order than the global ones makes the answer per recipient.
    coalesce(len(list_filter(hits, lambda h: h.scope_kind <> 'global'
      AND (h.list = 'block' OR gb IS NULL) AND h.ord < coalesce(CASE h.list WHEN 'block' THEN m0.gb.ord ELSE m0.ga.ord END, 2147483647))) > 0,
      FALSE) AS scoped,
    CASE WHEN pre IS NOT NULL THEN pre WHEN scoped THEN NULL WHEN gb IS NOT NULL THEN 'block'
         WHEN ga IS NOT NULL THEN 'allow' ELSE post END AS decision,
    CASE coalesce(decision, post)  -- the evidence a reason names, only for the categories that name one
      WHEN 'bulk' THEN bulk_provider
      WHEN 'forgery' THEN CASE WHEN from_invalid
         THEN 'the From header is missing, repeated or holds several mailboxes'
         ELSE 'header From ' || coalesce(header_from_org, 'unknown') || ', envelope '
              || coalesce(env_org, 'unknown') END
      WHEN 'inbound' THEN coalesce(client_ip, 'no client IP') END AS detail
  FROM m0
),
per_rcpt AS (  -- one join; the lambdas only run for recipients of messages with scoped hits
  SELECT r.dataset, r.msg_key, r.recipient, m.decision, m.post, m.detail, m.bulk_provider,
    CASE WHEN m.decision IS NULL THEN list_min(list_filter(m.hits, lambda h: h.list = 'block' AND {_IN_SCOPE})) END AS b,
    CASE WHEN m.decision IS NULL THEN list_min(list_filter(m.hits, lambda h: h.list = 'allow' AND {_IN_SCOPE})) END AS a,
    CASE m.decision WHEN 'block' THEN m.gb WHEN 'allow' THEN m.ga END AS g
  FROM (SELECT * FROM {recipients} t {ds_filter}) r
  JOIN msg m ON m.dataset = r.dataset AND m.msg_key = r.msg_key
),
decided AS (
  SELECT dataset, msg_key, recipient, detail, bulk_provider,
    CASE WHEN decision IS NOT NULL THEN decision WHEN b IS NOT NULL THEN 'block'
         WHEN a IS NOT NULL THEN 'allow' ELSE post END AS category,
    coalesce(g, b, a) AS hit
  FROM per_rcpt
)
-- Texts are put together here, per row, from short parts: carrying finished reasons through
-- the join would put gigabytes of strings in its hash table.
SELECT x.dataset, x.msg_key, x.recipient, act.action, x.category,
  {_reason("x.category", "x.hit", "x.hit", "x.detail")} AS reason,
  {_rule_id("x.category", "x.hit", "x.hit", "x.bulk_provider")} AS rule_id
FROM decided x
JOIN {n['actions']} act ON act.category = x.category
"""


@contextmanager
def registered(con: duckdb.DuckDBPyConnection, policy: Policy, *, now: datetime | date | None = None,
               dataset: str | None = None, messages: str = "messages",
               recipients: str = "recipients") -> Iterator[str]:
    """Register the policy tables under unique temporary names, yield the verdict SQL over them,
    and unregister them afterwards (also on error)."""
    tag = uuid.uuid4().hex[:10]
    tables = policy_tables(policy, now=now, dataset=dataset)
    if _needs_ips(policy):
        where = " AND dataset = $ds" if dataset is not None else ""
        params = {"ds": dataset} if dataset is not None else {}
        # Once per distinct IPv6 client IP, not per message: the set is small next to the traffic.
        raw = con.execute(f"SELECT DISTINCT client_ip FROM {messages} WHERE contains(client_ip, ':'){where}",
                          params).fetchall()
        tables["ips"] = ip_table(r[0] for r in raw)
    else:
        tables["ips"] = ip_table(())
    names = {role: f"_edr_{tag}_{role}" for role in tables}
    try:
        for role, table in tables.items():
            con.register(names[role], table)
        yield verdict_sql(policy, names=names, messages=messages, recipients=recipients,
                          dataset=dataset)
    finally:
        for name in names.values():
            try:
                con.unregister(name)
            except duckdb.Error:
                pass


def evaluate_sql(con: duckdb.DuckDBPyConnection, policy: Policy, *, now: datetime | None = None,
                 dataset: str | None = None, messages: str = "messages",
                 recipients: str = "recipients") -> pa.Table:
    """Verdicts for every recipients row (of `dataset`, or all) as an Arrow table of VERDICT_COLUMNS."""
    with registered(con, policy, now=now, dataset=dataset, messages=messages,
                    recipients=recipients) as sql:
        return con.sql(sql).to_arrow_table()


def copy_verdicts(con: duckdb.DuckDBPyConnection, policy: Policy, out: str, *,
                  now: datetime | None = None, dataset: str | None = None,
                  messages: str = "messages", recipients: str = "recipients") -> int:
    """Write the verdicts straight to a Parquet file (no Python round trip); returns the row count."""
    with registered(con, policy, now=now, dataset=dataset, messages=messages,
                    recipients=recipients) as sql:
        con.execute(f"COPY ({sql}) TO $out (FORMAT parquet)", {"out": str(out)})
        return con.execute("SELECT count(*) FROM read_parquet($out)", {"out": str(out)}).fetchall()[0][0]


def verdict_counts(con: duckdb.DuckDBPyConnection, policy: Policy, *, now: datetime | None = None,
                   dataset: str | None = None, messages: str = "messages",
                   recipients: str = "recipients") -> list[tuple[str, str, int]]:
    """(action, category, recipients) counts, computed inside DuckDB."""
    with registered(con, policy, now=now, dataset=dataset, messages=messages,
                    recipients=recipients) as sql:
        return con.execute(
            f"SELECT action, category, count(*) FROM ({sql}) GROUP BY ALL ORDER BY 1, 2"
        ).fetchall()


# -- facts in ---------------------------------------------------------------------------------

def facts_tables(facts: Iterable[MessageFacts]) -> tuple[pa.Table, pa.Table]:
    """(messages, recipients) rows of the ingest schema for in-memory facts, so facts built in
    Python (tests, explain, notebooks) go through exactly the query a dataset does, derived
    columns included (computed as ingest computes them)."""
    from edrules.domains import address_domain
    from edrules.ingest.load import MESSAGES_SCHEMA, message_row

    names = [n for n in MESSAGES_SCHEMA.names if n != "dkim"]
    rows: list[tuple] = []
    dkim: list[list] = []
    rcpts: dict[str, list] = {c: [] for c in ("dataset", "msg_key", "recipient", "recipient_domain",
                                               "recipient_source")}
    for f in facts:
        rows.append(message_row(f))
        dkim.append([{"d": k.d, "s": k.s, "result": k.result, "org": k.org} for k in f.dkim])
        for r in f.recipients:
            rcpts["dataset"].append(f.dataset)
            rcpts["msg_key"].append(f.msg_key)
            rcpts["recipient"].append(r)
            rcpts["recipient_domain"].append(address_domain(r))
            rcpts["recipient_source"].append("envelope")
    cols = dict(zip(names, zip(*rows))) if rows else {n: () for n in names}
    messages = pa.Table.from_arrays(
        [pa.array(dkim if fld.name == "dkim" else list(cols[fld.name]), fld.type) for fld in MESSAGES_SCHEMA],
        schema=MESSAGES_SCHEMA)
    recipients = pa.table({c: pa.array(v, pa.string()) for c, v in rcpts.items()})
    return messages, recipients


def insert_facts(con: duckdb.DuckDBPyConnection, facts: Iterable[MessageFacts], *,
                 messages: str = "messages", recipients: str = "recipients") -> None:
    """Append facts to the `messages` and `recipients` tables (edrules.schema)."""
    m, r = facts_tables(facts)
    tag = uuid.uuid4().hex[:10]
    for name, table, target in ((f"_edr_{tag}_m", m, messages), (f"_edr_{tag}_r", r, recipients)):
        con.register(name, table)
        try:
            con.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {name}")
        finally:
            con.unregister(name)
