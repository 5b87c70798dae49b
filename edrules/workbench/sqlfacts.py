"""Per-message analyst facts in SQL: alignment, forgery flag and sending network for what-if reports."""

from __future__ import annotations

import duckdb

# The analyst's "forged" flag is deliberately independent of the From-policy under test: it
# says whether the header From is backed by its own domain, so a what-if can show what a
# looser policy lets in. The alignment terms follow docs/rules.md ("Derived facts").
FACTS_VIEW = "wb_facts"

_FACTS_SQL = f"""
CREATE OR REPLACE TEMP VIEW {FACTS_VIEW} AS
WITH base AS (
    SELECT
        m.dataset, m.msg_key, m.received_at, m.subject, m.message_id,
        m.header_from, m.header_from_domain, m.header_from_org, m.from_invalid,
        m.envelope_from, m.envelope_from_domain,
        CASE WHEN m.envelope_from = '' THEN m.helo ELSE m.envelope_from_domain END AS env_domain,
        CASE WHEN m.envelope_from = '' THEN m.helo_org ELSE m.envelope_from_org END AS env_org,
        m.client_ip, m.helo, m.helo_org, m.spf, m.dmarc, m.dmarc_policy, m.dkim,
        m.bulk_provider, m.category AS label, m.score, m.quarantine_state, m.source
    FROM messages m
), derived AS (
    SELECT *,
        NOT coalesce(from_invalid, FALSE)
            AND NOT coalesce(dmarc = 'fail' AND dmarc_policy IN ('quarantine', 'reject'), FALSE)
            AS header_ok,
        coalesce(spf = 'pass' AND env_org = header_from_org, FALSE) AS spf_aligned,
        coalesce(list_bool_or(list_transform(
            dkim, lambda x: x.result = 'pass' AND x.org = header_from_org)), FALSE) AS dkim_aligned
    FROM base
)
SELECT *,
    (coalesce(dmarc = 'pass', FALSE) OR spf_aligned OR dkim_aligned) AS aligned_auth,
    -- forged: the header From is not backed by its domain. Malformed, DMARC-failed, or
    -- unauthenticated while the envelope names another organisation (or SPF failed).
    (coalesce(from_invalid, FALSE)
     OR coalesce(dmarc = 'fail', FALSE)
     OR (NOT (coalesce(dmarc = 'pass', FALSE) OR spf_aligned OR dkim_aligned)
         AND header_from_org IS NOT NULL
         AND (env_org IS DISTINCT FROM header_from_org OR coalesce(spf IN ('fail', 'softfail'), FALSE)))
    ) AS forged,
    -- the network a message came through: the bulk provider when known, else the
    -- client's HELO organisation, else its /24 (IPv4) or the address itself
    coalesce(
        bulk_provider,
        helo_org,
        CASE WHEN regexp_matches(client_ip, '^\\d+\\.\\d+\\.\\d+\\.\\d+$')
             THEN regexp_extract(client_ip, '^(\\d+\\.\\d+\\.\\d+)\\.', 1) || '.0/24'
             ELSE client_ip END,
        env_org,
        '(unknown)'
    ) AS network
FROM derived
"""


def install_facts_view(con: duckdb.DuckDBPyConnection) -> str:
    """Create (or refresh) the temp view of analyst facts on this connection; returns its name."""
    con.execute(_FACTS_SQL)
    return FACTS_VIEW
