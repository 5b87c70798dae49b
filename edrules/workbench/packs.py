"""Turn whatever an analyst holds (YAML text, a rules file, a pack, a dict, a Policy) into a Policy."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import fields, is_dataclass
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from edrules.errors import EdrulesError, Location
from edrules.rules.model import Entry, Policy

PackSource = Any  # Policy | LoadedPack | dict | str (YAML text or a path) | Path


def to_policy(source: PackSource, *, pubkey_path: str | Path | None = None,
              allow_unsigned: bool = True) -> Policy:
    """A Policy from a Policy, a LoadedPack, a rules dict, YAML text, or a .yaml/.json path.

    Packs are loaded unsigned-tolerant by default: the workbench only *analyses* them; the
    gateway is where a missing signature must be fatal. A tampered signed pack still fails.
    """
    if isinstance(source, Policy):
        return source
    policy = getattr(source, "policy", None)
    if isinstance(policy, Policy):  # a LoadedPack
        return policy
    if isinstance(source, dict):
        return _from_dict(source)
    if isinstance(source, Path) or (isinstance(source, str) and _looks_like_path(source)):
        return _from_path(Path(source), pubkey_path=pubkey_path, allow_unsigned=allow_unsigned)
    if isinstance(source, str):
        from edrules.rules.parse import parse_rules

        return parse_rules(source, source="<text>")
    raise EdrulesError(f"cannot make a rule pack from {type(source).__name__}")


def _looks_like_path(text: str) -> bool:
    return "\n" not in text and text.strip().endswith((".yaml", ".yml", ".json"))


def _from_path(path: Path, *, pubkey_path: str | Path | None, allow_unsigned: bool) -> Policy:
    if not path.is_file():
        raise EdrulesError("no such rules file or pack", Location(str(path)))
    if path.suffix == ".json":
        from edrules.pack import load_pack

        return load_pack(path, pubkey_path=pubkey_path, allow_unsigned=allow_unsigned).policy
    from edrules.rules.parse import parse_rules_file

    return parse_rules_file(path)


def _from_dict(data: dict) -> Policy:
    # A compiled policy dict (policy_to_dict, a pack's "policy") carries the frozen provider
    # catalog, which a rules file never has; a rules dict goes through the validating parser.
    if "providers" in data:
        from edrules.pack import policy_from_dict

        return policy_from_dict(data)
    from edrules.rules.parse import parse_rules

    return parse_rules(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), source="<dict>")


def _plain(value: Any) -> Any:
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return value


def policy_digest(policy: Policy) -> str:
    """A stable content hash of a policy (line numbers excluded), to cache evaluations by."""
    data = _plain(policy)
    for key in ("allow", "block"):
        for e in data[key]:
            e.pop("line", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def describe_entry(entry: Entry) -> str:
    """One line a reader recognises: 'allow sender a@b.cz via amazonses [user:x@y.cz]'."""
    text = f"{entry.list.value} {entry.kind.value} {entry.value}"
    if entry.subdomains:
        text += " (+subdomains)"
    if entry.via is not None:
        text += f" via {entry.via.value}"
    if str(entry.scope) != "global":
        text += f" [{entry.scope}]"
    if entry.expires is not None:
        text += f" until {entry.expires.isoformat()}"
    return text


# The id the parser gives an entry written without one ('allow[2]'): not a valid id to write
# back, and the parser derives it again from the position.
_AUTO_ID = re.compile(r"^(allow|block)\[\d+\]$")


def _entry_to_rules(entry: Entry) -> dict[str, Any]:
    item: dict[str, Any] = {} if _AUTO_ID.match(entry.id) else {"id": entry.id}
    item[entry.kind.value] = entry.value
    if entry.subdomains:
        item["subdomains"] = True
    if entry.via is not None:
        item["via"] = entry.via.value  # the parser tells provider, domain and CIDR apart
    if str(entry.scope) != "global":
        item["scope"] = str(entry.scope)
    if entry.comment:
        item["comment"] = entry.comment
    if entry.expires is not None:
        item["expires"] = entry.expires.isoformat()
    return item


def policy_to_rules_yaml(policy: Policy) -> str:
    """The rules-file text (docs/rules.md) of a policy, so a chosen candidate can be reviewed,
    committed and compiled like any hand-written rules file. Defaults are left out."""
    from edrules.rules.model import DEFAULT_ACTIONS, DEFAULT_RETENTION_DAYS

    data: dict[str, Any] = {"name": policy.name, "from_policy": policy.from_policy.value}
    if policy.bulk_mailers:
        data["bulk_mailers"] = {k: v.value for k, v in sorted(policy.bulk_mailers.items())}
    actions = {k: v.value for k, v in policy.actions.items() if DEFAULT_ACTIONS.get(k) != v}
    if actions:
        data["actions"] = actions
    retention = {k: v for k, v in policy.retention_days.items() if DEFAULT_RETENTION_DAYS.get(k) != v}
    if retention:
        data["retention_days"] = retention
    if policy.inbound_relays or policy.inbound_enforce:
        data["inbound"] = {"relays": list(policy.inbound_relays), "enforce": policy.inbound_enforce}
    for key in ("allow", "block"):
        entries = getattr(policy, key)
        if entries:
            data[key] = [_entry_to_rules(e) for e in entries]
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
