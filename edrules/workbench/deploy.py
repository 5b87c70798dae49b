"""Compile the chosen policy into a signed pack that carries its what-if against the deployed pack."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edrules.pack import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME, LoadedPack, build_pack, generate_keypair, load_pack, write_pack
from edrules.rules.model import Policy
from edrules.workbench.packs import policy_digest, policy_to_rules_yaml
from edrules.workbench.whatif import WhatIf


@dataclass(frozen=True, slots=True)
class CompiledPack:
    """Where a compile put things. The rules file is the reviewable source of the pack."""

    name: str
    rules_path: Path
    pack_path: Path
    public_key: Path
    metadata: dict[str, Any]


def ensure_keypair(key_dir: Path) -> tuple[Path, Path]:
    """The signing key pair in key_dir, created on first use (never overwritten)."""
    private, public = key_dir / PRIVATE_KEY_NAME, key_dir / PUBLIC_KEY_NAME
    if private.exists() and public.exists():
        return private, public
    return generate_keypair(key_dir)


def whatif_metadata(diff: WhatIf, deployed: Policy) -> dict[str, Any]:
    """What a reviewer of the pack needs without the dataset: the deployed pack it was
    measured against and what changed."""
    return {
        "whatif": {
            "against": deployed.name,
            "against_digest": policy_digest(deployed),
            "counts": diff.counts(),
            "summary": [
                {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                for row in diff.summary.to_dict(orient="records")
            ],
        }
    }


def compile_pack(policy: Policy, out_dir: str | Path, *, key_dir: str | Path,
                 metadata: dict[str, Any] | None = None) -> CompiledPack:
    """Write NAME.yaml (rules source) and NAME.json (signed pack) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private, public = ensure_keypair(Path(key_dir))
    text = policy_to_rules_yaml(policy)
    rules_path = out / f"{policy.name}.yaml"
    rules_path.write_text(text, encoding="utf-8")
    pack = build_pack(policy, source_bytes=text.encode("utf-8"), private_key_path=private,
                      metadata=metadata or {})
    pack_path = out / f"{policy.name}.json"
    write_pack(pack, pack_path)
    return CompiledPack(policy.name, rules_path, pack_path, public, dict(metadata or {}))


def verify_pack(compiled: CompiledPack) -> LoadedPack:
    """Load the pack the way a gateway does: signed by the trusted key, or an error."""
    return load_pack(compiled.pack_path, pubkey_path=compiled.public_key)
