"""Diff of two rules files, change by change, and per-entry hit statistics over a dataset."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import duckdb
import pandas as pd

from edrules.rules.model import BulkPolicy, Entry, Policy
from edrules.workbench.packs import describe_entry
from edrules.workbench.sqlfacts import install_facts_view
from edrules.workbench.whatif import WhatIf

DIFF_COLUMNS = ("change", "what", "before", "after", "changed", "newly_delivered",
                "newly_delivered_forged", "newly_phishing", "newly_stopped")
HIT_COLUMNS = ("list", "entry_id", "entry", "hits", "messages", "first_hit", "last_hit",
               "forged", "phishing", "spam", "expires")


@dataclass(frozen=True, slots=True)
class RuleChange:
    """One difference between two policies, and the policy with only that change applied."""

    change: str  # added | removed | changed | setting
    what: str  # entry id or setting name
    before: str
    after: str
    policy: Policy


def _key(entry: Entry) -> str:
    # Entries written without an id get 'allow[2]' from their position: match those by content,
    # so inserting one entry does not read as every later entry changing.
    return entry.id if "[" not in entry.id else f"{entry.list.value}:{describe_entry(entry)}"


def _same(a: Entry, b: Entry) -> bool:
    return replace(a, line=None, id="") == replace(b, line=None, id="")


def rule_changes(before: Policy, after: Policy) -> list[RuleChange]:
    """Entries added, removed and changed (by id), then every changed setting, each applied
    alone to `before`, so each change's what-if is its own."""
    base = replace(before, providers={**before.providers, **after.providers})
    out: list[RuleChange] = []
    for lst in ("allow", "block"):
        old = {_key(e): e for e in getattr(before, lst)}
        new = {_key(e): e for e in getattr(after, lst)}
        for k, e in new.items():
            if k not in old:
                out.append(RuleChange("added", e.id, "", describe_entry(e),
                                      replace(base, **{lst: getattr(base, lst) + (e,)})))
            elif not _same(old[k], e):
                entries = tuple(e if _key(x) == k else x for x in getattr(base, lst))
                out.append(RuleChange("changed", e.id, describe_entry(old[k]), describe_entry(e),
                                      replace(base, **{lst: entries})))
        for k, e in old.items():
            if k not in new:
                entries = tuple(x for x in getattr(base, lst) if _key(x) != k)
                out.append(RuleChange("removed", e.id, describe_entry(e), "", replace(base, **{lst: entries})))
    if before.from_policy is not after.from_policy:
        out.append(RuleChange("setting", "from_policy", before.from_policy.value, after.from_policy.value,
                              replace(base, from_policy=after.from_policy)))
    for p in sorted(set(before.bulk_mailers) | set(after.bulk_mailers)):
        b = before.bulk_mailers.get(p, BulkPolicy.SCAN)
        a = after.bulk_mailers.get(p, BulkPolicy.SCAN)
        if a is not b:
            mailers = {**base.bulk_mailers, p: a}
            if a is BulkPolicy.SCAN:
                mailers.pop(p)
            out.append(RuleChange("setting", f"bulk_mailers.{p}", b.value, a.value,
                                  replace(base, bulk_mailers=mailers)))
    for cat in sorted(set(before.actions) | set(after.actions)):
        b, a = before.actions.get(cat), after.actions.get(cat)
        if a != b:
            out.append(RuleChange("setting", f"actions.{cat}", str(b or "-"), str(a or "-"),
                                  replace(base, actions={**base.actions, cat: a} if a else base.actions)))
    if (before.inbound_relays, before.inbound_enforce) != (after.inbound_relays, after.inbound_enforce):
        out.append(RuleChange("setting", "inbound", ", ".join(before.inbound_relays) or "-",
                              ", ".join(after.inbound_relays) or "-",
                              replace(base, inbound_relays=after.inbound_relays,
                                      inbound_enforce=after.inbound_enforce)))
    return out


def diff_table(before: Policy, after: Policy, whatif: Callable[[Policy, Policy], WhatIf]) -> pd.DataFrame:
    """One row per change with the what-if of that change alone against `before`."""
    rows = []
    for ch in rule_changes(before, after):
        c = whatif(before, replace(ch.policy, name=f"{before.name} + {ch.what}")).counts()
        rows.append({"change": ch.change, "what": ch.what, "before": ch.before, "after": ch.after,
                     "changed": c["changed"], "newly_delivered": c["newly_delivered"],
                     "newly_delivered_forged": c["newly_delivered_forged"],
                     "newly_phishing": c["newly_delivered_by_label"].get("phishing", 0),
                     "newly_stopped": c["newly_stopped"]})
    return pd.DataFrame(rows, columns=list(DIFF_COLUMNS))


_HITS_SQL = """
SELECT v.rule_id, count(*) AS hits, count(DISTINCT v.dataset || ':' || v.msg_key) AS messages,
       min(f.received_at) AS first_hit, max(f.received_at) AS last_hit,
       count(DISTINCT v.dataset || ':' || v.msg_key) FILTER (WHERE f.forged) AS forged,
       count(DISTINCT v.dataset || ':' || v.msg_key) FILTER (WHERE f.label = 'phishing') AS phishing,
       count(DISTINCT v.dataset || ':' || v.msg_key) FILTER (WHERE f.label = 'spam') AS spam
FROM {verdicts} v JOIN {facts} f ON f.dataset = v.dataset AND f.msg_key = v.msg_key
WHERE v.category IN ('allow', 'block')
GROUP BY v.rule_id
"""


def entry_hits(con: duckdb.DuckDBPyConnection, policy: Policy, verdicts: str) -> pd.DataFrame:
    """Per allow/block entry, in file order: recipient rows it decided (hits), their messages,
    first and last hit, and how many of those were forged, phishing or spam. An entry with
    0 hits and an old last hit is the one to prune."""
    facts = install_facts_view(con)
    found = con.sql(_HITS_SQL.format(verdicts=verdicts, facts=facts)).df().set_index("rule_id")
    rows = []
    for e in policy.allow + policy.block:
        h = found.loc[e.id] if e.id in found.index else None
        rows.append({
            "list": e.list.value, "entry_id": e.id, "entry": describe_entry(e),
            "hits": int(h["hits"]) if h is not None else 0,
            "messages": int(h["messages"]) if h is not None else 0,
            "first_hit": h["first_hit"] if h is not None else pd.NaT,
            "last_hit": h["last_hit"] if h is not None else pd.NaT,
            "forged": int(h["forged"]) if h is not None else 0,
            "phishing": int(h["phishing"]) if h is not None else 0,
            "spam": int(h["spam"]) if h is not None else 0,
            "expires": e.expires.isoformat() if e.expires else "-",
        })
    return pd.DataFrame(rows, columns=list(HIT_COLUMNS))
