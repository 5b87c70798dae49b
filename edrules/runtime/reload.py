"""The running rule pack: load + verify, swap atomically between messages, keep the old one on failure.

A message takes `holder.current` once and evaluates against that snapshot to the end, so a
reload never changes the policy in the middle of a message. The swap is one reference
assignment (atomic under the GIL); nothing is ever half-loaded.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from edrules.backends.runtime import RuntimeEvaluator
from edrules.errors import EdrulesError
from edrules.pack import LoadedPack, load_pack
from edrules.rules.model import Policy
from edrules.runtime.metrics import log_event


def pack_version(pack: LoadedPack) -> str:
    """What logs and quarantine records call this pack: metadata 'version' when the analyst
    set one (`pack compile --meta version=...`), else creation time + source hash prefix."""
    v = pack.metadata.get("version")
    if v:
        return str(v)
    return f"{pack.created.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{pack.source_sha256[:8]}"


@dataclass(frozen=True, slots=True)
class RunningPack:
    """One consistent snapshot: the verified pack, the policy evaluated (pack + local
    overrides) and its evaluator."""

    pack: LoadedPack
    version: str
    policy: Policy
    evaluator: RuntimeEvaluator
    file_sha256: str
    loaded_at: datetime
    overrides: int  # number of local override entries merged in

    @property
    def name(self) -> str:
        return self.pack.name

    def describe(self) -> dict[str, Any]:
        p = self.pack
        return {
            "name": p.name,
            "version": self.version,
            "created": p.created.isoformat(),
            "source_sha256": p.source_sha256,
            "file_sha256": self.file_sha256,
            "signed_by": p.signed_by,
            "metadata": p.metadata,
            "from_policy": str(self.policy.from_policy),
            "entries": {"allow": len(self.policy.allow), "block": len(self.policy.block)},
            "overrides": self.overrides,
            "loaded_at": self.loaded_at.isoformat(timespec="seconds"),
        }


def _file_key(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _merge_overrides(policy: Policy, state_dir: Path | None) -> tuple[Policy, int]:
    """The pack's policy with the gateway's local overrides (trust sender) merged in."""
    if state_dir is None:
        return policy, 0
    try:
        from edrules.runtime.overrides import Overrides
    except ModuleNotFoundError as exc:  # the overrides module ships with the quarantine store
        if exc.name == "edrules.runtime.overrides":
            return policy, 0
        raise
    ov = Overrides(state_dir)
    merged = ov.merged(policy)
    return merged, len(merged.allow) + len(merged.block) - len(policy.allow) - len(policy.block)


def load_running(pack_path: Path, pubkey_path: Path, state_dir: Path | None) -> RunningPack:
    """Load, verify (signature by the trusted key, format) and index a pack; EdrulesError
    when it must not be used."""
    pack = load_pack(pack_path, pubkey_path=pubkey_path)  # never allow_unsigned on a gateway
    file_sha = hashlib.sha256(pack_path.read_bytes()).hexdigest()
    policy, n_over = _merge_overrides(pack.policy, state_dir)
    try:
        evaluator = RuntimeEvaluator(policy)
    except (ValueError, KeyError, TypeError) as exc:
        raise EdrulesError(f"pack cannot be indexed: {type(exc).__name__}: {exc}") from None
    return RunningPack(pack, pack_version(pack), policy, evaluator, file_sha,
                       datetime.now(timezone.utc), n_over)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    trigger: str
    changed: bool
    error: str | None
    at: datetime
    pack: str | None  # name/version serving after the attempt


class PackHolder:
    """Holds the serving RunningPack; reload() replaces it only with a verified one."""

    def __init__(self, pack_path: str | Path, pubkey_path: str | Path, state_dir: str | Path | None,
                 *, on_reload: Callable[[ReloadResult], None] | None = None):
        self.pack_path = Path(pack_path)
        self.pubkey_path = Path(pubkey_path)
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self._lock = threading.Lock()  # one reload at a time; readers never take it
        self._on_reload = on_reload
        self.last_reload: ReloadResult | None = None
        # Raises EdrulesError at start: a gateway never starts on an unverifiable pack.
        self.current: RunningPack = load_running(self.pack_path, self.pubkey_path, self.state_dir)
        self._keys = self._watched_keys()

    def _overrides_path(self) -> Path | None:
        return self.state_dir / "overrides.yaml" if self.state_dir is not None else None

    def _watched_keys(self) -> tuple:
        ov = self._overrides_path()
        return (_file_key(self.pack_path), _file_key(ov) if ov else None)

    def reload(self, trigger: str) -> ReloadResult:
        """Load the pack file again; swap on success, keep the old pack and log why on failure."""
        with self._lock:
            self._keys = self._watched_keys()
            old = self.current
            try:
                new = load_running(self.pack_path, self.pubkey_path, self.state_dir)
            except EdrulesError as exc:
                result = ReloadResult(False, trigger, False, str(exc), datetime.now(timezone.utc),
                                      f"{old.name}/{old.version}")
                log_event({"event": "reload", "ok": False, "trigger": trigger, "error": str(exc),
                           "serving": f"{old.name}/{old.version}"}, level=logging.ERROR)
            except Exception as exc:  # a bug must not take the serving pack away either
                result = ReloadResult(False, trigger, False, f"internal error: {type(exc).__name__}: {exc}",
                                      datetime.now(timezone.utc), f"{old.name}/{old.version}")
                log_event({"event": "reload", "ok": False, "trigger": trigger, "error": result.error,
                           "serving": f"{old.name}/{old.version}"}, level=logging.ERROR)
            else:
                changed = (new.file_sha256 != old.file_sha256 or new.overrides != old.overrides
                           or new.policy != old.policy)
                self.current = new  # the atomic swap
                result = ReloadResult(True, trigger, changed, None, new.loaded_at, f"{new.name}/{new.version}")
                log_event({"event": "reload", "ok": True, "trigger": trigger, "changed": changed,
                           "pack": f"{new.name}/{new.version}"})
            self.last_reload = result
        if self._on_reload is not None:
            self._on_reload(result)
        return result

    def check_files(self) -> ReloadResult | None:
        """Reload when the pack file or the overrides file changed since the last look."""
        if self._watched_keys() != self._keys:
            # A writer that is not atomic (cp over the file) may be mid-write: let it finish.
            time.sleep(0.2)
            return self.reload("file-change")
        return None

    def watch(self, stop: threading.Event, interval: float = 1.0) -> threading.Thread:
        """Poll the files in a daemon thread (stat per second: no inotify dependency)."""

        def run() -> None:
            while not stop.wait(interval):
                try:
                    self.check_files()
                except Exception:  # never let the watcher die silently
                    log_event({"event": "watch-error", "error": traceback.format_exc(limit=3)},
                              level=logging.ERROR)

        t = threading.Thread(target=run, name="edrules-pack-watch", daemon=True)
        t.start()
        return t

