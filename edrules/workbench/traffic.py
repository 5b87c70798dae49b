"""Traffic summaries an analyst looks at first: volumes, top senders, auth results by network."""

from __future__ import annotations

from typing import Any

import duckdb
import pandas as pd

from edrules.workbench.sqlfacts import install_facts_view


def _where(dataset: str | None, alias: str = "") -> tuple[str, dict[str, Any]]:
    if dataset is None:
        return "", {}
    return f"WHERE {alias}dataset = $ds", {"ds": dataset}


def overview(con: duckdb.DuckDBPyConnection, dataset: str | None = None) -> dict[str, Any]:
    """Headline counts of the dataset: messages, recipient rows, labels, date span, errors."""
    where, p = _where(dataset)
    msgs, first, last = con.execute(
        f"SELECT count(*), min(received_at), max(received_at) FROM messages {where}", p).fetchall()[0]
    rcpts = con.execute(f"SELECT count(*) FROM recipients {where}", p).fetchall()[0][0]
    errors = con.execute(f"SELECT count(*) FROM ingest_errors {where}", p).fetchall()[0][0]
    labels = dict(con.execute(
        f"SELECT coalesce(category, '(none)'), count(*) FROM messages {where} GROUP BY 1 ORDER BY 1", p
    ).fetchall())
    datasets = dict(con.execute(
        f"SELECT dataset, count(*) FROM messages {where} GROUP BY 1 ORDER BY 1", p).fetchall())
    return {
        "messages": int(msgs), "recipients": int(rcpts), "ingest_errors": int(errors),
        "first": str(first) if first else None, "last": str(last) if last else None,
        "labels": {k: int(v) for k, v in labels.items()},
        "datasets": {k: int(v) for k, v in datasets.items()},
    }


def volume(con: duckdb.DuckDBPyConnection, verdict_table: str | None = None, *,
           dataset: str | None = None, unit: str = "day") -> pd.DataFrame:
    """Recipient rows per time bucket, by verdict action (with a pack) or by label (without)."""
    install_facts_view(con)
    where, p = _where(dataset, "r.")
    if verdict_table is None:
        return con.execute(f"""
            SELECT date_trunc('{unit}', f.received_at) AS bucket, coalesce(f.label, '(none)') AS key,
                   count(*) AS recipients
            FROM recipients r JOIN wb_facts f ON f.dataset = r.dataset AND f.msg_key = r.msg_key
            {where} {'AND' if where else 'WHERE'} f.received_at IS NOT NULL
            GROUP BY ALL ORDER BY bucket, key""", p).df()
    where, p = _where(dataset, "v.")
    return con.execute(f"""
        SELECT date_trunc('{unit}', f.received_at) AS bucket, v.action AS key, count(*) AS recipients
        FROM {verdict_table} v JOIN wb_facts f ON f.dataset = v.dataset AND f.msg_key = v.msg_key
        {where} {'AND' if where else 'WHERE'} f.received_at IS NOT NULL
        GROUP BY ALL ORDER BY bucket, key""", p).df()


def top_senders(con: duckdb.DuckDBPyConnection, *, by: str = "header_from_domain", n: int = 10,
                dataset: str | None = None, provider: str | None = None) -> pd.DataFrame:
    """Most frequent senders (header From domain by default), with how their mail authenticated."""
    if by not in ("header_from_domain", "header_from", "envelope_from_domain", "network", "bulk_provider"):
        raise ValueError(f"cannot rank senders by {by!r}")
    install_facts_view(con)
    where, p = _where(dataset)
    if provider is not None:
        where = (where + " AND" if where else "WHERE") + " bulk_provider = $provider"
        p["provider"] = provider
    return con.execute(f"""
        SELECT coalesce({by}, '(none)') AS sender, count(*) AS messages,
               count(*) FILTER (WHERE aligned_auth) AS aligned,
               count(*) FILTER (WHERE forged) AS forged,
               count(*) FILTER (WHERE label IN ('spam', 'phishing', 'malware')) AS bad_label
        FROM wb_facts {where} GROUP BY 1 ORDER BY messages DESC, sender LIMIT {int(n)}""", p).df()


def auth_by_provider(con: duckdb.DuckDBPyConnection, dataset: str | None = None) -> pd.DataFrame:
    """Per sending network (bulk provider, '(direct)' for none): SPF/DKIM/DMARC outcomes."""
    install_facts_view(con)
    where, p = _where(dataset)
    return con.execute(f"""
        SELECT coalesce(bulk_provider, '(direct)') AS provider, count(*) AS messages,
               count(*) FILTER (WHERE spf = 'pass') AS spf_pass,
               count(*) FILTER (WHERE dkim_aligned) AS dkim_aligned,
               count(*) FILTER (WHERE dmarc = 'pass') AS dmarc_pass,
               count(*) FILTER (WHERE dmarc = 'fail') AS dmarc_fail,
               count(*) FILTER (WHERE aligned_auth) AS aligned,
               count(*) FILTER (WHERE forged) AS forged,
               count(*) FILTER (WHERE header_from_org IS DISTINCT FROM env_org) AS from_differs
        FROM wb_facts {where} GROUP BY 1 ORDER BY messages DESC, provider""", p).df()


def provider_numbers(con: duckdb.DuckDBPyConnection, provider: str, dataset: str | None = None) -> dict[str, int]:
    """Messages through one provider: authentication outcomes and labels, plain ints."""
    row = auth_by_provider(con, dataset)
    row = row[row["provider"] == provider]
    out = {k: int(v) for k, v in row.iloc[0].items() if k != "provider"} if len(row) else {"messages": 0}
    where, p = _where(dataset)
    where = (where + " AND" if where else "WHERE") + " bulk_provider = $provider"
    p["provider"] = provider
    for label, n in con.execute(
            f"SELECT coalesce(label, '(none)'), count(*) FROM wb_facts {where} GROUP BY 1 ORDER BY 1", p).fetchall():
        out[f"label_{label}"] = int(n)
    return out
