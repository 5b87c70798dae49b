"""What-if: the per-recipient verdict diff between two policies over the same history."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from edrules.backends.evalscope import no_envelope_note
from edrules.errors import EdrulesError, Location
from edrules.workbench.sqlfacts import install_facts_view

# Tag still delivers (with a marker); everything else keeps the message from the inbox.
DELIVERED_ACTIONS = ("deliver", "tag")

ROW_COLUMNS = (
    "dataset", "msg_key", "recipient", "transition", "action_before", "action_after",
    "decision_before", "decision_after", "rule_before", "rule_after", "reason_after",
    "label", "forged", "aligned_auth", "bulk_provider", "header_from", "header_from_domain",
    "envelope_from", "network", "received_at", "subject",
)

# Two steps: the bare verdict join finds the changed rows; only those then meet the facts
# view (computing alignment for every message first cost 3x the join on 1M rows).
_CHANGED_SQL = """
CREATE OR REPLACE TEMP TABLE wb_changed_keys AS
SELECT b.dataset, b.msg_key, b.recipient,
       b.action AS action_before, a.action AS action_after,
       b.category AS decision_before, a.category AS decision_after,
       b.rule_id AS rule_before, a.rule_id AS rule_after, a.reason AS reason_after
FROM {before} b
JOIN {after} a ON a.dataset = b.dataset AND a.msg_key = b.msg_key AND a.recipient = b.recipient
WHERE (b.action <> a.action {rule_clause}) {scope_clause}
"""

_ROWS_SQL = """
CREATE OR REPLACE TEMP TABLE wb_changed AS
SELECT c.dataset, c.msg_key, c.recipient,
       c.action_before || '→' || c.action_after AS transition,
       c.action_before, c.action_after, c.decision_before, c.decision_after,
       c.rule_before, c.rule_after, c.reason_after,
       f.label, coalesce(f.forged, FALSE) AS forged, coalesce(f.aligned_auth, FALSE) AS aligned_auth,
       f.bulk_provider, f.header_from, f.header_from_domain, f.envelope_from, f.network,
       f.received_at, f.subject,
       (c.action_after IN ('deliver', 'tag') AND c.action_before NOT IN ('deliver', 'tag')) AS newly_delivered,
       (c.action_before IN ('deliver', 'tag') AND c.action_after NOT IN ('deliver', 'tag')) AS newly_stopped
FROM wb_changed_keys c
LEFT JOIN (SELECT * FROM {facts} WHERE msg_key IN (SELECT msg_key FROM wb_changed_keys)) f
       ON f.dataset = c.dataset AND f.msg_key = c.msg_key
"""

# Most alarming first: newly delivered forged or phishing/malware mail, then the rest.
_ORDER = """
ORDER BY newly_delivered DESC, forged DESC,
         CASE label WHEN 'malware' THEN 0 WHEN 'phishing' THEN 1 WHEN 'spam' THEN 2 ELSE 3 END,
         transition, received_at NULLS LAST, msg_key, recipient
"""

_SUMMARY_SQL = """
WITH g AS (
    SELECT transition, coalesce(label, '(none)') AS label, forged,
           count(*) AS recipients, count(DISTINCT msg_key) AS messages
    FROM wb_changed GROUP BY ALL
), s AS (
    SELECT transition, coalesce(label, '(none)') AS label, forged,
           coalesce(header_from_domain, '(none)') AS k, count(*) AS n
    FROM wb_changed GROUP BY ALL
), p AS (
    SELECT transition, coalesce(label, '(none)') AS label, forged,
           coalesce(bulk_provider, '-') AS k, count(*) AS n
    FROM wb_changed GROUP BY ALL
), st AS (
    SELECT transition, label, forged,
           string_agg(k || ' (' || n || ')', ', ' ORDER BY n DESC, k) AS top_senders
    FROM (SELECT *, row_number() OVER (PARTITION BY transition, label, forged ORDER BY n DESC, k) AS r FROM s)
    WHERE r <= 3 GROUP BY ALL
), pt AS (
    SELECT transition, label, forged,
           string_agg(k || ' (' || n || ')', ', ' ORDER BY n DESC, k) AS top_providers
    FROM (SELECT *, row_number() OVER (PARTITION BY transition, label, forged ORDER BY n DESC, k) AS r FROM p)
    WHERE r <= 3 GROUP BY ALL
)
SELECT g.transition, g.label, g.forged, g.recipients, g.messages, st.top_senders, pt.top_providers
FROM g
LEFT JOIN st USING (transition, label, forged)
LEFT JOIN pt USING (transition, label, forged)
ORDER BY g.recipients DESC, g.transition, g.label, g.forged
"""


@dataclass(frozen=True, slots=True)
class WhatIf:
    """The outcome of replaying `after` instead of `before` over a dataset.

    rows: one row per changed (message, recipient), columns ROW_COLUMNS plus the two
    booleans newly_delivered / newly_stopped, most alarming first.
    summary: changed recipient rows by transition x label x forged, with top sender
    domains and bulk providers of each group.
    """

    before: str
    after: str
    total: int  # recipient rows evaluated
    rows: pd.DataFrame = field(repr=False)
    summary: pd.DataFrame = field(repr=False)
    now: str | None = None  # the evaluation date (entry expiry), as printed in reports
    scope: str = ""  # e.g. "recipient domain example.cz": what the rows were limited to
    rows_without_envelope: int = 0  # of `total`: no envelope sender known (evalscope.rows_without_envelope)
    from_policies: tuple[str, ...] = ()  # of before and after, for the wording of envelope_note

    @property
    def envelope_note(self) -> str:
        """How many rows were decided without an envelope sender, and what that hides; '' if none."""
        return no_envelope_note(self.rows_without_envelope, self.total, self.from_policies)

    @property
    def empty(self) -> bool:
        """Nothing was evaluated at all: a typo'd filter, not "no change"."""
        return self.total == 0

    def over_time(self, unit: str = "day") -> pd.DataFrame:
        """Changed recipient rows per day / week / month: newly delivered (forged apart),
        newly stopped, and other changes (e.g. quarantine -> reject)."""
        if unit not in ("day", "week", "month", "year"):
            raise EdrulesError(f"unit must be day, week, month or year, not {unit!r}")
        cols = ["bucket", "newly_delivered", "newly_delivered_forged", "newly_stopped", "other"]
        r = self.rows[self.rows["received_at"].notna()]
        if r.empty:
            return pd.DataFrame(columns=cols)
        ts = pd.to_datetime(r["received_at"])
        bucket = ts.dt.to_period({"day": "D", "week": "W-SUN", "month": "M", "year": "Y"}[unit]).dt.start_time
        df = pd.DataFrame({
            "bucket": bucket,
            "newly_delivered": r["newly_delivered"].astype(int),
            "newly_delivered_forged": (r["newly_delivered"] & r["forged"]).astype(int),
            "newly_stopped": r["newly_stopped"].astype(int),
            "other": (~r["newly_delivered"] & ~r["newly_stopped"]).astype(int),
        })
        return df.groupby("bucket", as_index=False).sum().sort_values("bucket").reset_index(drop=True)

    def write(self, path: str | Path) -> list[Path]:
        """The changed rows to PATH (.csv or .parquet) and the summary next to it
        (NAME.summary.csv|parquet); returns both paths."""
        path = Path(path)
        kind = path.suffix.lower()
        if kind not in (".csv", ".parquet"):
            raise EdrulesError("what-if output must end in .csv or .parquet", Location(str(path)))
        summary_path = path.with_name(f"{path.stem}.summary{kind}")
        rows = self.rows.assign(before=self.before, after=self.after, evaluated_at=self.now)
        summary = self.summary.assign(before=self.before, after=self.after, evaluated_at=self.now)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for df, p in ((rows, path), (summary, summary_path)):
                if kind == ".csv":
                    df.to_csv(p, index=False)
                else:
                    df.to_parquet(p, index=False)
        except OSError as exc:
            raise EdrulesError(f"cannot write what-if output: {exc.strerror}", Location(str(path))) from None
        return [path, summary_path]

    @property
    def changed(self) -> int:
        return len(self.rows)

    @property
    def newly_delivered(self) -> pd.DataFrame:
        return self.rows[self.rows["newly_delivered"]]

    @property
    def forged_let_in(self) -> pd.DataFrame:
        """Newly delivered rows whose header From is forged: what the change lets attackers do."""
        nd = self.newly_delivered
        return nd[nd["forged"]]

    @property
    def newly_stopped(self) -> pd.DataFrame:
        return self.rows[self.rows["newly_stopped"]]

    def counts(self) -> dict[str, Any]:
        """The headline numbers, plain ints, stable key order."""
        nd = self.newly_delivered
        by_label = nd["label"].fillna("(none)").value_counts().sort_index()
        return {
            "total": int(self.total),
            "changed": int(self.changed),
            "newly_delivered": int(len(nd)),
            "newly_delivered_messages": int(nd["msg_key"].nunique()),
            "newly_delivered_forged": int(nd["forged"].sum()),
            "newly_delivered_by_label": {str(k): int(v) for k, v in by_label.items()},
            "newly_stopped": int(len(self.newly_stopped)),
        }

    def to_json(self, limit: int = 20) -> dict[str, Any]:
        top = self.rows.head(limit).copy()
        top["received_at"] = top["received_at"].astype(str)
        return {
            "before": self.before,
            "after": self.after,
            "now": self.now,
            "scope": self.scope,
            "counts": self.counts(),
            "rows_without_envelope": int(self.rows_without_envelope),
            "summary": self.summary.to_dict(orient="records"),
            "rows": top.to_dict(orient="records"),
        }


def compute_whatif(con: duckdb.DuckDBPyConnection, before: str, after: str, *,
                   before_name: str, after_name: str,
                   include_rule_changes: bool = False, now: str | None = None,
                   recipient: str | None = None, recipient_domain: str | None = None) -> WhatIf:
    """Diff two verdict temp tables (backends.sql.VERDICT_COLUMNS) in DuckDB; only changes leave it.
    `recipient` / `recipient_domain` limit the diff (and its total) to those recipient rows."""
    facts = install_facts_view(con)
    rule_clause = "OR b.rule_id IS DISTINCT FROM a.rule_id" if include_rule_changes else ""
    scope, params, names = [], {}, []
    if recipient is not None:
        scope.append("b.recipient = $rcpt")
        params["rcpt"] = recipient.strip().lower()
        names.append(f"recipient {params['rcpt']}")
    if recipient_domain is not None:
        scope.append("lower(split_part(b.recipient, '@', -1)) = $rdom")
        params["rdom"] = recipient_domain.strip().lower().rstrip(".")
        names.append(f"recipient domain {params['rdom']}")
    scope_clause = "".join(f" AND {c}" for c in scope)
    con.execute(_CHANGED_SQL.format(before=before, after=after, rule_clause=rule_clause,
                                    scope_clause=scope_clause), params)
    con.execute(_ROWS_SQL.format(facts=facts))
    rows = con.sql("SELECT * FROM wb_changed " + _ORDER).df()
    summary = con.sql(_SUMMARY_SQL).df()
    where = ("WHERE " + " AND ".join(scope)) if scope else ""
    total = con.execute(f"SELECT count(*) FROM {before} b {where}", params).fetchall()[0][0]
    for col in ("recipients", "messages"):
        summary[col] = summary[col].astype("int64")
    return WhatIf(before=before_name, after=after_name, total=total,
                  rows=rows.reset_index(drop=True), summary=summary, now=now, scope=", ".join(names))
