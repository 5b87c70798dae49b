"""The Workbench: one DuckDB dataset, rule packs, and the analyses notebooks and dashboards call."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable

import duckdb
import pandas as pd

from edrules.backends.evalscope import (
    EvalDate,
    connect,
    default_now,
    lock_error,
    no_envelope_note,
    require_known_dataset,
    rows_without_envelope,
)
from edrules.errors import EdrulesError, Location
from edrules.pack import LoadedPack
from edrules.rules.model import Policy
from edrules.schema import open_error_text, require_dataset
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
    entry expiry is judged against) defaults to a day after the newest plausible message
    (backends.evalscope.default_now: one forged future Date: does not move it), so the same
    data and rules always give the same numbers; `now_used` says which date and why.

    Read-only (the default) works on an in-memory snapshot of the file taken on first use:
    a notebook kernel or dashboard left open never holds the file's lock, so `edrules ingest`
    is never blocked by it. `reload()` takes a fresh snapshot. `snapshot=False` reads the file
    in place instead (no copy, but the open connection blocks writers).
    """

    # Tables copied into a read-only snapshot whatever their size; the others (headers,
    # received_hops) only while small, as they run to tens of rows per message.
    _SNAPSHOT_ALWAYS = ("messages", "recipients", "ingest_errors")
    _SNAPSHOT_MAX_ROWS = 2_000_000

    def __init__(self, db: str | Path | None = None, *, dataset: str | None = None,
                 now: datetime | None = None, backend: Backend | str = Backend.SQL,
                 read_only: bool = True, snapshot: bool = True):
        self.db = Path(db) if db is not None else default_db()
        self.snapshot = snapshot
        self.dataset = dataset
        self.backend = Backend(backend)
        self.read_only = read_only
        self._given_now = now
        self._now: EvalDate | None = EvalDate(now, "given") if now is not None else None
        self._con: duckdb.DuckDBPyConnection | None = None
        self._cache: dict[str, str] = {}

    # -- connection -------------------------------------------------------------------------

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            if self.read_only and not self.db.is_file():
                raise EdrulesError("no dataset here: run `edrules demo` or Workbench.load(paths)",
                                   Location(str(self.db)))
            if self.read_only and self.snapshot:
                con = self._snapshot()
            else:  # a writer, or a read-only connection that holds the file's shared lock
                con = connect(self.db, read_only=self.read_only)
            try:
                require_dataset(con, str(self.db))
                require_known_dataset(con, self.dataset, str(self.db))
            except EdrulesError:
                con.close()
                raise
            install_facts_view(con)
            self._con = con
        return self._con

    def _snapshot(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(":memory:")
        try:
            try:
                path = str(self.db).replace("'", "''")
                con.execute(f"ATTACH '{path}' AS wb_file (READ_ONLY)")
            except duckdb.IOException as exc:
                err = lock_error(exc, self.db)
                if err is not None:
                    raise err from None
                raise EdrulesError(f"cannot open database: {open_error_text(exc)}",
                                   Location(str(self.db))) from None
            except duckdb.Error as exc:
                raise EdrulesError(f"cannot open database: {open_error_text(exc)}",
                                   Location(str(self.db))) from None
            tables = [t for (t,) in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = 'wb_file' "
                "AND schema_name = 'main' ORDER BY 1").fetchall()]
            for t in tables:
                if t not in self._SNAPSHOT_ALWAYS:
                    n = con.execute(f'SELECT count(*) FROM wb_file.main."{t}"').fetchall()[0][0]
                    if n > self._SNAPSHOT_MAX_ROWS:
                        continue
                con.execute(f'CREATE TABLE main."{t}" AS SELECT * FROM wb_file.main."{t}"')
            con.execute("DETACH wb_file")
        except BaseException:
            con.close()
            raise
        return con

    def reload(self) -> None:
        """Drop cached verdicts and the snapshot: the next call sees what ingest added since."""
        self.close()
        self._now = EvalDate(self._given_now, "given") if self._given_now is not None else None

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
        from edrules.ingest.demo import demo_parts, ingest_part

        data = Path(data) if data is not None else repo_data_dir()
        self.close()
        self.db.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        for part in demo_parts(data / "sample", data / "demo-tenant"):
            s = ingest_part(self.db, part, jobs=jobs)
            rows.append({"step": part.name, "messages": s.messages, "new": s.messages - s.duplicates,
                         "duplicates": s.duplicates, "recipients": s.recipients, "errors": s.errors})
        return pd.DataFrame(rows)

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
        """The date entry expiry is judged against (see now_used for why this one)."""
        return self.now_used.now

    @property
    def now_used(self) -> EvalDate:
        if self._now is None:
            self._now = default_now(self.con, self.dataset)
        return self._now

    def datasets(self) -> dict[str, int]:
        """Dataset name -> messages, of every dataset in the file."""
        from edrules.backends.evalscope import datasets

        return datasets(self.con)

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

    @property
    def rows_without_envelope(self) -> int:
        """Recipient rows of the dataset whose envelope sender is unknown (no MAIL FROM,
        Return-Path or From_ line): entries on the envelope never match them, and `strict`
        cannot call them forgeries."""
        return rows_without_envelope(self.con, self.dataset)

    def envelope_note(self, pack: PackSource) -> str:
        """The report line on those rows for this pack's From-policy ('' when there are none)."""
        total = self.action_counts(pack)["recipients"]
        return no_envelope_note(self.rows_without_envelope, total, [self.pack(pack).from_policy])

    def counts(self, pack: PackSource) -> pd.DataFrame:
        """Recipient rows by action and decision category."""
        table = self.verdict_table(pack)
        return self.con.sql(f"""
            SELECT action, category, count(*) AS recipients, count(DISTINCT msg_key) AS messages
            FROM {table} GROUP BY ALL ORDER BY recipients DESC, action, category""").df()

    # -- analyses ---------------------------------------------------------------------------

    def whatif(self, before: PackSource, after: PackSource, *, include_rule_changes: bool = False,
               recipient: str | None = None, recipient_domain: str | None = None) -> WhatIf:
        """Per-recipient diff of replaying `after` instead of `before` over the dataset
        (optionally only one recipient's or one recipient domain's rows)."""
        b, a = self.pack(before), self.pack(after)
        diff = compute_whatif(self.con, self.verdict_table(b), self.verdict_table(a),
                              before_name=b.name, after_name=a.name,
                              include_rule_changes=include_rule_changes,
                              now=self.now.isoformat(sep=" "), recipient=recipient,
                              recipient_domain=recipient_domain)
        blind = rows_without_envelope(self.con, self.dataset, recipient=recipient,
                                      recipient_domain=recipient_domain)
        return replace(diff, rows_without_envelope=blind,
                       from_policies=(str(b.from_policy), str(a.from_policy)))

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

    def diff(self, before: PackSource, after: PackSource) -> pd.DataFrame:
        """Two rules files change by change (entries added, removed, changed; settings), each
        with the what-if of that change alone against `before` (rulesdiff.py)."""
        from edrules.workbench.rulesdiff import diff_table

        return diff_table(self.pack(before), self.pack(after), self.whatif)

    def hits(self, pack: PackSource) -> pd.DataFrame:
        """Per allow/block entry: hits, messages, first and last hit, forged/phishing/spam among
        them: the "last used" date that tells which entries to prune."""
        from edrules.workbench.rulesdiff import entry_hits

        policy = self.pack(pack)
        return entry_hits(self.con, policy, self.verdict_table(policy))

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
        meta["evaluated_at"] = self.now.isoformat()
        return compile_pack(policy, out, key_dir=Path(key_dir) if key_dir else self.key_dir(), metadata=meta)

    def key_dir(self) -> Path:
        """Where the signing key pair lives: packs/keys next to the dataset, the folder
        `edrules demo` signs its packs with, so the demo and the editor share one key."""
        return self.db.parent / "packs" / "keys"

    def verify(self, compiled: CompiledPack) -> LoadedPack:
        """Load a compiled pack as the gateway would: the signature must verify with its key."""
        return verify_pack(compiled)

    def messages(self, *, header_from: str | None = None, header_from_domain: str | None = None,
                 envelope_domain: str | None = None, label: str | None = None,
                 provider: str | None = None, message_id: str | None = None,
                 recipient: str | None = None, recipient_domain: str | None = None,
                 pack: PackSource | None = None, action: str | None = None,
                 dataset: str | None = None, limit: int | None = None) -> pd.DataFrame:
        """Find messages by identity, label, provider, Message-ID, recipient or recipient
        domain; with `pack` (and optionally `action`), only those whose verdict for some
        recipient is that action. `dataset` overrides the workbench's (e.g. to search the
        quarantine export)."""
        if dataset is not None:
            require_known_dataset(self.con, dataset, str(self.db))
        conds, params = [], {}
        for col, val in (("recipient", recipient), ("recipient_domain", recipient_domain)):
            if val is not None:
                conds.append(f"EXISTS (SELECT 1 FROM recipients rr WHERE rr.dataset = f.dataset "
                             f"AND rr.msg_key = f.msg_key AND rr.{col} = ${col})")
                params[col] = val.strip().lower()
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

    def resolve_key(self, key: str) -> str:
        """The full msg_key of a key or of a unique prefix of one (reports print 12 characters)."""
        key = key.strip().lower()
        exact = "msg_key = $k" + (" AND dataset = $ds" if self.dataset is not None else "")
        if self.con.execute(f"SELECT 1 FROM messages WHERE {exact} LIMIT 1",
                            {"k": key, **({"ds": self.dataset} if self.dataset is not None else {})}).fetchall():
            return key
        if len(key) < 6:
            raise EdrulesError(f"no message with key {key!r} (a prefix needs at least 6 characters)",
                               Location(str(self.db)))
        where, params = "msg_key LIKE $p", {"p": key.replace("%", "").replace("_", r"\_") + "%"}
        if self.dataset is not None:
            where += " AND dataset = $ds"
            params["ds"] = self.dataset
        found = [k for (k,) in self.con.execute(
            f"SELECT DISTINCT msg_key FROM messages WHERE {where} ORDER BY 1 LIMIT 3", params).fetchall()]
        if not found:
            scope = f"dataset {self.dataset!r}" if self.dataset is not None else "any dataset"
            raise EdrulesError(f"no message with key {key!r} in {scope}", Location(str(self.db)))
        if len(found) > 1:
            raise EdrulesError(f"message key prefix {key!r} is ambiguous ({', '.join(k[:16] for k in found)}, ...): "
                               "give more characters", Location(str(self.db)))
        return found[0]

    def explain(self, msg_key: str, pack: PackSource) -> pd.DataFrame:
        """Why each recipient of one message got its verdict under a pack. `msg_key` may be
        the 12-character prefix the what-if prints; an unknown key is an error, not an empty table."""
        key = self.resolve_key(msg_key)
        table = self.verdict_table(pack)
        return self.con.execute(f"""
            SELECT recipient, action, category, rule_id, reason FROM {table}
            WHERE msg_key = $k ORDER BY recipient""", {"k": key}).df()

    def facts_of(self, msg_key: str):
        """The MessageFacts of one stored message (key or unique prefix), as the runtime sees it."""
        from edrules.facts import MessageFacts

        key = self.resolve_key(msg_key)
        where, params = "m.msg_key = $k", {"k": key}
        if self.dataset is not None:
            where += " AND m.dataset = $ds"
            params["ds"] = self.dataset
        cur = self.con.execute(f"""
            SELECT m.*, (SELECT list(r.recipient ORDER BY r.recipient) FROM recipients r
                         WHERE r.dataset = m.dataset AND r.msg_key = m.msg_key) AS _rcpts
            FROM messages m WHERE {where} ORDER BY m.dataset LIMIT 1""", params)
        names = [d[0] for d in cur.description]
        rec = dict(zip(names, cur.fetchall()[0]))
        return MessageFacts.from_row(rec, tuple(rec.pop("_rcpts") or ()))

    def export_match(self, pack: PackSource, export_dataset: str) -> dict[str, int]:
        """Does the pack quarantine exactly what the gateway's quarantine export holds? Rows
        are matched on (Message-ID, recipient) between this dataset and the export."""
        require_known_dataset(self.con, export_dataset, str(self.db))
        table = self.verdict_table(pack)
        where = "AND v.dataset = $ds" if self.dataset is not None else ""
        got = self.con.execute(f"""
            WITH q AS (SELECT DISTINCT m.message_id, v.recipient FROM {table} v
                       JOIN messages m ON m.dataset = v.dataset AND m.msg_key = v.msg_key
                       WHERE v.action = 'quarantine' {where}),
                 x AS (SELECT DISTINCT m.message_id, r.recipient FROM recipients r
                       JOIN messages m ON m.dataset = r.dataset AND m.msg_key = r.msg_key
                       WHERE r.dataset = $export)
            SELECT (SELECT count(*) FROM x), (SELECT count(*) FROM q),
                   (SELECT count(*) FROM q JOIN x USING (message_id, recipient)),
                   (SELECT count(*) FROM x ANTI JOIN q USING (message_id, recipient)),
                   (SELECT count(*) FROM q ANTI JOIN x USING (message_id, recipient))""",
            {"export": export_dataset, **({"ds": self.dataset} if self.dataset is not None else {})}).fetchall()[0]
        keys = ("export_rows", "quarantined_rows", "in_both", "only_in_export", "only_quarantined")
        return {k: int(v) for k, v in zip(keys, got)}

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
