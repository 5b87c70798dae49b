"""Ingest paths into a DuckDB dataset: discover, extract in parallel, bulk-load in input order."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import duckdb

from edrules.errors import EdrulesError, Location
from edrules.ingest.extract import extract, normalize_category, top_auth_ids
from edrules.ingest.headers import split_header_block
from edrules.ingest.load import ArrowBatch, Batch, StagedBatch, connect, load, load_staged, write_staged
from edrules.ingest.readers import (
    FileRefused,
    ReadFailure,
    Skipped,
    Unit,
    is_csv,
    is_smtp_transcript,
    open_regular,
    read_capped,
    read_unit_bytes,
    units_of_file,
    walk,
)
from edrules.ingest.quarantine import csv_units
from edrules.ingest.trust import AUTO_SAMPLE, TrustConfig, detect_authserv_ids

BATCH_FILES = 64  # files per worker task: large enough to amortise pickling, small for balance
BATCH_BYTES = 4_000_000  # ... or fewer files when they are big (mbox)
FLUSH_MESSAGES = 2000  # messages per DuckDB transaction with one process
# With workers: messages per staged load while they run (the parent's DuckDB inserts overlap
# their extraction; the last load, after them, uses all of DuckDB's threads).
STAGE_MESSAGES = 2000
SNIFF_BYTES = 262144


def units_of(path: Path, keep_data: bool = False) -> Iterator[Unit | ReadFailure]:
    """One file's units: the rows of a quarantine CSV, or the messages of a mail file."""
    if is_csv(path):
        return csv_units(path)
    return units_of_file(path, keep_data)


@dataclass(frozen=True, slots=True)
class IngestSummary:
    """messages: messages read and extracted (duplicates included, so messages + errors equals
    the messages in the input); duplicates: of those, already in the dataset or repeated."""

    messages: int
    recipients: int
    errors: int
    duplicates: int
    seconds: float
    bytes: int
    skipped: int = 0
    authserv_ids: tuple[str, ...] = ()

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        parts = [f"{self.messages:,} messages"]
        if self.duplicates:
            parts[0] += f" ({self.duplicates:,} already present)"
        parts.append(f"{self.recipients:,} recipients")
        parts.append(f"{self.errors:,} errors")
        if self.skipped:
            parts.append(f"{self.skipped:,} non-mail files skipped")
        mb = self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0
        return ", ".join(parts) + f" in {self.seconds:.1f} s ({self.rate:,.0f} msg/s, {mb:.1f} MB/s)"


def _process(args: tuple[list[str], str, str | None, TrustConfig]) -> ArrowBatch:
    """Worker: read a list of files (splitting mbox/transcripts/CSV) into one Arrow batch;
    every message yields a row or an error row, in file order."""
    paths, dataset, label, trust = args
    batch = Batch(files=len(paths))
    # Extraction makes millions of short-lived tuples and no reference cycles: the cyclic
    # collector only rescans them (a fifth of the CPU time when measured).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for path in paths:
            for u in units_of(Path(path), keep_data=True):
                if isinstance(u, ReadFailure):
                    batch.error(dataset, u.source, u.position, u.error, u.detail)
                    continue
                _process_unit(u, dataset, label, trust, batch)
        return batch.to_arrow()
    finally:
        if was_enabled:
            gc.enable()


def _stage(args: tuple[list[str], str, str | None, TrustConfig, str]) -> StagedBatch:
    """Worker with a pool: the batch goes to Arrow files, only its keys back to the parent."""
    *task, stem = args
    return write_staged(_process(tuple(task)), Path(stem))


def _process_unit(u: Unit, dataset: str, label: str | None, trust: TrustConfig, batch: Batch) -> None:
    try:
        if u.kind == "csv":
            _process_csv(u, dataset, label, trust, batch)
            return
        if u.client_ip and "%" in u.client_ip:  # an SMTP transcript's XFORWARD ADDR
            from edrules.ingest.quarantine import check_client_ip

            check_client_ip(u.client_ip, Location(u.source, field="client_ip"))
        raw = read_unit_bytes(u)
        batch.bytes += len(raw)
        m = extract(
            raw, source=u.source, dataset=dataset, trust=trust, detect_per_message=False,
            label=label, mbox_from=u.mbox_from, envelope_from=u.envelope_from,
            recipients=u.recipients or None, client_ip=u.client_ip, helo=u.helo,
        )
        batch.add(m)
    except EdrulesError as exc:
        batch.error(dataset, u.source, _position(u, exc), _code(exc), exc.message)
    except FileRefused as exc:
        batch.error(dataset, u.source, _position(u, None), exc.error, exc.detail)
    except OSError as exc:
        batch.error(dataset, u.source, _position(u, None), "unreadable", exc.strerror or str(exc))
    except Exception as exc:  # noqa: BLE001 - a hostile message must become an error row
        batch.error(dataset, u.source, _position(u, None), "extract-failed", f"{type(exc).__name__}: {exc}")


def _process_csv(u: Unit, dataset: str, label: str | None, trust: TrustConfig, batch: Batch) -> None:
    from edrules.ingest.quarantine import csv_fields, facts_from_csv_row

    eml = dict(u.row).get("eml", "").strip()
    if not eml:
        batch.add(facts_from_csv_row(u, dataset, label))
        return
    kw = csv_fields(u)
    path = Path(eml) if os.path.isabs(eml) else Path(u.path).parent / eml
    raw = read_capped(path)  # a FIFO or /dev/zero named by a row is refused, not read
    batch.bytes += len(raw)
    batch.add(extract(raw, source=u.source, dataset=dataset, trust=trust, detect_per_message=False,
                      label=label, **kw))


def _position(u: Unit, exc: EdrulesError | None) -> str:
    if u.kind == "csv":
        return f"line {u.line}"
    if u.kind in ("mbox", "smtp"):
        n = u.source.rpartition("#")[2] if "#" in u.source else "1"
        return f"message {n}, byte {u.start}"
    return "file"


def _code(exc: EdrulesError) -> str:
    msg = exc.message
    if msg.startswith("no header fields"):
        return "not-a-message"
    if exc.location and exc.location.field:
        return f"invalid-{exc.location.field}"
    return "invalid"


def discover(paths: Sequence[str | Path]) -> tuple[list[Unit], list[ReadFailure], list[Skipped]]:
    """Every message unit of the inputs (used by tools that need them all up front)."""
    units: list[Unit] = []
    failures: list[ReadFailure] = []
    skipped: list[Skipped] = []
    for item in walk(paths):
        if isinstance(item, Skipped):
            skipped.append(item)
        elif isinstance(item, ReadFailure):
            failures.append(item)
        else:
            for u in units_of(item):
                (failures if isinstance(u, ReadFailure) else units).append(u)
    return units, failures, skipped


def detect_ids(files: Sequence[Path]) -> frozenset[str]:
    """Auto-detect trusted authserv-ids from an evenly spread sample of the run's files
    (the first message of each; header block only)."""
    if not files:
        return frozenset()
    step = max(1, len(files) // AUTO_SAMPLE)
    seen: list[str] = []
    for path in files[::step][:AUTO_SAMPLE]:
        if path.suffix.lower() == ".csv":
            continue
        try:
            with open_regular(path) as fh:
                head = fh.read(SNIFF_BYTES)
        except (OSError, FileRefused):
            continue
        if is_smtp_transcript(head):
            start = head.find(b"\nDATA")
            head = head[head.find(b"\n", start + 1) + 1 :] if start >= 0 else b""
        if head[:5] == b"From ":
            head = head.partition(b"\n")[2]
        seen.extend(top_auth_ids(split_header_block(head)))
    return detect_authserv_ids(seen)


def _tasks(files: Sequence[Path], dataset: str, label: str | None, trust: TrustConfig) -> Iterator[tuple]:
    """Chunks of files for the workers: BATCH_FILES files, or fewer when they are large."""
    chunk: list[str] = []
    size = 0
    for f in files:
        try:
            n = f.stat().st_size
        except OSError:
            n = 0
        chunk.append(str(f))
        size += n
        if len(chunk) >= BATCH_FILES or size >= BATCH_BYTES:
            yield (chunk, dataset, label, trust)
            chunk, size = [], 0
    if chunk:
        yield (chunk, dataset, label, trust)


def plan_run(paths: Sequence[str | Path], dataset: str, trust: TrustConfig
             ) -> tuple[list[Path], list[Skipped], Batch, TrustConfig]:
    """Before any extraction: the files to read, the non-mail files skipped, a batch of the
    read failures found while walking (a FIFO, an unreadable file), and the trust to use (with
    auto-detected authserv-ids when asked for). Shared by every ingest engine."""
    files: list[Path] = []
    skipped: list[Skipped] = []
    pre = Batch()
    for item in walk(paths):
        if isinstance(item, Skipped):
            skipped.append(item)
        elif isinstance(item, ReadFailure):
            pre.error(dataset, item.source, item.position, item.error, item.detail)
        else:
            files.append(item)
    if trust.auto_detect and not trust.authserv_ids:
        trust = trust.with_ids(detect_ids(files))
    return files, skipped, pre, trust


def ingest_paths(
    db: str | Path | duckdb.DuckDBPyConnection,
    paths: Sequence[str | Path],
    *,
    dataset: str = "default",
    label: str | None = None,
    trust: TrustConfig | None = None,
    jobs: int | None = None,
    progress: bool = False,
) -> IngestSummary:
    """Ingest files, folders (maildir included), mbox files, header dumps and quarantine CSVs.
    Results load in input order whatever `jobs` is, so two runs give identical tables."""
    t0 = time.perf_counter()
    if not dataset or not dataset.strip():
        raise EdrulesError("dataset name is empty")
    label = normalize_category(label)
    trust = trust or TrustConfig()
    files, skipped, pre, trust = plan_run(paths, dataset, trust)
    jobs = max(1, min(jobs or os.cpu_count() or 1, max(1, len(files) // BATCH_FILES + 1)))
    pool = _pool(jobs) if jobs > 1 else None  # before DuckDB starts threads in this process
    try:
        con, owned = connect(db)
    except BaseException:
        if pool is not None:
            pool.terminate()
            pool.join()
        raise
    totals = {"messages": 0, "recipients": 0, "errors": 0, "duplicates": 0, "bytes": 0}
    seen: set[str] = set()
    tasks = _tasks(files, dataset, label, trust)
    bar = _bar(len(files)) if progress else None
    try:
        was_empty = _dataset_is_empty(con, dataset)
        if pool is None:
            _load_serially(con, pre, tasks, dataset, seen, totals, bar, was_empty)
        else:
            _load_staged(con, pool, pre, tasks, dataset, seen, totals, bar, was_empty)
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        if owned:
            con.close()
    return IngestSummary(
        messages=totals["messages"],
        recipients=totals["recipients"],
        errors=totals["errors"],
        duplicates=totals["duplicates"],
        seconds=time.perf_counter() - t0,
        bytes=totals["bytes"],
        skipped=len(skipped),
        authserv_ids=tuple(sorted(trust.authserv_ids)),
    )


def _count(totals: dict, c) -> None:
    totals["recipients"] += c.recipients
    totals["duplicates"] += c.duplicates
    totals["errors"] += c.errors


def _dataset_is_empty(con, dataset: str) -> bool:
    try:
        return not con.execute("SELECT EXISTS (SELECT 1 FROM messages WHERE dataset = ?)", [dataset]).fetchone()[0]
    except duckdb.Error:
        return False  # load() reports what is wrong with the table


def _load_serially(con, pre: Batch, tasks, dataset: str, seen: set[str], totals: dict, bar,
                   was_empty: bool) -> None:
    """One process: extract a batch, load it, one transaction per FLUSH_MESSAGES messages."""
    # Loads are small and frequent; DuckDB's extra threads would only add overhead.
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    con.execute("SET threads = 1")
    try:
        pending: list[ArrowBatch] = [pre.to_arrow()]
        pending_msgs = 0
        for batch in map(_process, tasks):
            totals["messages"] += batch.messages.num_rows
            totals["bytes"] += batch.bytes
            pending.append(batch)
            pending_msgs += batch.messages.num_rows
            if bar is not None:
                bar.update(batch.files)
            if pending_msgs >= FLUSH_MESSAGES:
                _count(totals, load(con, pending, dataset, seen, was_empty=was_empty))
                pending, pending_msgs = [], 0
        _count(totals, load(con, pending, dataset, seen, was_empty=was_empty))
    finally:
        con.execute(f"SET threads = {int(threads)}")


def _load_staged(con, pool, pre: Batch, tasks, dataset: str, seen: set[str], totals: dict, bar,
                 was_empty: bool) -> None:
    """Workers extract and write their batches as Arrow IPC files themselves; only the keys come
    back through the pipe (in input order: imap). The parent memory-maps the files into DuckDB
    every STAGE_MESSAGES messages, overlapping the workers; it no longer unpickles and copies
    every batch. (Parquet files read by DuckDB with read_parquet were measured too: encoding
    cost the workers a tenth more CPU and DuckDB's load did not get faster on two threads.)"""
    try:
        stage = Path(tempfile.mkdtemp(prefix="edrules-ingest-"))
        _run_staged(con, pool, pre, tasks, dataset, seen, totals, bar, stage, was_empty)
    except OSError as exc:  # e.g. a full or read-only temporary folder ($TMPDIR)
        raise EdrulesError(f"cannot stage batches in the temporary folder: {exc.strerror or exc}",
                           Location(tempfile.gettempdir(), field="ingest")) from None


def _run_staged(con, pool, pre: Batch, tasks, dataset: str, seen: set[str], totals: dict, bar,
                stage: Path, was_empty: bool) -> None:
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    try:
        pending = [write_staged(pre.to_arrow(), stage / "pre")]
        pending_msgs = 0

        def flush() -> None:
            nonlocal pending, pending_msgs
            _count(totals, load_staged(con, pending, dataset, seen, was_empty=was_empty))
            for s in pending:
                for path in s.files.values():
                    os.unlink(path)
            pending, pending_msgs = [], 0

        work = ((*task, str(stage / f"{i:08d}")) for i, task in enumerate(tasks))
        # While the workers run, one DuckDB thread: more would only take CPU from them.
        con.execute("SET threads = 1")
        for s in pool.imap(_stage, work, chunksize=1):
            totals["messages"] += len(s.keys)
            totals["bytes"] += s.bytes
            pending.append(s)
            pending_msgs += len(s.keys)
            if bar is not None:
                bar.update(s.inputs)
            if pending_msgs >= STAGE_MESSAGES:
                flush()
        con.execute(f"SET threads = {int(threads)}")
        flush()
    finally:
        con.execute(f"SET threads = {int(threads)}")
        shutil.rmtree(stage, ignore_errors=True)


def _pool(jobs: int):
    """Worker pool started by fork: workers inherit the imported modules (pyarrow, pandas,
    the catalog), so they start in milliseconds instead of re-importing for a second or
    more. They never touch DuckDB, whose threads a fork does not copy."""
    import pandas  # noqa: F401 - pyarrow imports it on first use; do it once, before forking

    # Objects that exist now are never collected in the workers: the GC must not write to
    # (and so copy) every inherited page.
    gc.freeze()
    try:
        return mp.get_context("fork").Pool(jobs)
    finally:
        gc.unfreeze()


def _bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="file", dynamic_ncols=True, leave=False)
