"""Safe-rule suggestions: candidate policy changes that deliver chosen messages, ranked by blast radius."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from typing import Callable

import duckdb
import pandas as pd
import pyarrow as pa

from edrules.catalog import load_catalog
from edrules.errors import EdrulesError
from edrules.rules.model import (
    BulkPolicy, Entry, EntryKind, FromPolicy, ListKind, Policy, ProviderDef, Scope, ScopeKind, Via,
    ViaKind,
)
from edrules.workbench.packs import describe_entry
from edrules.workbench.sqlfacts import install_facts_view
from edrules.workbench.whatif import DELIVERED_ACTIONS, WhatIf

# More distinct identities than this among the chosen messages is not "a fix", it is a
# new policy; the candidate kind is skipped rather than emitting a hundred entries.
MAX_ENTRIES = 20


class CandidateKind(StrEnum):
    """What a candidate changes. Order of declaration = preference on a tie."""

    PAIR_PROVIDER = "pair: header From via provider"
    PAIR_ALIGNED = "pair: header From via its own domain (aligned)"
    PAIR_DOMAIN_PROVIDER = "pair: From domain via provider"
    ENVELOPE_SENDER = "allow envelope sender"
    ENVELOPE_DOMAIN = "allow envelope domain"
    BULK_ALLOW = "bulk-mailer allow"
    FROM_ALIGNED = "From-policy aligned"
    FROM_RELAXED = "From-policy relaxed"


class Tier(IntEnum):
    """Coarse rank: a safe complete fix beats everything, a fix that lets suspect mail in
    comes after any safe one, and a change that delivers none of the chosen mail is last."""

    SAFE_FIX = 0
    SAFE_PARTIAL = 1
    RISKY = 2
    NO_EFFECT = 3


_SCOPE_RANK = {ScopeKind.USER: 0, ScopeKind.DOMAIN: 1, ScopeKind.GLOBAL: 2}
_KIND_RANK = {k: i for i, k in enumerate(CandidateKind)}

TABLE_COLUMNS = (
    "rank", "kind", "scope", "change", "delivers", "targets", "new_other", "new_forged",
    "new_phishing", "new_malware", "new_spam", "new_ham", "stopped", "safe", "durable", "tier", "note",
)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One proposed change and its blast radius over history (versus the current pack)."""

    kind: CandidateKind
    scope: Scope
    change: str  # what an analyst would write in rules.yaml
    policy: Policy = field(repr=False)
    whatif: WhatIf = field(repr=False)
    targets: int  # chosen (message, recipient) rows
    delivers: int  # of those, delivered under the candidate
    new_other: int  # other recipient rows newly delivered
    new_forged: int
    new_by_label: dict[str, int]
    stopped: int  # recipient rows delivered before and not after
    durable: bool  # will it still match the next such message?
    note: str = ""

    @property
    def safe(self) -> bool:
        """Lets no forged, phishing- or malware-labelled message in (besides the chosen ones)."""
        return (self.new_forged == 0 and self.new_by_label.get("phishing", 0) == 0
                and self.new_by_label.get("malware", 0) == 0)

    @property
    def tier(self) -> Tier:
        if self.delivers == 0:
            return Tier.NO_EFFECT
        if not self.safe:
            return Tier.RISKY
        return Tier.SAFE_FIX if self.delivers == self.targets else Tier.SAFE_PARTIAL

    def sort_key(self) -> tuple:
        # Narrowest first: fewest other deliveries, then fewest stopped, then narrower scope.
        return (int(self.tier), not self.durable, self.new_by_label.get("spam", 0), self.new_other,
                self.stopped, _SCOPE_RANK[self.scope.kind], _KIND_RANK[self.kind], self.change)


@dataclass(frozen=True, slots=True)
class Suggestions:
    """Ranked candidates for delivering `targets`; `table` is the reader's view."""

    base: str
    targets: pd.DataFrame = field(repr=False)
    candidates: tuple[Candidate, ...] = ()
    # Why a candidate kind was not drafted (too many distinct identities, a missing fact, the
    # policy already has that mode): an empty result must say why, never read as "no fix".
    skipped: tuple[str, ...] = ()

    @property
    def why_none(self) -> str:
        """Why there is no (delivering) candidate, in one line; '' when there is one."""
        if any(c.delivers for c in self.candidates):
            return ""
        reasons = list(self.skipped)
        if self.candidates:
            reasons.insert(0, f"{len(self.candidates)} candidate(s) drafted, none delivers the chosen mail")
        return "; ".join(reasons) or "no candidate kind applies to these messages"

    @property
    def best(self) -> Candidate:
        if not self.candidates:
            raise EdrulesError(f"no candidate change for these messages: {self.why_none}")
        return self.candidates[0]

    def find(self, kind: CandidateKind, scope: str = "global") -> Candidate:
        for c in self.candidates:
            if c.kind is kind and str(c.scope) == scope:
                return c
        raise KeyError(f"{kind.value} [{scope}]")

    def rank_of(self, kind: CandidateKind, scope: str = "global") -> int:
        """1-based rank of a candidate kind/scope."""
        return self.candidates.index(self.find(kind, scope)) + 1

    def key_numbers(self) -> dict[str, object]:
        """The headline of a suggestion run: the winner, and where `relaxed` landed and why."""
        best = self.best
        out: dict[str, object] = {
            "targets": best.targets, "candidates": len(self.candidates),
            "best": best.change,
            "best_kind": best.kind.value, "best_delivers": best.delivers, "best_new_other": best.new_other,
            "best_safe": best.safe,
        }
        try:
            relaxed = self.find(CandidateKind.FROM_RELAXED)
        except KeyError:
            return out
        out.update(relaxed_rank=self.candidates.index(relaxed) + 1, relaxed_delivers=relaxed.delivers,
                   relaxed_new_other=relaxed.new_other, relaxed_new_forged=relaxed.new_forged,
                   relaxed_new_phishing=relaxed.new_by_label.get("phishing", 0))
        return out

    def per_kind(self) -> pd.DataFrame:
        """The best-ranked candidate of each kind: the overview a reader compares."""
        return self.table.drop_duplicates("kind").reset_index(drop=True)

    @property
    def table(self) -> pd.DataFrame:
        rows = []
        for i, c in enumerate(self.candidates, start=1):
            rows.append({
                "rank": i, "kind": c.kind.value, "scope": str(c.scope), "change": c.change,
                "delivers": c.delivers, "targets": c.targets, "new_other": c.new_other,
                "new_forged": c.new_forged, "new_phishing": c.new_by_label.get("phishing", 0),
                "new_malware": c.new_by_label.get("malware", 0), "new_spam": c.new_by_label.get("spam", 0),
                "new_ham": c.new_by_label.get("ham", 0), "stopped": c.stopped, "safe": c.safe,
                "durable": c.durable, "tier": c.tier.name.lower(), "note": c.note,
            })
        return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


# A picked row from another dataset (a quarantine-export row) stands for the full message
# with the same Message-ID in the analysed dataset, for the recipients both list.
_TARGETS_SQL = """
WITH picked AS (
    SELECT r.dataset, r.msg_key, r.recipient, f.message_id
    FROM recipients r JOIN {facts} f ON f.dataset = r.dataset AND f.msg_key = r.msg_key
    WHERE r.msg_key IN (SELECT msg_key FROM wb_targets)
), resolved AS (
    SELECT p.msg_key AS picked, coalesce(m.dataset, p.dataset) AS dataset,
           coalesce(m.msg_key, p.msg_key) AS msg_key, p.recipient
    FROM picked p
    LEFT JOIN {facts} m ON $ds IS NOT NULL AND p.dataset <> $ds AND m.dataset = $ds
                       AND m.message_id = p.message_id
)
SELECT DISTINCT x.picked, r.dataset, r.msg_key, r.recipient, r.recipient_domain,
       f.header_from, f.header_from_domain, f.header_from_org, f.envelope_from,
       f.envelope_from_domain, f.env_org, f.bulk_provider, f.aligned_auth, f.label
FROM resolved x
JOIN recipients r ON r.dataset = x.dataset AND r.msg_key = x.msg_key AND r.recipient = x.recipient
JOIN {facts} f ON f.dataset = r.dataset AND f.msg_key = r.msg_key
ORDER BY r.dataset, r.msg_key, r.recipient
"""

# How many distinct envelope senders a From address used, and how often each target's
# envelope sender occurs at all: VERP / per-message bounce addresses (SES, Mailchimp)
# are used once, so an allow entry on one never matches the next message.
_ENVELOPE_REUSE_SQL = """
SELECT max(n) AS max_uses,
       (SELECT count(DISTINCT envelope_from) FROM {facts}
        WHERE header_from IN (SELECT header_from FROM wb_t)
          AND dataset IN (SELECT dataset FROM wb_t)) AS envelopes_of_from
FROM (SELECT envelope_from, count(DISTINCT msg_key) AS n FROM {facts}
      WHERE envelope_from IN (SELECT envelope_from FROM wb_t)
        AND dataset IN (SELECT dataset FROM wb_t)  -- an export row is not a second use
      GROUP BY envelope_from)
"""


def resolve_targets(con: duckdb.DuckDBPyConnection, messages, dataset: str | None) -> pd.DataFrame:
    """(message, recipient) rows the analyst wants delivered, with the facts candidates use.

    messages: a msg_key, a list of them, or a DataFrame with msg_key (and optionally
    recipient, to choose only some recipients of a message). Keys of another dataset, such as
    rows of the quarantine export, resolve by Message-ID to the analysed dataset's message.
    """
    if isinstance(messages, str):
        keys, rcpts = [messages], None
    elif isinstance(messages, pd.DataFrame):
        keys = list(dict.fromkeys(messages["msg_key"]))
        rcpts = set(zip(messages["msg_key"], messages["recipient"])) if "recipient" in messages else None
    else:
        keys, rcpts = list(dict.fromkeys(messages)), None
    if not keys:
        raise EdrulesError("suggest() needs at least one message")
    facts = install_facts_view(con)
    con.register("wb_targets", pa.table({"msg_key": pa.array(keys, pa.string())}))
    try:
        df = con.execute(_TARGETS_SQL.format(facts=facts), {"ds": dataset}).df()
    finally:
        con.unregister("wb_targets")
    if dataset is not None:
        df = df[df["dataset"] == dataset]
    if rcpts is not None:
        df = df[[(k, r) in rcpts for k, r in zip(df["picked"], df["recipient"])]]
    if df.empty:
        raise EdrulesError("none of the chosen messages is in the dataset")
    return df.drop(columns="picked").drop_duplicates().reset_index(drop=True)


def _scopes(targets: pd.DataFrame) -> list[Scope]:
    scopes = []
    if targets["recipient"].nunique() == 1:
        scopes.append(Scope(ScopeKind.USER, targets["recipient"].iloc[0]))
    domains = targets["recipient_domain"].dropna().unique()
    if len(domains) == 1 and targets["recipient_domain"].notna().all():
        scopes.append(Scope(ScopeKind.DOMAIN, domains[0]))
    scopes.append(Scope())
    return scopes


def _provider_defs(policy: Policy, names) -> dict[str, ProviderDef]:
    catalog = load_catalog()
    out = dict(policy.providers)
    for name in names:
        if name not in out:
            p = catalog.providers[name]
            out[name] = ProviderDef(p.name, p.envelope_suffixes, p.dkim_domains)
    return out


def _distinct(values) -> list | None:
    vals = set(values)
    if not vals or any(v is None or v == "" or v != v for v in vals) or len(vals) > MAX_ENTRIES:
        return None  # v != v: pandas gives NaN for a missing value
    return sorted(vals)


def _summarise(entries: tuple[Entry, ...], shown: int = 2) -> str:
    """The change in a line: the first entries spelled out, the rest counted."""
    text = "; ".join(describe_entry(e) for e in entries[:shown])
    if len(entries) > shown:
        text += f"; ... (+{len(entries) - shown} more)"
    return text


@dataclass(frozen=True, slots=True)
class _Draft:
    kind: CandidateKind
    scope: Scope
    change: str
    policy: Policy


def draft_candidates(policy: Policy, targets: pd.DataFrame,
                     skipped: list[str] | None = None) -> list[_Draft]:
    """Every applicable candidate change, before measuring any of them. Why a kind was not
    drafted is appended to `skipped` (one line each)."""
    drafts: list[_Draft] = []
    skipped = skipped if skipped is not None else []

    def skip(kind: CandidateKind, values, what: str) -> None:
        vals = set(values)
        if any(v is None or v == "" or v != v for v in vals):  # v != v: NaN
            skipped.append(f"{kind.value}: some chosen messages have no {what}")
        elif len(vals) > MAX_ENTRIES:
            skipped.append(f"{kind.value}: {len(vals)} distinct {what}s among the chosen messages "
                           f"(more than {MAX_ENTRIES} is a new policy, not a fix: choose fewer messages)")
    ids = {e.id for e in policy.allow + policy.block}

    def entry_id(i: int) -> str:
        n = i
        while f"suggest-{n}" in ids:
            n += 1
        return f"suggest-{n}"

    def add_entries(kind: CandidateKind, specs: list[tuple[EntryKind, str, bool, Via | None]],
                    providers=()) -> None:
        for scope in _scopes(targets):
            entries = tuple(
                Entry(id=entry_id(i), list=ListKind.ALLOW, kind=k, value=v, subdomains=sub, via=via,
                      scope=scope, comment="proposed by edrules.workbench.suggest")
                for i, (k, v, sub, via) in enumerate(specs, start=1)
            )
            new = replace(policy, allow=policy.allow + entries,
                          providers=_provider_defs(policy, providers))
            drafts.append(_Draft(kind, scope, _summarise(entries), new))

    has_provider = targets["bulk_provider"].notna().all()
    if not has_provider:
        skipped.append("pairs via a provider and bulk-mailer allow: some chosen messages came "
                       "through no known bulk provider")
    if has_provider:
        pairs = sorted(set(zip(targets["header_from"], targets["bulk_provider"])))
        if len(pairs) <= MAX_ENTRIES and all(h for h, _ in pairs):
            add_entries(CandidateKind.PAIR_PROVIDER,
                        [(EntryKind.SENDER, h, False, Via(ViaKind.PROVIDER, p)) for h, p in pairs],
                        providers={p for _, p in pairs})
        else:
            skip(CandidateKind.PAIR_PROVIDER, [h or None for h, _ in pairs] if not all(h for h, _ in pairs)
                 else pairs, "header From / provider pair")
    own = sorted(set(zip(targets["header_from"], targets["header_from_org"])))
    if len(own) <= MAX_ENTRIES and all(h and o for h, o in own):
        add_entries(CandidateKind.PAIR_ALIGNED,
                    [(EntryKind.SENDER, h, False, Via(ViaKind.DOMAIN, o)) for h, o in own])
    else:
        skip(CandidateKind.PAIR_ALIGNED, [None] if not all(h and o for h, o in own) else own,
             "header From")
    if has_provider:
        dpairs = sorted(set(zip(targets["header_from_domain"], targets["bulk_provider"])))
        if len(dpairs) <= MAX_ENTRIES and all(d for d, _ in dpairs):
            add_entries(CandidateKind.PAIR_DOMAIN_PROVIDER,
                        [(EntryKind.DOMAIN, d, False, Via(ViaKind.PROVIDER, p)) for d, p in dpairs],
                        providers={p for _, p in dpairs})
        else:
            skip(CandidateKind.PAIR_DOMAIN_PROVIDER,
                 [None] if not all(d for d, _ in dpairs) else dpairs, "From domain / provider pair")
    envs = _distinct(targets["envelope_from"])
    if envs:
        add_entries(CandidateKind.ENVELOPE_SENDER, [(EntryKind.SENDER, e, False, None) for e in envs])
    else:
        skip(CandidateKind.ENVELOPE_SENDER, targets["envelope_from"], "envelope sender")
    orgs = _distinct(targets["env_org"])
    if orgs:
        add_entries(CandidateKind.ENVELOPE_DOMAIN, [(EntryKind.DOMAIN, o, True, None) for o in orgs])
    else:
        skip(CandidateKind.ENVELOPE_DOMAIN, targets["env_org"], "envelope domain")
    if has_provider:
        provs = sorted(set(targets["bulk_provider"]))
        if any(policy.bulk_mailers.get(p) is not BulkPolicy.ALLOW for p in provs):
            mailers = {**policy.bulk_mailers, **{p: BulkPolicy.ALLOW for p in provs}}
            drafts.append(_Draft(
                CandidateKind.BULK_ALLOW, Scope(),
                "bulk_mailers: " + ", ".join(f"{p}: allow" for p in provs),
                replace(policy, bulk_mailers=mailers, providers=_provider_defs(policy, provs))))
    froms = _distinct(targets["header_from"])
    if not froms:
        skip(CandidateKind.FROM_ALIGNED, targets["header_from"], "header From")
    for kind, mode in ((CandidateKind.FROM_ALIGNED, FromPolicy.ALIGNED),
                       (CandidateKind.FROM_RELAXED, FromPolicy.RELAXED)):
        if policy.from_policy is mode:
            skipped.append(f"{kind.value}: the pack already uses from_policy: {mode.value}")
            continue
        if not froms:
            continue
        listed = {e.value for e in policy.allow
                  if e.kind is EntryKind.SENDER and e.via is None and e.scope.kind is ScopeKind.GLOBAL}
        missing = [h for h in froms if h not in listed]
        extra = tuple(
            Entry(id=entry_id(i), list=ListKind.ALLOW, kind=EntryKind.SENDER, value=h,
                  comment="proposed by edrules.workbench.suggest")
            for i, h in enumerate(missing, start=1)
        )
        change = f"from_policy: {mode.value}"
        if extra:
            change += "; " + _summarise(extra)
        drafts.append(_Draft(kind, Scope(), change,
                             replace(policy, from_policy=mode, allow=policy.allow + extra)))
    return drafts


def _envelope_durable(con: duckdb.DuckDBPyConnection, targets: pd.DataFrame) -> tuple[bool, str]:
    facts = install_facts_view(con)
    con.register("wb_t", pa.Table.from_pandas(targets[["dataset", "header_from", "envelope_from"]],
                                              preserve_index=False))
    try:
        max_uses, envelopes_of_from = con.sql(_ENVELOPE_REUSE_SQL.format(facts=facts)).fetchall()[0]
    finally:
        con.unregister("wb_t")
    if (max_uses or 0) <= 1 and (envelopes_of_from or 0) > 1:
        return False, (f"per-message envelope sender (this From used {envelopes_of_from} "
                       "different ones): the next message will not match")
    return True, ""


def _delivered_targets(con: duckdb.DuckDBPyConnection, after: str) -> int:
    acts = ", ".join(f"'{a}'" for a in DELIVERED_ACTIONS)
    return con.execute(
        f"SELECT count(*) FROM {after} v JOIN wb_target_rows t USING (dataset, msg_key, recipient) "
        f"WHERE v.action IN ({acts})").fetchall()[0][0]


def measure(con: duckdb.DuckDBPyConnection, draft: _Draft, targets: pd.DataFrame, after: str,
            diff: WhatIf, durable: bool, note: str) -> Candidate:
    """A draft's blast radius from its what-if against the current pack."""
    target_keys = set(zip(targets["dataset"], targets["msg_key"], targets["recipient"]))
    nd = diff.newly_delivered
    # A boolean Series, not a list: an empty list would select zero *columns* of nd.
    is_target = pd.Series([(d, m, r) in target_keys
                           for d, m, r in zip(nd["dataset"], nd["msg_key"], nd["recipient"])],
                          index=nd.index, dtype=bool)
    other = nd[~is_target]
    by_label = other["label"].fillna("(none)").value_counts()
    return Candidate(
        kind=draft.kind, scope=draft.scope, change=draft.change, policy=draft.policy, whatif=diff,
        targets=len(target_keys), delivers=_delivered_targets(con, after), new_other=len(other),
        new_forged=int(other["forged"].sum()),
        new_by_label={str(k): int(v) for k, v in sorted(by_label.items())},
        stopped=len(diff.newly_stopped), durable=durable, note=note,
    )


def suggest(con: duckdb.DuckDBPyConnection, policy: Policy, targets: pd.DataFrame, *,
            verdicts: Callable[[Policy], str],
            whatif: Callable[[Policy, Policy], WhatIf]) -> Suggestions:
    """Draft, measure and rank candidates. `verdicts` and `whatif` come from the Workbench,
    so evaluation caching and the backend choice live in one place."""
    durable_env, env_note = _envelope_durable(con, targets)
    keys = targets[["dataset", "msg_key", "recipient"]].drop_duplicates()
    con.register("wb_target_rows", pa.Table.from_pandas(keys, preserve_index=False))
    measured = []
    skipped: list[str] = []
    try:
        for draft in draft_candidates(policy, targets, skipped):
            durable = durable_env if draft.kind is CandidateKind.ENVELOPE_SENDER else True
            note = env_note if draft.kind is CandidateKind.ENVELOPE_SENDER else ""
            after = verdicts(draft.policy)
            measured.append(measure(con, draft, targets, after, whatif(policy, draft.policy),
                                    durable, note))
    finally:
        con.unregister("wb_target_rows")
    measured.sort(key=Candidate.sort_key)
    return Suggestions(base=policy.name, targets=targets, candidates=tuple(measured),
                       skipped=tuple(dict.fromkeys(skipped)))
