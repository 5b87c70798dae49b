"""Replay the runtime backend over a DuckDB dataset, in the SQL backend's verdict columns."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from edrules.backends.runtime import RuntimeEvaluator
from edrules.backends.sql import VERDICT_COLUMNS
from edrules.ingest import read_facts
from edrules.rules.model import Policy

VERDICT_SCHEMA = pa.schema([(name, pa.string()) for name in VERDICT_COLUMNS])


def runtime_table(con, policy: Policy, *, now: datetime | None = None, dataset: str | None = None) -> pa.Table:
    """Verdicts of the gateway's in-memory evaluator, one message at a time."""
    evaluator = RuntimeEvaluator(policy)
    rows: dict[str, list] = {c: [] for c in VERDICT_COLUMNS}
    for facts in read_facts(con, dataset=dataset):
        for v in evaluator.evaluate(facts, now=now):
            rows["dataset"].append(facts.dataset)
            rows["msg_key"].append(facts.msg_key)
            rows["recipient"].append(v.recipient)
            rows["action"].append(str(v.action))
            rows["category"].append(v.category)
            rows["reason"].append(v.reason)
            rows["rule_id"].append(v.rule_id)
    return pa.table(rows, schema=VERDICT_SCHEMA)
