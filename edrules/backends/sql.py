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

# Gate token -> SQL over the candidate row's message flags.
_GATES: dict[str, str] = {
    "always": "TRUE",
    "env_ok": "c.env_ok",
    "spf_env_ok": "c.spf_pass AND c.env_ok",
    "header_ok": "c.header_ok",
    "header_aligned": "c.header_ok AND c.aligned_auth",
    "via": "c.header_ok AND v.eid IS NOT NULL",
}

# Forgery per From-policy, over the derived flags of CTE `d` (docs/rules.md "Derived facts"):
# every mode is a forgery when header_ok fails, so a stricter mode never passes what a weaker stops.
_FORGERY: dict[FromPolicy, str] = {
    FromPolicy.STRICT: "NOT d.header_ok OR coalesce(d.header_from_org <> d.env_org, FALSE)",
    FromPolicy.ALIGNED: "NOT d.header_ok OR NOT d.aligned_auth",
    FromPolicy.RELAXED: "NOT d.header_ok",
}

# Infrastructure check token -> SQL: does the message's identity equal or sit label-wise under
# `x.suffix`? Shared by pair `via` sides and the bulk-mailer `allow` exemption.
_CHECKS: dict[str, str] = {
    "spf_env_domain": "c.spf_pass AND (c.env_domain = x.suffix OR ends_with(c.env_domain, '.' || x.suffix))",
    "spf_envelope_from_domain": (
        "c.spf_pass AND (c.envelope_from_domain = x.suffix"
        " OR ends_with(c.envelope_from_domain, '.' || x.suffix))"
    ),
    "dkim_d": (
        "len(list_filter(c.dkim, lambda k: k.result = 'pass'"
        " AND (k.d = x.suffix OR ends_with(k.d, '.' || x.suffix)))) > 0"
    ),
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
    if now is None:
        return datetime.now(timezone.utc).date()
    return now.date() if isinstance(now, datetime) else now


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
    out). IPv4 texts are parsed inside the query (_V4_RE); IPv6 goes through `ipaddress`, the
    parser the runtime uses, so '::' forms, embedded dotted quads and zone ids mean the same."""
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
                "check": pa.array([v[1] for v in via_checks], s),
                "suffix": pa.array([v[2] for v in via_checks], s),
            }
        ),
        "provider_checks": pa.table(
            {
                "provider": pa.array([v[0] for v in provider_checks], s),
                "check": pa.array([v[1] for v in provider_checks], s),
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


def _needs_ips(policy: Policy) -> bool:
    return bool(policy.inbound_enforce or policy.inbound_relays
                or any(e.kind is EntryKind.IP or (e.via is not None and e.via.kind is ViaKind.CIDR)
                       for e in (*policy.allow, *policy.block)))


def _check_case(alias: str) -> str:
    whens = " ".join(f"WHEN '{k}' THEN {v}" for k, v in _CHECKS.items())
    return f"coalesce(CASE {alias}.check {whens} END, FALSE)"


def verdict_sql(policy: Policy, *, names: Mapping[str, str] | None = None,
                messages: str = "messages", recipients: str = "recipients",
                dataset: str | None = None) -> str:
    """The DuckDB query producing VERDICT_COLUMNS, one row per recipients row.

    names maps each table role to the name it is registered under (default: the role itself).
    The policy only chooses the query's shape (From-policy mode, whether CIDRs and inbound
    enforcement take part); every value comes from the tables. `dataset` only switches the
    filter on; its value is params.dataset."""
    n = {role: role for role in TABLE_ROLES} | dict(names or {})
    mode = FromPolicy(policy.from_policy)
    with_ips = _needs_ips(policy)
    ds_filter = f"WHERE t.dataset = (SELECT dataset FROM {n['params']})" if dataset is not None else ""
    gate_case = " ".join(f"WHEN '{k}' THEN {v}" for k, v in _GATES.items())

    ip_ctes = ""
    ip_branch = ""
    inbound_expr = "FALSE"
    if with_ips:
        ip_ctes = f"""
ip_keys AS MATERIALIZED (  -- each distinct client IP masked to every prefix length in use
  SELECT i.client_ip, i.family, k.plen, i.hi & k.hi_mask AS m_hi, i.lo & k.lo_mask AS m_lo
  FROM (
    SELECT client_ip, 4::TINYINT AS family, 0::UBIGINT AS hi,
      (split_part(client_ip, '.', 1)::UBIGINT << 24) + (split_part(client_ip, '.', 2)::UBIGINT << 16)
      + (split_part(client_ip, '.', 3)::UBIGINT << 8) + split_part(client_ip, '.', 4)::UBIGINT AS lo
    FROM (SELECT DISTINCT client_ip FROM d WHERE regexp_full_match(client_ip, '{_V4_RE}'))
    UNION ALL
    SELECT client_ip, family, hi, lo FROM {n['ips']}
  ) i JOIN {n['masks']} k ON k.family = i.family
),
ip_hits AS (  -- then one equi-join on (family, prefix, network): no range join, no nested loop
  SELECT i.client_ip, c.role, c.eid
  FROM ip_keys i
  JOIN {n['cidrs']} c ON c.family = i.family AND c.plen = i.plen AND c.net_hi = i.m_hi AND c.net_lo = i.m_lo
),
relay_ips AS (SELECT DISTINCT client_ip FROM ip_hits WHERE role = 'relay'),"""
        ip_branch = """
  UNION ALL
  SELECT d.*, 'client_ip' AS field, h.eid FROM d JOIN ip_hits h ON h.client_ip = d.client_ip AND h.role = 'entry'"""
    if policy.inbound_enforce:
        # A missing or unparseable client IP is "not in any relay" (the runtime's choice):
        # enforcement exists to refuse mail that did not come through the relays.
        inbound_expr = "ri.client_ip IS NULL"
    inbound_join = (f"LEFT JOIN relay_ips ri ON ri.client_ip = d.client_ip"
                    if policy.inbound_enforce else "")
    via_cidr = ""
    if with_ips:
        via_cidr = """
  UNION
  SELECT c.msg_key, c.eid FROM cand c
  JOIN ip_hits h ON h.client_ip = c.client_ip AND h.eid = c.eid AND h.role = 'via'"""

    return f"""
WITH
prm AS (SELECT * FROM {n['params']}),
live AS (  -- expired entries are ignored (valid through `expires` inclusive)
  SELECT e.* FROM {n['entries']} e WHERE e.expires IS NULL OR e.expires >= (SELECT now_date FROM prm)
),
d AS (  -- derived facts per message (docs/rules.md "Derived facts")
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
cand AS (  -- (message, field, entry) where the field's value matches the entry's value
  SELECT d.*, 'envelope_from' AS field, e.eid FROM d JOIN senders e ON e.value = d.envelope_from
  UNION ALL
  SELECT d.*, 'header_from' AS field, e.eid FROM d JOIN senders e ON e.value = d.header_from
  UNION ALL
  SELECT d.*, 'envelope_from_domain' AS field, h.eid FROM d JOIN dom_hits h ON h.v = d.envelope_from_domain
  UNION ALL
  SELECT d.*, 'header_from_domain' AS field, h.eid FROM d JOIN dom_hits h ON h.v = d.header_from_domain{ip_branch}
),
via_ok AS (  -- pairs whose infrastructure side is authenticated for that message
  SELECT c.msg_key, c.eid FROM cand c JOIN {n['via_checks']} x ON x.eid = c.eid
  WHERE {_check_case('x')}{via_cidr}
),
hits AS (
  SELECT c.dataset, c.msg_key, e.list, e.scope_kind, e.scope_value,
         {{'ord': e.ord, 'id': e.id, 'describe': e.describe}} AS hit
  FROM cand c
  JOIN live e ON e.eid = c.eid
  JOIN {n['probes']} p ON p.list = e.list AND p.kind = e.kind AND p.field = c.field
   AND (p.gate = 'via') = (e.via_kind IS NOT NULL)
  LEFT JOIN (SELECT DISTINCT msg_key, eid FROM via_ok) v ON v.msg_key = c.msg_key AND v.eid = c.eid
  WHERE CASE p.gate {gate_case} END
),
hit_g AS (
  SELECT dataset, msg_key, min(hit) FILTER (WHERE list = 'block') AS b, min(hit) FILTER (WHERE list = 'allow') AS a
  FROM hits WHERE scope_kind = 'global' GROUP BY ALL
),
hit_d AS (
  SELECT dataset, msg_key, scope_value AS recipient_domain,
         min(hit) FILTER (WHERE list = 'block') AS b, min(hit) FILTER (WHERE list = 'allow') AS a
  FROM hits WHERE scope_kind = 'domain' GROUP BY ALL
),
hit_u AS (
  SELECT dataset, msg_key, scope_value AS recipient,
         min(hit) FILTER (WHERE list = 'block') AS b, min(hit) FILTER (WHERE list = 'allow') AS a
  FROM hits WHERE scope_kind = 'user' GROUP BY ALL
),
exempt AS (  -- forgeries through a bulk_mailers `allow` network that is authenticated for them
  SELECT DISTINCT c.dataset, c.msg_key
  FROM (SELECT d.* FROM d JOIN {n['bulk']} b ON b.provider = d.bulk_provider AND b.policy = 'allow'
        WHERE {_FORGERY[mode]}) c
  JOIN {n['provider_checks']} x ON x.provider = c.bulk_provider
  WHERE {_check_case('x')}
),
base AS (  -- the recipient-independent steps: 0, 1 before the lists, 4-7 after them
  SELECT d.dataset, d.msg_key,
    CASE WHEN {inbound_expr} THEN 'inbound' WHEN d.category = 'malware' THEN 'malware' END AS pre,
    CASE WHEN b.policy = 'block' THEN 'bulk'
         WHEN ({_FORGERY[mode]}) AND x.msg_key IS NULL THEN 'forgery'
         WHEN d.category IN ('phishing', 'spam') THEN d.category
         ELSE 'clean' END AS post,
    d.bulk_provider, d.category AS msg_category, d.header_from_org, d.env_org, d.from_invalid, d.client_ip
  FROM d
  LEFT JOIN {n['bulk']} b ON b.provider = d.bulk_provider
  LEFT JOIN exempt x ON x.dataset = d.dataset AND x.msg_key = d.msg_key
  {inbound_join}
),
per_rcpt AS (
  SELECT r.dataset, r.msg_key, r.recipient, base.*  EXCLUDE (dataset, msg_key),
         least(g.b, dh.b, uh.b) AS b, least(g.a, dh.a, uh.a) AS a
  FROM (SELECT * FROM {recipients} t {ds_filter}) r
  JOIN base ON base.dataset = r.dataset AND base.msg_key = r.msg_key
  LEFT JOIN hit_g g ON g.dataset = r.dataset AND g.msg_key = r.msg_key
  LEFT JOIN hit_d dh ON dh.dataset = r.dataset AND dh.msg_key = r.msg_key AND dh.recipient_domain = r.recipient_domain
  LEFT JOIN hit_u uh ON uh.dataset = r.dataset AND uh.msg_key = r.msg_key AND uh.recipient = r.recipient
),
decided AS (
  SELECT *, CASE WHEN pre IS NOT NULL THEN pre WHEN b IS NOT NULL THEN 'block'
                 WHEN a IS NOT NULL THEN 'allow' ELSE post END AS decision
  FROM per_rcpt
)
SELECT x.dataset, x.msg_key, x.recipient, act.action, x.decision AS category,
  CASE x.decision
    WHEN 'block' THEN act.reason || ' ' || x.b.describe
    WHEN 'allow' THEN act.reason || ' ' || x.a.describe
    WHEN 'bulk' THEN act.reason || ' (' || x.bulk_provider || ')'
    WHEN 'forgery' THEN act.reason || CASE WHEN x.from_invalid
         THEN ': the From header is missing, repeated or holds several mailboxes'
         ELSE ': header From ' || coalesce(x.header_from_org, 'unknown') || ', envelope '
              || coalesce(x.env_org, 'unknown') END
    WHEN 'inbound' THEN act.reason || ' (' || coalesce(x.client_ip, 'no client IP') || ')'
    ELSE act.reason END AS reason,
  CASE x.decision
    WHEN 'block' THEN x.b.id
    WHEN 'allow' THEN x.a.id
    WHEN 'bulk' THEN 'bulk:' || x.bulk_provider
    ELSE act.rule_id END AS rule_id
FROM decided x
JOIN {n['actions']} act ON act.category = x.decision
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

_DKIM_TYPE = pa.list_(pa.struct([("d", pa.string()), ("s", pa.string()), ("result", pa.string()),
                                 ("org", pa.string())]))
_COLUMN_TYPES: dict[str, pa.DataType] = {
    "received_at": pa.timestamp("us"), "from_invalid": pa.bool_(), "dkim": _DKIM_TYPE,
    "score": pa.float64(), "size": pa.int64(),
}


def facts_tables(facts: Iterable[MessageFacts]) -> tuple[pa.Table, pa.Table]:
    """(messages, recipients) rows of the ingest schema for in-memory facts, so facts built in
    Python (tests, explain, notebooks) go through exactly the query a dataset does."""
    from edrules.domains import address_domain

    names = MessageFacts.column_names()
    msgs: dict[str, list] = {c: [] for c in names}
    rcpts: dict[str, list] = {c: [] for c in ("dataset", "msg_key", "recipient", "recipient_domain",
                                               "recipient_source")}
    for f in facts:
        row = f.to_row()
        row["dkim"] = [{"d": k["d"], "s": k["s"], "result": k["result"], "org": k["org"]}
                       for k in row["dkim"]]
        for c in names:
            msgs[c].append(row[c])
        for r in f.recipients:
            rcpts["dataset"].append(f.dataset)
            rcpts["msg_key"].append(f.msg_key)
            rcpts["recipient"].append(r)
            rcpts["recipient_domain"].append(address_domain(r))
            rcpts["recipient_source"].append("envelope")
    messages = pa.table({c: pa.array(msgs[c], _COLUMN_TYPES.get(c, pa.string())) for c in names})
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
