"""The running milter's status file (STATE/milter-status.json): what pack serves, since when,
the last reload and its reason; `edrules milter status` reads it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edrules.errors import EdrulesError, Location

STATUS_FILE = "milter-status.json"


def status_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / STATUS_FILE


def write_status(state_dir: str | Path, status: dict[str, Any]) -> None:
    """Atomic replace: a reader never sees half a file."""
    path = status_path(state_dir)
    fd, tmp = tempfile.mkstemp(prefix=".status-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(status, fh, ensure_ascii=False, indent=2, sort_keys=True, default=str)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_status(state_dir: str | Path) -> dict[str, Any]:
    path = status_path(state_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdrulesError("no milter status here (is `edrules milter` running with this --state?)",
                           Location(str(path))) from None
    except (OSError, ValueError) as exc:
        raise EdrulesError(f"unreadable milter status: {exc}", Location(str(path))) from None
    pid = data.get("pid")
    data["running"] = isinstance(pid, int) and _alive(pid)
    return data


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def format_status(s: dict[str, Any]) -> str:
    """The human view of a status dict."""
    p = s.get("pack") or {}
    lines = [
        f"milter: {'running' if s.get('running') else 'NOT running'} (pid {s.get('pid')}) on {s.get('listen')}, "
        f"since {s.get('started_at')}",
        f"pack: {p.get('name')} version {p.get('version')} (created {p.get('created')}, "
        f"signed by {p.get('signed_by')})",
        f"  file: {s.get('pack_path')} sha256 {str(p.get('file_sha256'))[:16]}..., "
        f"loaded {p.get('loaded_at')}",
        f"  policy: from_policy {p.get('from_policy')}, {(p.get('entries') or {}).get('allow')} allow, "
        f"{(p.get('entries') or {}).get('block')} block, {p.get('overrides')} local overrides",
        f"  signed metadata: {json.dumps(p.get('metadata') or {}, ensure_ascii=False, sort_keys=True)}",
        f"auth: {s.get('auth')}; authserv-id {s.get('authserv_id')}",
    ]
    last = s.get("last_reload")
    if last:
        verdict = "ok" if last.get("ok") else f"FAILED: {last.get('error')} (kept {last.get('serving')})"
        lines.append(f"last reload: {last.get('at')} on {last.get('trigger')}: {verdict}")
    else:
        lines.append("last reload: none since start")
    c = s.get("counters") or {}
    msgs = c.get("messages") or {}
    lines.append("messages: " + (", ".join(f"{k} {int(v)}" for k, v in sorted(msgs.items())) or "none")
                 + f" (status of {s.get('updated_at')})")
    return "\n".join(lines)
