"""Where one gateway's support data lives: its state dir, the analysts' dataset, each domain's pack.

A site is described by STATE/support.yaml (written by `edrules demo` or an operator):

    dataset_db: /path/edrules.duckdb      # the analysts' history (DuckDB)
    signing_key: /path/edrules-pack.key   # signs the packs the wizard writes
    pubkey: /path/edrules-pack.pub        # the gateway's trusted key
    next_hop: 127.0.0.1:2525              # where released mail is re-injected
    domains:
      northwind-traders.cz:
        dataset: demo                     # dataset name of this domain's history
        trusted_authserv: [mx1.northwind-traders.cz]
        secure_release: false             # true: token pages also need a signed-in user (+MFA)
        zone: /path/zone.txt              # offline DNS for dns-check (tests, demo)
        dkim_selectors: [nw2025]
        gateway_relays: [203.0.113.0/28]
        gateway_mx: [mx1.northwind-traders.cz]

Each domain's rules and signed pack sit at STATE/domains/<domain>/rules.yaml and pack.json,
the file the gateway serving that domain loads (and reloads when it changes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edrules.domains import normalize_domain
from edrules.errors import EdrulesError, Location
from edrules.rules.model import Policy

ENV_STATE = "EDRULES_STATE"
CONFIG_NAME = "support.yaml"


@dataclass(frozen=True, slots=True)
class DomainConfig:
    domain: str
    dataset: str | None = None
    trusted_authserv: tuple[str, ...] = ()
    trusted_relays: tuple[str, ...] = ()
    secure_release: bool = False
    zone: Path | None = None
    dkim_selectors: tuple[str, ...] = ()
    gateway_relays: tuple[str, ...] = ()
    gateway_mx: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Site:
    state_dir: Path
    dataset_db: Path | None = None
    signing_key: Path | None = None
    pubkey: Path | None = None
    next_hop: tuple[str, int] = ("127.0.0.1", 25)
    domains: dict[str, DomainConfig] = field(default_factory=dict)

    # -- per-domain files -------------------------------------------------------------------

    def domain_dir(self, domain: str) -> Path:
        d = normalize_domain(domain)
        if not d or "/" in d or d.startswith("."):
            raise EdrulesError(f"not a domain name: {domain!r}", Location(field="domain"))
        return self.state_dir / "domains" / d

    def rules_path(self, domain: str) -> Path:
        return self.domain_dir(domain) / "rules.yaml"

    def pack_path(self, domain: str) -> Path:
        return self.domain_dir(domain) / "pack.json"

    def config(self, domain: str) -> DomainConfig:
        d = normalize_domain(domain) or domain
        return self.domains.get(d) or DomainConfig(d)

    def current_policy(self, domain: str) -> Policy:
        """The policy the gateway enforces for `domain`: its signed pack (verified with the
        gateway's key), else the default (strict, no entries)."""
        pack = self.pack_path(domain)
        if not pack.exists():
            return Policy(name=f"{self.config(domain).domain}-default")
        from edrules.pack import load_pack

        return load_pack(pack, pubkey_path=self.pubkey, allow_unsigned=self.pubkey is None).policy

    # -- the gateway runtime's objects (h-store), one place to build them --------------------

    def store(self):
        from edrules.runtime.store import SqliteQuarantineStore

        return SqliteQuarantineStore(self.state_dir)

    def overrides(self):
        from edrules.runtime.overrides import Overrides

        return Overrides(self.state_dir)

    def release_key(self) -> bytes:
        from edrules.runtime.release import release_key

        return release_key(self.state_dir)


def _tuple(value: Any, where: Location) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EdrulesError("must be a list of strings", where)
    return tuple(value)


def _path(value: Any, base: Path) -> Path | None:
    if value in (None, ""):
        return None
    p = Path(str(value))
    return p if p.is_absolute() else base / p


def load_site(state_dir: str | Path | None = None) -> Site:
    """The site of `state_dir` (default $EDRULES_STATE): its support.yaml, or an empty site."""
    if state_dir is None:
        if not os.environ.get(ENV_STATE):
            raise EdrulesError("no state directory: set EDRULES_STATE or pass --state")
        state_dir = os.environ[ENV_STATE]
    state = Path(state_dir)
    cfg = state / CONFIG_NAME
    if not cfg.exists():
        return Site(state)
    try:
        doc = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise EdrulesError(f"not valid YAML: {getattr(exc, 'problem', exc)}",
                           Location(str(cfg), None if line is None else line + 1)) from None
    if not isinstance(doc, dict):
        raise EdrulesError("must be a mapping", Location(str(cfg)))
    hop = str(doc.get("next_hop") or "127.0.0.1:25")
    host, _, port = hop.rpartition(":")
    if not host or not port.isdigit():
        raise EdrulesError(f"next_hop must be HOST:PORT (got {hop!r})", Location(str(cfg), field="next_hop"))
    domains: dict[str, DomainConfig] = {}
    raw_domains = doc.get("domains") or {}
    if not isinstance(raw_domains, dict):
        raise EdrulesError("must be a mapping of domain -> settings", Location(str(cfg), field="domains"))
    for name, d in raw_domains.items():
        where = Location(str(cfg), field=f"domains.{name}")
        d = d or {}
        if not isinstance(d, dict):
            raise EdrulesError("must be a mapping", where)
        dom = normalize_domain(str(name))
        if not dom:
            raise EdrulesError(f"not a domain name: {name!r}", where)
        domains[dom] = DomainConfig(
            domain=dom, dataset=d.get("dataset"),
            trusted_authserv=_tuple(d.get("trusted_authserv"), where),
            trusted_relays=_tuple(d.get("trusted_relays"), where),
            secure_release=bool(d.get("secure_release", False)),
            zone=_path(d.get("zone"), state),
            dkim_selectors=_tuple(d.get("dkim_selectors"), where),
            gateway_relays=_tuple(d.get("gateway_relays"), where),
            gateway_mx=_tuple(d.get("gateway_mx"), where),
        )
    return Site(state, dataset_db=_path(doc.get("dataset_db"), state), signing_key=_path(doc.get("signing_key"), state),
                pubkey=_path(doc.get("pubkey"), state), next_hop=(host, int(port)), domains=domains)


def write_site_config(state_dir: str | Path, doc: dict[str, Any]) -> Path:
    """Write STATE/support.yaml (the demo and the tests describe their site this way)."""
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    path = state / CONFIG_NAME
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path
