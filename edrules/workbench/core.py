"""The Workbench: one DuckDB dataset, rule packs, and the analyses notebooks and dashboards call."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable

import duckdb
import pandas as pd

from edrules.errors import EdrulesError, Location
from edrules.pack import LoadedPack
from edrules.rules.model import Policy
from edrules.schema import connect_dataset, require_dataset
from edrules.workbench import traffic
from edrules.workbench.deploy import CompiledPack, compile_pack, verify_pack, whatif_metadata
from edrules.workbench.evaluate import Backend, materialize
from edrules.workbench.exposure import compute_exposure
from edrules.workbench.packs import PackSource, policy_digest, to_policy
from edrules.workbench.sqlfacts import install_facts_view
from edrules.workbench.suggest import Suggestions, resolve_targets, suggest
from edrules.workbench.whatif import WhatIf, compute_whatif

ENV_DB = "EDRULES_DB"
ENV_DATA = "EDRULES_DATA"
ENV_OUT = "EDRULES_OUT"


def repo_data_dir() -> Path:
    """The project's data/ folder: $EDRULES_DATA, else the nearest data/ with rules/ above cwd."""
    if os.environ.get(ENV_DATA):
        return Path(os.environ[ENV_DATA])
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "data" / "rules").is_dir():
            return d / "data"
    return here / "data"


def default_db() -> Path:
    """$EDRULES_DB, else data/edrules.duckdb of the project (notebooks run from notebooks/)."""
    if os.environ.get(ENV_DB):
        return Path(os.environ[ENV_DB])
    return repo_data_dir() / "edrules.duckdb"


def output_dir() -> Path:
    """Where compiled packs go: $EDRULES_OUT, else build/workbench next to data/."""
    if os.environ.get(ENV_OUT):
        return Path(os.environ[ENV_OUT])
    return repo_data_dir().parent / "build" / "workbench"


class Workbench:
    """An analyst's session over one DuckDB dataset.

    Evaluations are cached per policy content as DuckDB temp tables, so comparing ten
    candidates against the deployed pack evaluates the deployed pack once. `now` (the date
    entry expiry is judged against) defaults to a day after the newest message in the data,
    so the same data and rules always give the same numbers.
    """

    def __init__(self, db: str | Path | None = None, *, dataset: str | None = None,
                 now: datetime | None = None, backend: Backend | str = Backend.SQL,
                 read_only: bool = True):
        self.db = Path(db) if db is not None else default_db()
        self.dataset = dataset
        self.backend = Backend(backend)
        self.read_only = read_only
        self._now = now
        self._con: duckdb.DuckDBPyConnection | None = None
        self._cache: dict[str, str] = {}

    # -- connection -------------------------------------------------------------------------

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            if self.read_only and not self.db.is_file():
                raise EdrulesError("no dataset here: run `edrules demo` or Workbench.load(paths)",
                                   Location(str(self.db)))
            self._con = connect_dataset(str(self.db), read_only=self.read_only)
            if self.read_only:
                try:
                    require_dataset(self._con, str(self.db))
                except EdrulesError:
                    self._con.close()
                    self._con = None
                    raise
            install_facts_view(self._con)
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
        self._con = None
        self._cache.clear()

    def __enter__(self) -> "Workbench":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Workbench(db={str(self.db)!r}, dataset={self.dataset!r}, backend={self.backend.value!r})"

    def load(self, paths: Iterable[str | Path], *, dataset: str = "default", label: str | None = None,
             **ingest_options: Any):
        """Ingest mail into this dataset (edrules.ingest.ingest_paths); returns its summary."""
        from edrules.ingest import ingest_paths

        self.close()  # ingest needs the write lock
        self.db.parent.mkdir(parents=True, exist_ok=True)
        return ingest_paths(self.db, [Path(p) for p in paths], dataset=dataset, label=label,
                            **ingest_options)

    def load_demo(self, data: str | Path | None = None, *, jobs: int | None = None) -> pd.DataFrame:
        """Ingest data/ exactly as `edrules demo` does (sample, demo tenant, quarantine export);
        idempotent: a second run finds only duplicates. One row per ingest step."""
        from edrules.demo import STEPS, run_demo

        data = Path(data) if data is not None else repo_data_dir()
        self.close()
        steps = tuple(s for s in STEPS if s.name in ("sample", "tenant-ingest", "quarantine"))
        run = run_demo(self.db, sample=data / "sample", tenant=data / "demo-tenant", rules=data / "rules",
                       echo=lambda _line: None, jobs=jobs, steps=steps)
        return pd.DataFrame(
            [{"step": name, "messages": s.messages, "new": s.messages - s.duplicates,
              "duplicates": s.duplicates, "recipients": s.recipients, "errors": s.errors}
             for name, s in run.summaries])

    def rules(self, name: str) -> Path:
        """A rules file of the project's data/rules/ folder (the deployed one and candidates)."""
        path = repo_data_dir() / "rules" / name
        if not path.is_file():
            raise EdrulesError("no such rules file", Location(str(path)))
        return path

    def sql(self, query: str, params: dict[str, Any] | list | None = None) -> pd.DataFrame:
        """Run read-only SQL against the dataset (tables: messages, recipients, headers, ...;
        view wb_facts adds aligned_auth, forged and network)."""
        return self.con.execute(query, params or {}).df()

    @property
    def now(self) -> datetime:
        if self._now is None:
            where = "WHERE dataset = $ds" if self.dataset is not None else ""
            params = {"ds": self.dataset} if self.dataset is not None else {}
            latest = self.con.execute(f"SELECT max(received_at) FROM messages {where}", params).fetchall()[0][0]
            # A day after the newest message: entries expiring that day still count.
            self._now = (latest or datetime(2000, 1, 1)).replace(microsecond=0) + timedelta(days=1)
        return self._now

    # -- packs and verdicts -----------------------------------------------------------------

    def pack(self, source: PackSource, *, name: str | None = None, **load_options: Any) -> Policy:
        """A Policy from YAML text, a rules file, a pack file, a dict, a LoadedPack or a Policy."""
        policy = to_policy(source, **load_options)
        return replace(policy, name=name) if name else policy

    def verdict_table(self, pack: PackSource) -> str:
        """Name of the temp table holding the pack's verdicts (evaluated once per content)."""
        policy = self.pack(pack)
        key = policy_digest(policy)
        table = self._cache.get(key)
        if table is None:
            table = f"wb_v_{key[:16]}"
            materialize(self.con, policy, table, now=self.now, dataset=self.dataset, backend=self.backend)
            self._cache[key] = table
        return table

    def forget(self, pack: PackSource) -> None:
        """Drop a pack's cached verdicts (memory, or to time a fresh evaluation)."""
        table = self._cache.pop(policy_digest(self.pack(pack)), None)
        if table is not None:
            self.con.execute(f"DROP TABLE IF EXISTS {table}")

    def evaluate(self, pack: PackSource) -> pd.DataFrame:
        """Per-recipient verdicts with the facts a reader needs next to them."""
        table = self.verdict_table(pack)
        return self.con.sql(f"""
            SELECT v.dataset, v.msg_key, v.recipient, v.action, v.category, v.reason, v.rule_id,
                   f.received_at, f.label, f.forged, f.aligned_auth, f.header_from,
                   f.envelope_from, f.bulk_provider, f.network, f.subject
            FROM {table} v LEFT JOIN wb_facts f ON f.dataset = v.dataset AND f.msg_key = v.msg_key
            ORDER BY f.received_at NULLS LAST, v.msg_key, v.recipient""").df()

    def action_counts(self, pack: PackSource) -> dict[str, int]:
        """Recipient rows per action, plus the total: the deployed policy at a glance."""
        table = self.verdict_table(pack)
        rows = self.con.sql(f"SELECT action, count(*) FROM {table} GROUP BY 1 ORDER BY 1").fetchall()
        return {"recipients": sum(n for _, n in rows), **{a: int(n) for a, n in rows}}

    def counts(self, pack: PackSource) -> pd.DataFrame:
        """Recipient rows by action and decision category."""
        table = self.verdict_table(pack)
        return self.con.sql(f"""
            SELECT action, category, count(*) AS recipients, count(DISTINCT msg_key) AS messages
            FROM {table} GROUP BY ALL ORDER BY recipients DESC, action, category""").df()

    # -- analyses ---------------------------------------------------------------------------

    def whatif(self, before: PackSource, after: PackSource, *, include_rule_changes: bool = False) -> WhatIf:
        """Per-recipient diff of replaying `after` instead of `before` over the dataset."""
        b, a = self.pack(before), self.pack(after)
        return compute_whatif(self.con, self.verdict_table(b), self.verdict_table(a),
                              before_name=b.name, after_name=a.name,
                              include_rule_changes=include_rule_changes)

    def compare(self, before: PackSource, afters: Iterable[PackSource]) -> pd.DataFrame:
        """One row per candidate pack: what it newly delivers (by label, forged or not) and
        newly stops, relative to `before`."""
        rows = []
        for after in afters:
            diff = self.whatif(before, after)
            nd = diff.newly_delivered
            label = nd["label"].fillna("(none)")
            rows.append({
                "pack": diff.after, "changed": diff.changed, "newly_delivered": len(nd),
                "ham_authenticated": int(((label == "ham") & ~nd["forged"]).sum()),
                "ham_forged": int(((label == "ham") & nd["forged"]).sum()),
                "spam": int((label == "spam").sum()), "phishing": int((label == "phishing").sum()),
                "malware": int((label == "malware").sum()), "unlabelled": int((label == "(none)").sum()),
                "forged": int(nd["forged"].sum()), "stopped": len(diff.newly_stopped),
            })
        return pd.DataFrame(rows)

    def exposure(self, pack: PackSource) -> pd.DataFrame:
        """Per allow entry: what it delivered and how much of it was suspect (exposure.py)."""
        policy = self.pack(pack)
        return compute_exposure(self.con, policy, self.verdict_table(policy))

    def suggest(self, messages: Any, pack: PackSource) -> Suggestions:
        """Ranked candidate changes that would deliver `messages` (msg_keys or a DataFrame)."""
        policy = self.pack(pack)
        targets = resolve_targets(self.con, messages, self.dataset)
        return suggest(self.con, policy, targets, verdicts=self.verdict_table,
                       whatif=lambda b, a: self.whatif(b, a))

    def compile(self, pack: PackSource, *, deployed: PackSource, name: str | None = None,
                out_dir: str | Path | None = None, key_dir: str | Path | None = None) -> CompiledPack:
        """Rules YAML + signed pack of `pack`, its metadata carrying the what-if against
        `deployed` over this dataset. Keys live in key_dir (default OUT/keys), made on first use."""
        policy, base = self.pack(pack, name=name), self.pack(deployed)
        out = Path(out_dir) if out_dir is not None else output_dir()
        meta = whatif_metadata(self.whatif(base, policy), base)
        return compile_pack(policy, out, key_dir=Path(key_dir) if key_dir else out / "keys", metadata=meta)

    def verify(self, compiled: CompiledPack) -> LoadedPack:
        """Load a compiled pack as the gateway would: the signature must verify with its key."""
        return verify_pack(compiled)

    def messages(self, *, header_from: str | None = None, header_from_domain: str | None = None,
                 envelope_domain: str | None = None, label: str | None = None,
                 provider: str | None = None, message_id: str | None = None,
                 pack: PackSource | None = None, action: str | None = None,
                 dataset: str | None = None, limit: int | None = None) -> pd.DataFrame:
        """Find messages by identity, label, provider or Message-ID; with `pack` (and optionally
        `action`), only those whose verdict for some recipient is that action. `dataset`
        overrides the workbench's (e.g. to search the quarantine export)."""
        conds, params = [], {}
        for col, val in (("header_from", header_from), ("header_from_domain", header_from_domain),
                         ("envelope_from_domain", envelope_domain), ("label", label),
                         ("bulk_provider", provider), ("message_id", message_id),
                         ("dataset", dataset or self.dataset)):
            if val is not None:
                conds.append(f"f.{col} = ${col}")
                params[col] = val.lower() if col in ("header_from", "header_from_domain", "envelope_from_domain") else val
        join = ""
        if pack is not None:
            table = self.verdict_table(pack)
            join = f"JOIN (SELECT DISTINCT dataset, msg_key FROM {table}"
            if action is not None:
                join += " WHERE action = $action"
                params["action"] = action
            join += ") v ON v.dataset = f.dataset AND v.msg_key = f.msg_key"
        where = ("WHERE " + " AND ".join(conds)) if conds else ""
        lim = f"LIMIT {int(limit)}" if limit is not None else ""
        return self.con.execute(f"""
            SELECT f.dataset, f.msg_key, f.received_at, f.header_from, f.envelope_from, f.client_ip,
                   f.spf, f.dmarc, f.bulk_provider, f.label, f.aligned_auth, f.forged, f.subject,
                   f.message_id, f.quarantine_state
            FROM wb_facts f {join} {where}
            ORDER BY f.received_at NULLS LAST, f.msg_key {lim}""", params).df()

    def explain(self, msg_key: str, pack: PackSource) -> pd.DataFrame:
        """Why each recipient of one message got its verdict under a pack."""
        table = self.verdict_table(pack)
        return self.con.execute(f"""
            SELECT recipient, action, category, rule_id, reason FROM {table}
            WHERE msg_key = $k ORDER BY recipient""", {"k": msg_key}).df()

    # -- traffic ----------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        """Messages, recipient rows, labels, date span and ingest errors of the dataset."""
        return traffic.overview(self.con, self.dataset)

    def volume(self, pack: PackSource | None = None, *, unit: str = "day") -> pd.DataFrame:
        """Recipient rows per day (or week, month) by verdict action, or by label without a pack."""
        table = self.verdict_table(pack) if pack is not None else None
        return traffic.volume(self.con, table, dataset=self.dataset, unit=unit)

    def top_senders(self, *, by: str = "header_from_domain", n: int = 10,
                    provider: str | None = None) -> pd.DataFrame:
        """Most frequent senders, optionally only mail through one bulk provider."""
        return traffic.top_senders(self.con, by=by, n=n, dataset=self.dataset, provider=provider)

    def auth_by_provider(self) -> pd.DataFrame:
        return traffic.auth_by_provider(self.con, self.dataset)

    def provider_numbers(self, provider: str) -> dict[str, int]:
        """One provider's row of auth_by_provider() plus its labels, as plain numbers."""
        return traffic.provider_numbers(self.con, provider, self.dataset)
