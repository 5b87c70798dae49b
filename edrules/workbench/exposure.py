"""Forgery exposure of allow entries: what each one delivers over history, and how much of it is suspect."""

from __future__ import annotations

import duckdb
import pandas as pd

from edrules.rules.model import Policy
from edrules.workbench.packs import describe_entry
from edrules.workbench.sqlfacts import install_facts_view

EXPOSURE_COLUMNS = (
    "entry_id", "entry", "scope", "messages", "recipients", "unaligned", "forged",
    "spam", "phishing", "unusual_network", "top_networks",
)

# "Usual" network of a From domain: the one its aligned-authenticated mail most often came
# through (falling back to all its mail when none authenticated). A hit from elsewhere is
# how a spoof of an allow-listed brand looks in history.
_SQL = """
WITH nets AS (
    SELECT header_from_domain, network,
           count(*) FILTER (WHERE aligned_auth) AS n_auth, count(*) AS n
    FROM {facts} WHERE header_from_domain IS NOT NULL GROUP BY ALL
), usual AS (
    SELECT header_from_domain, network AS usual_network FROM (
        SELECT *, row_number() OVER (PARTITION BY header_from_domain
                                     ORDER BY n_auth DESC, n DESC, network) AS r
        FROM nets) WHERE r = 1
), hits AS (
    SELECT v.rule_id, v.dataset || ':' || v.msg_key AS mk, f.*, u.usual_network
    FROM {verdicts} v
    JOIN {facts} f ON f.dataset = v.dataset AND f.msg_key = v.msg_key
    LEFT JOIN usual u ON u.header_from_domain = f.header_from_domain
    WHERE v.category = 'allow'
), nettop AS (
    SELECT rule_id, string_agg(network || ' (' || n || ')', ', ' ORDER BY n DESC, network) AS top_networks
    FROM (SELECT *, row_number() OVER (PARTITION BY rule_id ORDER BY n DESC, network) AS r
          FROM (SELECT rule_id, network, count(DISTINCT mk) AS n FROM hits GROUP BY rule_id, network))
    WHERE r <= 3 GROUP BY rule_id
)
SELECT h.rule_id AS entry_id,
       count(DISTINCT mk) AS messages,
       count(*) AS recipients,
       count(DISTINCT mk) FILTER (WHERE NOT aligned_auth) AS unaligned,
       count(DISTINCT mk) FILTER (WHERE forged) AS forged,
       count(DISTINCT mk) FILTER (WHERE label = 'spam') AS spam,
       count(DISTINCT mk) FILTER (WHERE label = 'phishing') AS phishing,
       count(DISTINCT mk) FILTER (WHERE network IS DISTINCT FROM usual_network) AS unusual_network,
       any_value(t.top_networks) AS top_networks
FROM hits h LEFT JOIN nettop t ON t.rule_id = h.rule_id
GROUP BY h.rule_id
"""


def compute_exposure(con: duckdb.DuckDBPyConnection, policy: Policy, verdicts: str) -> pd.DataFrame:
    """One row per allow entry of the policy, in file order, with what it delivered.

    'Matched' means the entry decided the verdict (first matching allow entry, after
    malware and block): exactly the mail this entry is responsible for letting in.
    """
    facts = install_facts_view(con)
    found = con.sql(_SQL.format(facts=facts, verdicts=verdicts)).df().set_index("entry_id")
    rows = []
    for entry in policy.allow:
        hit = found.loc[entry.id] if entry.id in found.index else None
        row = {"entry_id": entry.id, "entry": describe_entry(entry), "scope": str(entry.scope)}
        for col in EXPOSURE_COLUMNS[3:-1]:
            row[col] = int(hit[col]) if hit is not None else 0
        row["top_networks"] = (hit["top_networks"] or "") if hit is not None else ""
        rows.append(row)
    return pd.DataFrame(rows, columns=list(EXPOSURE_COLUMNS))
