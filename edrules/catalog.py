"""Bulk-mail provider catalog: which sending network (SES, SendGrid, ...) carried a message."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache, partial
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from edrules.domains import is_ip_literal, normalize_domain
from edrules.errors import EdrulesError, Location

_LIST_KEYS = ("envelope_suffixes", "dkim_domains", "helo_suffixes", "aliases")


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    display: str
    envelope_suffixes: tuple[str, ...]
    dkim_domains: tuple[str, ...]
    helo_suffixes: tuple[str, ...]
    aliases: tuple[str, ...]


def _suffix_index(providers: Iterable[Provider], attr: str) -> dict[str, str]:
    index: dict[str, str] = {}
    for p in providers:
        for suffix in getattr(p, attr):
            index[suffix] = p.name
    return index


def _match(index: Mapping[str, str], domain: str | None) -> str | None:
    """Provider whose suffix equals the domain or one of its parents (label-wise, longest first)."""
    d = normalize_domain(domain)
    if not d:
        return None
    # Host names end in a letter (TLDs are alphabetic); only then skip the costly IP check.
    if (d[-1].isdigit() or ":" in d) and is_ip_literal(d):
        return None
    while True:
        hit = index.get(d)
        if hit is not None:
            return hit
        _, dot, d = d.partition(".")
        if not dot or not d:
            return None


class Catalog:
    """Providers keyed by canonical name, with suffix indices for fast identification."""

    __slots__ = ("version", "providers", "_names", "_envelope", "_dkim", "_helo", "_domain", "_cache")

    def __init__(self, version: str, providers: Mapping[str, Provider]):
        self.version = version
        self.providers: dict[str, Provider] = dict(providers)
        self._names: dict[str, str] = {}
        for p in self.providers.values():
            self._names[p.name.lower()] = p.name
            for alias in p.aliases:
                self._names[alias.lower()] = p.name
        self._envelope = _suffix_index(self.providers.values(), "envelope_suffixes")
        self._dkim = _suffix_index(self.providers.values(), "dkim_domains")
        self._helo = _suffix_index(self.providers.values(), "helo_suffixes")
        self._domain = {**self._dkim, **self._envelope}
        # Ingest asks about the same few thousand domains again and again.
        self._cache = {
            name: lru_cache(maxsize=65536)(partial(_match, index))
            for name, index in (("envelope", self._envelope), ("dkim", self._dkim), ("helo", self._helo),
                                ("domain", self._domain))
        }

    def resolve_name(self, name: str) -> str | None:
        """Canonical provider name from a name or alias (case-insensitive), else None."""
        return self._names.get(name.strip().lower()) if name else None

    def suggest(self, name: str) -> list[str]:
        """'Did you mean' candidates: canonical names whose name or alias is close."""
        close = difflib.get_close_matches((name or "").strip().lower(), list(self._names), n=5, cutoff=0.6)
        out: list[str] = []
        for c in close:
            canonical = self._names[c]
            if canonical not in out:
                out.append(canonical)
        return out

    def identify(
        self,
        envelope_domain: str | None,
        dkim_domains: Iterable[str],
        helo: str | None,
        ptr: str | None = None,
    ) -> str | None:
        """Sending network, checked in order: envelope domain, DKIM d= (in the order given),
        HELO name, PTR name. The caller decides which DKIM results count (ingest: pass only)."""
        c = self._cache
        hit = c["envelope"](envelope_domain)
        if hit:
            return hit
        for d in dkim_domains:
            hit = c["dkim"](d)
            if hit:
                return hit
        return c["helo"](helo) or c["helo"](ptr)

    def provider_of_domain(self, domain: str | None) -> str | None:
        """Provider owning a domain: equal to or under any of its envelope or DKIM suffixes."""
        return self._cache["domain"](domain)

    @classmethod
    def from_mapping(cls, data: Any, source: str = "<catalog>") -> "Catalog":
        if not isinstance(data, dict) or not isinstance(data.get("providers"), dict):
            raise EdrulesError("catalog must be a mapping with a 'providers' mapping", Location(source))
        providers: dict[str, Provider] = {}
        for name, spec in data["providers"].items():
            where = Location(source, field=f"providers.{name}")
            if not isinstance(spec, dict):
                raise EdrulesError("provider entry must be a mapping", where)
            lists: dict[str, tuple[str, ...]] = {}
            for key in _LIST_KEYS:
                raw = spec.get(key) or []
                if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                    raise EdrulesError(f"'{key}' must be a list of strings", where)
                norm = [x.strip().lower() if key == "aliases" else normalize_domain(x) for x in raw]
                lists[key] = tuple(x for x in norm if x)
            canonical = str(name).strip().lower()
            providers[canonical] = Provider(
                name=canonical, display=str(spec.get("display") or name), **lists
            )
        return cls(str(data.get("version", "")), providers)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Catalog":
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise EdrulesError(f"cannot read catalog: {exc.strerror}", Location(str(p))) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            raise EdrulesError(f"invalid YAML: {getattr(exc, 'problem', exc)}", Location(str(p), line)) from None
        return cls.from_mapping(data, str(p))


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    """The bundled catalog (edrules/data/providers.yaml), parsed once per process."""
    ref = resources.files("edrules").joinpath("data/providers.yaml")
    with resources.as_file(ref) as path:
        return Catalog.from_yaml(path)
