"""Rule packs: a compiled Policy as one canonical, Ed25519-signed JSON document."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edrules.errors import EdrulesError, Location
from edrules.facts import Action
from edrules.rules.model import (
    BulkPolicy,
    Entry,
    EntryKind,
    FromPolicy,
    ListKind,
    Policy,
    ProviderDef,
    Scope,
    ScopeKind,
    Via,
    ViaKind,
)

PACK_FORMAT = "edrules-pack"
# Bump when a reader of the previous version would misread a pack; readers refuse newer ones.
FORMAT_VERSION = 1
PRIVATE_KEY_NAME = "edrules-pack.key"
PUBLIC_KEY_NAME = "edrules-pack.pub"


@dataclass(frozen=True, slots=True)
class LoadedPack:
    """A verified pack. signed_by is the signer key fingerprint, None for an unsigned dev pack."""

    policy: Policy
    name: str
    created: datetime
    source_sha256: str
    metadata: dict[str, Any]
    signed_by: str | None


# -- canonical policy dict ------------------------------------------------------------------


def _entry_to_dict(e: Entry) -> dict[str, Any]:
    return {
        "id": e.id,
        "kind": e.kind.value,
        "value": e.value,
        "subdomains": e.subdomains,
        "via": None if e.via is None else {"kind": e.via.kind.value, "value": e.via.value},
        "scope": str(e.scope),
        "comment": e.comment,
        "expires": e.expires.isoformat() if e.expires else None,
        "line": e.line,
    }


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """JSON-ready, canonical form of a Policy (key order irrelevant: packs sort keys)."""
    return {
        "name": policy.name,
        "from_policy": policy.from_policy.value,
        "bulk_mailers": {k: BulkPolicy(v).value for k, v in policy.bulk_mailers.items()},
        "actions": {k: Action(v).value for k, v in policy.actions.items()},
        "retention_days": dict(policy.retention_days),
        "inbound": {"relays": list(policy.inbound_relays), "enforce": policy.inbound_enforce},
        "allow": [_entry_to_dict(e) for e in policy.allow],
        "block": [_entry_to_dict(e) for e in policy.block],
        "providers": {
            name: {"envelope_suffixes": list(p.envelope_suffixes), "dkim_domains": list(p.dkim_domains)}
            for name, p in sorted(policy.providers.items())
        },
    }


def _scope_from_text(text: str) -> Scope:
    if text == "global":
        return Scope()
    kind, _, value = text.partition(":")
    return Scope(ScopeKind(kind), value)


def _entry_from_dict(d: dict[str, Any], lst: ListKind) -> Entry:
    via = d.get("via")
    expires = d.get("expires")
    return Entry(
        id=d["id"],
        list=lst,
        kind=EntryKind(d["kind"]),
        value=d["value"],
        subdomains=bool(d.get("subdomains", False)),
        via=None if via is None else Via(ViaKind(via["kind"]), via["value"]),
        scope=_scope_from_text(d.get("scope", "global")),
        comment=d.get("comment"),
        expires=date.fromisoformat(expires) if expires else None,
        line=d.get("line"),
    )


def policy_from_dict(data: dict[str, Any]) -> Policy:
    """Inverse of policy_to_dict; a malformed dict raises EdrulesError, never KeyError."""
    try:
        inbound = data.get("inbound") or {}
        return Policy(
            name=data["name"],
            from_policy=FromPolicy(data.get("from_policy", "strict")),
            bulk_mailers={k: BulkPolicy(v) for k, v in data.get("bulk_mailers", {}).items()},
            actions={k: Action(v) for k, v in data["actions"].items()},
            retention_days={k: int(v) for k, v in data["retention_days"].items()},
            inbound_relays=tuple(inbound.get("relays", ())),
            inbound_enforce=bool(inbound.get("enforce", False)),
            allow=tuple(_entry_from_dict(e, ListKind.ALLOW) for e in data.get("allow", ())),
            block=tuple(_entry_from_dict(e, ListKind.BLOCK) for e in data.get("block", ())),
            providers={
                name: ProviderDef(name, tuple(p["envelope_suffixes"]), tuple(p["dkim_domains"]))
                for name, p in data.get("providers", {}).items()
            },
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EdrulesError(f"malformed compiled policy: {type(exc).__name__}: {exc}") from None


# -- keys and signatures --------------------------------------------------------------------


def canonical_json(obj: Any) -> bytes:
    """The bytes that are hashed and signed: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _fingerprint(public_raw: bytes) -> str:
    return "ed25519:" + hashlib.sha256(public_raw).hexdigest()[:16]


def _public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_keypair(directory: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair (PEM) into directory; refuses to overwrite existing keys."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = d / PRIVATE_KEY_NAME, d / PUBLIC_KEY_NAME
    for p in (priv_path, pub_path):
        if p.exists():
            raise EdrulesError("key file already exists; refusing to overwrite it", Location(str(p)))
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # The private key is created 0600 from the start, never briefly world-readable.
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv_path, pub_path


def _load_private(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise EdrulesError(f"cannot read private key: {exc.strerror}", Location(str(path))) from None
    except (ValueError, TypeError) as exc:
        raise EdrulesError(f"not a PEM private key: {exc}", Location(str(path))) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise EdrulesError("private key is not Ed25519", Location(str(path)))
    return key


def _load_public(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise EdrulesError(f"cannot read public key: {exc.strerror}", Location(str(path))) from None
    except (ValueError, TypeError) as exc:
        raise EdrulesError(f"not a PEM public key: {exc}", Location(str(path))) from None
    if not isinstance(key, Ed25519PublicKey):
        raise EdrulesError("public key is not Ed25519", Location(str(path)))
    return key


# -- build, write, load ---------------------------------------------------------------------


def build_pack(
    policy: Policy,
    *,
    source_bytes: bytes,
    private_key_path: str | Path | None = None,
    metadata: dict[str, Any] | None = None,
    created: datetime | None = None,
) -> dict[str, Any]:
    """The pack document; signed when a private key is given (the signature covers everything
    else in the document, metadata included)."""
    from edrules.catalog import load_catalog  # reads the bundled YAML only when compiling

    body: dict[str, Any] = {
        "format": PACK_FORMAT,
        "format_version": FORMAT_VERSION,
        "name": policy.name,
        "created": (created or datetime.now(timezone.utc)).astimezone(timezone.utc)
        .isoformat(timespec="seconds").replace("+00:00", "Z"),
        "source_sha256": hashlib.sha256(source_bytes).hexdigest(),
        "catalog_version": load_catalog().version,
        "policy": policy_to_dict(policy),
        "metadata": dict(metadata or {}),
    }
    try:
        canonical_json(body)
    except (TypeError, ValueError) as exc:
        raise EdrulesError(f"pack metadata must be JSON data: {exc}") from None
    if private_key_path is None:
        return body
    key = _load_private(private_key_path)
    public_raw = _public_raw(key.public_key())
    body["signer"] = {
        "alg": "ed25519",
        "public_key": base64.b64encode(public_raw).decode("ascii"),
        "key_id": _fingerprint(public_raw),
    }
    signature = key.sign(canonical_json(body))
    return {**body, "signature": base64.b64encode(signature).decode("ascii")}


def write_pack(pack: dict[str, Any], path: str | Path) -> None:
    """Write the canonical bytes (what was signed, plus the signature) and a final newline."""
    Path(path).write_bytes(canonical_json(pack) + b"\n")


def load_pack(
    path: str | Path,
    *,
    pubkey_path: str | Path | None = None,
    allow_unsigned: bool = False,
) -> LoadedPack:
    """Read and verify a pack.

    With pubkey_path the signature must be by that key (authenticity). Without it the
    signature is checked against the key embedded in the pack, which proves only that the
    pack was not modified after signing; gateways must pass the trusted public key.
    A signature that is present is always verified, even with allow_unsigned.
    """
    where = Location(str(path))
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise EdrulesError(f"cannot read pack: {exc.strerror}", where) from None
    try:
        doc = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        # A pack is a few levels deep; thousands of nested brackets are hostile, not a pack.
        raise EdrulesError("pack is nested too deeply to be a rule pack", where) from None
    except _DuplicateKey as exc:
        # Parsers disagree on which duplicate wins; a pack must mean one thing to every reader.
        raise EdrulesError(f"pack repeats the key {exc.args[0]!r}", where) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise EdrulesError(f"pack is not valid JSON: {exc}", where) from None
    if not isinstance(doc, dict) or doc.get("format") != PACK_FORMAT:
        raise EdrulesError("not an edrules rule pack (missing 'format': 'edrules-pack')", where)
    version = doc.get("format_version")
    if not isinstance(version, int):
        raise EdrulesError("pack has no integer format_version", where)
    if version > FORMAT_VERSION:
        raise EdrulesError(
            f"pack format version {version} is newer than this edrules supports "
            f"({FORMAT_VERSION}); upgrade edrules to load it", where,
        )
    try:
        signed_by = _verify(doc, pubkey_path, allow_unsigned, where)
        policy = policy_from_dict(doc.get("policy") or {})
    except RecursionError:
        raise EdrulesError("pack is nested too deeply to be a rule pack", where) from None
    try:
        created = datetime.fromisoformat(str(doc["created"]).replace("Z", "+00:00"))
        return LoadedPack(
            policy=policy,
            name=str(doc["name"]),
            created=created,
            source_sha256=str(doc["source_sha256"]),
            metadata=dict(doc.get("metadata") or {}),
            signed_by=signed_by,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise EdrulesError(f"malformed pack header: {exc}", where) from None


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _verify(doc: dict[str, Any], pubkey_path: str | Path | None, allow_unsigned: bool,
            where: Location) -> str | None:
    signature = doc.get("signature")
    if signature is None:
        if allow_unsigned:
            return None
        raise EdrulesError(
            "pack is unsigned; compile it with --key, or load it with allow_unsigned "
            "(--allow-unsigned) for development only", where,
        )
    body = {k: v for k, v in doc.items() if k != "signature"}
    signer = body.get("signer")
    if not isinstance(signer, dict):
        raise EdrulesError("pack 'signer' must be an object with alg and public_key", Location(where.file,
                           field="signer"))
    if not isinstance(signature, str) or not isinstance(signer.get("public_key", ""), str):
        raise EdrulesError("pack signature and signer key must be base64 text", where)
    try:
        sig = base64.b64decode(signature, validate=True)
        embedded = base64.b64decode(signer.get("public_key", ""), validate=True)
    except (ValueError, TypeError):
        raise EdrulesError("pack signature or signer key is not valid base64", where) from None
    if signer.get("alg") != "ed25519":
        raise EdrulesError(f"unsupported signature algorithm {signer.get('alg')!r}", where)
    if pubkey_path is not None:
        key = _load_public(pubkey_path)
        if _public_raw(key) != embedded:
            # Name the key that is really embedded: the pack's own key_id is only a claim.
            raise EdrulesError(
                f"pack was signed by {_fingerprint(embedded)}, not by the trusted key "
                f"{_fingerprint(_public_raw(key))}", where,
            )
    else:
        try:
            key = Ed25519PublicKey.from_public_bytes(embedded)
        except ValueError:
            raise EdrulesError("pack signer key is not an Ed25519 public key", where) from None
    try:
        key.verify(sig, canonical_json(body))
    except InvalidSignature:
        raise EdrulesError(
            "pack signature does not match its content: the pack was modified after signing",
            where,
        ) from None
    return _fingerprint(_public_raw(key))
