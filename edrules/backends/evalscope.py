"""What an evaluation covers: a dataset name that exists, the date entry expiry is judged at, the rows
decided without an envelope sender, a file lock explained."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from edrules.errors import EdrulesError, Location

# A message dated more than max(OUTLIER_GAP, OUTLIER_SHARE of the 1st-99th percentile span)
# after the 99th percentile of dates is an outlier (a forged or broken Date:, such as 2031 in
# a 2024 phishing trap), not "the newest message". The share keeps the last days of a
# years-long steady dataset (whose last 1% spans more than a week) from being cut off.
OUTLIER_GAP = timedelta(days=7)
OUTLIER_SHARE = 0.10
QUANTILE = 0.99


@dataclass(frozen=True, slots=True)
class EvalDate:
    """The evaluation date and how it was chosen, so every report can print both."""

    now: datetime  # naive UTC, like received_at
    basis: str  # 'given', 'data', or 'empty'
    newest: datetime | None = None  # newest message date believed
    outliers: int = 0  # messages dated after it, left out of the choice

    def short(self) -> str:
        """'evaluation date 2025-10-01 21:28' plus, when dates were ignored, how many."""
        text = f"evaluation date {self.now:%Y-%m-%d %H:%M}"
        return text + (f" ({self.outliers} implausible later dates ignored)" if self.outliers else "")

    def describe(self) -> str:
        """One line of at most 100 columns for every report."""
        when = f"{self.now:%Y-%m-%d %H:%M}"
        if self.basis == "given":
            return f"evaluation date {when} (given)"
        if self.basis == "empty":
            return f"evaluation date {when} (no dated messages)"
        text = f"evaluation date {when} (newest message {self.newest:%Y-%m-%d} + 1 day"
        if self.outliers:
            text += f"; {self.outliers} implausible later date(s) ignored"
        return text + ")"


def datasets(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Dataset name -> messages, in name order."""
    return {str(k): int(v) for k, v in con.execute(
        "SELECT dataset, count(*) FROM messages GROUP BY 1 ORDER BY 1").fetchall()}


def require_known_dataset(con: duckdb.DuckDBPyConnection, dataset: str | None, path: str) -> None:
    """An unknown dataset name is an error naming the ones that exist: a typo must never
    evaluate zero rows and read as "this change is safe"."""
    if dataset is None:
        return
    have = datasets(con)
    if dataset in have:
        return
    listing = ", ".join(f"{name!r} ({n} messages)" for name, n in have.items()) or "none (the file is empty)"
    hint = ""
    if dataset.strip() in have:
        hint = f"; did you mean {dataset.strip()!r} (without the surrounding spaces)?"
    else:
        close = [n for n in have if n.lower() == dataset.strip().lower()]
        if close:
            hint = f"; did you mean {close[0]!r}?"
    raise EdrulesError(f"no dataset {dataset!r} in this file{hint}; datasets here: {listing}",
                       Location(path))


def default_now(con: duckdb.DuckDBPyConnection, dataset: str | None = None, *,
                clock: datetime | None = None) -> EvalDate:
    """A day after the newest *plausible* message date, so the same data and rules always give
    the same numbers and entries expiring that day still count.

    Plausible: not after this machine's clock (plus a day), and not far after the 99th
    percentile of dates (OUTLIER_GAP, or OUTLIER_SHARE of the dataset's span if longer). One forged future Date: therefore cannot move every expiry
    decision of the dataset.
    """
    clock = (clock or datetime.now(timezone.utc)).replace(tzinfo=None) + timedelta(days=1)
    where = "AND dataset = $ds" if dataset is not None else ""
    params: dict = {"clock": clock, **({"ds": dataset} if dataset is not None else {})}
    lo, hi = con.execute(
        f"SELECT quantile_disc(received_at, {1 - QUANTILE}), quantile_disc(received_at, {QUANTILE}) "
        f"FROM messages WHERE received_at IS NOT NULL AND received_at <= $clock {where}", params).fetchall()[0]
    if hi is None:
        return EvalDate(datetime(2000, 1, 1), "empty")
    params["limit"] = hi + max(OUTLIER_GAP, (hi - lo) * OUTLIER_SHARE)
    newest, outliers = con.execute(
        f"""SELECT max(received_at) FILTER (WHERE received_at <= least($clock, $limit)),
                   count(*) FILTER (WHERE received_at > least($clock, $limit))
            FROM messages WHERE received_at IS NOT NULL {where}""", params).fetchall()[0]
    now = newest.replace(microsecond=0) + timedelta(days=1)
    return EvalDate(now, "data", newest, int(outliers))


def rows_without_envelope(con: duckdb.DuckDBPyConnection, dataset: str | None = None, *,
                          recipient: str | None = None, recipient_domain: str | None = None) -> int:
    """Recipient rows whose message has no envelope sender at all (no MAIL FROM, Return-Path or
    From_ line: `envelope_from IS NULL`; the null sender `<>` is `''`, known). Optionally only
    one recipient's or one recipient domain's rows, as a what-if limited to them."""
    where, params = ["m.envelope_from IS NULL"], {}
    if dataset is not None:
        where.append("r.dataset = $ds")
        params["ds"] = dataset
    if recipient is not None:
        where.append("r.recipient = $rcpt")
        params["rcpt"] = recipient.strip().lower()
    if recipient_domain is not None:
        where.append("lower(split_part(r.recipient, '@', -1)) = $rdom")
        params["rdom"] = recipient_domain.strip().lower().rstrip(".")
    return int(con.execute(
        "SELECT count(*) FROM recipients r JOIN messages m ON m.dataset = r.dataset AND m.msg_key = r.msg_key "
        "WHERE " + " AND ".join(where), params).fetchall()[0][0])


# What an unknown envelope means under each From-policy (docs/rules.md, Semantics).
_BLIND = {
    "strict": "the strict From-policy cannot call them forgeries",
    "aligned": "under aligned their envelope identities never match (no envelope entry, no SPF alignment)",
    "relaxed": "under relaxed their envelope identities never match (no envelope entry applies)",
}


def no_envelope_note(rows: int, total: int, from_policies: Iterable[str], *, width: int = 100) -> str:
    """The report line (wrapped to `width`) saying how many recipient rows were decided without
    an envelope sender and what that hides under the given From-policies; '' when there are none."""
    if rows <= 0:
        return ""
    given = {str(p) for p in from_policies}
    why = "; ".join(text for mode, text in _BLIND.items() if mode in given)
    text = (f"{rows:,} of {total:,} recipient rows were decided without an envelope sender "
            f"(no MAIL FROM, Return-Path or From_ line)" + (f": {why}" if why else ""))
    return textwrap.fill(text, width=width, break_long_words=False, break_on_hyphens=False)


_LOCK = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")


def lock_error(exc: Exception, path: str | Path) -> EdrulesError | None:
    """A DuckDB lock conflict, as: which process holds the file and what to do about it."""
    m = _LOCK.search(str(exc))
    if not m:
        return None
    pid = m.group("pid")
    what = m.group("exe")
    try:  # the command line says whether it is a notebook kernel, Voila or an ingest
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        if cmd:
            what = cmd if len(cmd) <= 120 else cmd[:117] + "..."
    except OSError:
        pass
    return EdrulesError(
        f"the dataset is locked by another process: PID {pid} ({what}). A notebook kernel or a "
        f"Voila page that opened it for writing holds it until it closes: shut that kernel down "
        f"(or stop the process: kill {pid}) and run the command again; notebooks and dashboards "
        f"should open it with Workbench(read_only=True), which never holds the lock",
        Location(str(path)))


def connect(path: str | Path, *, read_only: bool) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, with a lock conflict explained instead of DuckDB's IO error."""
    from edrules.schema import connect_dataset

    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        err = lock_error(exc, path)
        if err is not None:
            raise err from None
    # Not a lock: not a DuckDB file, empty, unreadable... said as one located line.
    return connect_dataset(str(path), read_only=read_only)
