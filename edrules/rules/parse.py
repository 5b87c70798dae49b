"""Rules YAML -> typed Policy, collecting every error with its file, line and field."""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import sys
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from edrules.catalog import Catalog, load_catalog
from edrules.domains import is_ip_literal, normalize_address, normalize_domain
from edrules.errors import EdrulesError, Location
from edrules.facts import Action
from edrules.rules.model import (
    DEFAULT_ACTIONS,
    DEFAULT_RETENTION_DAYS,
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

PathKey = tuple[str | int, ...]
_ENTRY_KINDS = ("sender", "domain", "ip")
# After IDNA: LDH labels (underscore allowed, it occurs in real sending domains), at least one dot.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})+$")


class RulesError(EdrulesError):
    """Every problem found in one rules file; `errors` holds each located EdrulesError."""

    def __init__(self, errors: list[EdrulesError]):
        self.errors = tuple(errors)
        first = errors[0]
        super().__init__(first.message, first.location)

    def __str__(self) -> str:
        if len(self.errors) == 1:
            return str(self.errors[0])
        lines = [f"{len(self.errors)} errors in rules:"]
        lines += [f"  {e.location}: {e.message}" for e in self.errors]
        return "\n".join(lines)


def _jsonschema():
    """Import jsonschema without its optional RFC 3987 (IRI) format support: that module builds
    a grammar at import and costs ~3 s per CLI run, and the rules schema uses no IRI formats.
    The block is lifted right after, so other code in the process can still import it."""
    if "jsonschema" in sys.modules:
        return sys.modules["jsonschema"]
    blocked = "rfc3987_syntax" not in sys.modules
    if blocked:
        sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]
    try:
        import jsonschema
    finally:
        if blocked and sys.modules.get("rfc3987_syntax", 0) is None:
            del sys.modules["rfc3987_syntax"]
    return jsonschema


@lru_cache(maxsize=1)
def rules_schema() -> dict[str, Any]:
    """The JSON Schema of the rules format (edrules/rules/schema.json)."""
    return json.loads(resources.files("edrules.rules").joinpath("schema.json").read_text("utf-8"))


def _entry_schema() -> dict[str, Any]:
    """The schema of one allow/block entry, standalone (with the shared $defs)."""
    schema = rules_schema()
    return {**schema["$defs"]["entry"], "$defs": schema["$defs"]}


def _jsonschema_validator(schema: dict[str, Any]) -> Any:
    return _jsonschema().Draft202012Validator(schema)


@lru_cache(maxsize=1)
def _fast_validators() -> tuple[Any, Any, type[Exception]] | None:
    """(whole document, one entry, its exception) compiled by fastjsonschema; None without it
    (then jsonschema alone validates, only slower)."""
    try:
        import fastjsonschema
    except ImportError:
        return None
    return (fastjsonschema.compile(rules_schema()), fastjsonschema.compile(_entry_schema()),
            fastjsonschema.JsonSchemaException)


def parse_rules(text: str, *, source: str = "<rules>", catalog: Catalog | None = None) -> Policy:
    """Parse and validate a rules document; raises RulesError listing every problem."""
    policy, errors = _Parser(source, catalog or load_catalog()).run(text)
    if errors:
        raise RulesError(errors)
    assert policy is not None
    return policy


def parse_rules_file(path: str | Path, *, catalog: Catalog | None = None) -> Policy:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise EdrulesError(f"cannot read rules file: {exc.strerror}", Location(str(p))) from None
    except UnicodeDecodeError:
        raise EdrulesError("rules file is not UTF-8", Location(str(p))) from None
    return parse_rules(text, source=str(p), catalog=catalog)


def check_rules(text: str, *, source: str = "<rules>", catalog: Catalog | None = None) -> list[EdrulesError]:
    """All problems in a rules document (empty when it compiles): what a linter shows."""
    return _Parser(source, catalog or load_catalog()).run(text)[1]


def _field(path: PathKey) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# libyaml when present: the pure-Python composer needs ~1 s per 1,000 entries.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR_TAG = "tag:yaml.org,2002:str"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_ALIASES = "YAML anchors and aliases are not supported in rules files"


@dataclass(frozen=True, slots=True)
class _Loaded:
    data: Any
    lines: dict[PathKey, int]  # 1-based line of each path's key (mappings) or item (sequences)


def _load_located(text: str) -> _Loaded:
    """YAML -> plain data plus a line for every path, from the composed node marks.

    Duplicate mapping keys raise (PyYAML would silently keep the last one, hiding an entry).
    Aliases raise too: they let a small document expand without bound ("billion laughs") or
    refer to itself, and rules files have no need for them. The composer shares the aliased
    node, so a node met twice is an alias.
    """
    node = yaml.compose(text, Loader=_YAML_LOADER)
    lines: dict[PathKey, int] = {(): 1}
    constructor = yaml.SafeLoader("")
    seen: set[int] = set()

    def walk(n: yaml.Node, path: PathKey) -> Any:
        if id(n) in seen:
            raise _Located(_ALIASES, _alias_line(text), _field(path) or None)
        seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            out: dict[str, Any] = {}
            for k, v in n.value:
                # Keys are taken as written: `yes:` stays "yes", `123:` stays "123".
                key = k.value if isinstance(k, yaml.ScalarNode) else "<complex key>"
                child = (*path, key)
                if key in out:
                    raise _Located(f"duplicate key '{key}'", k.start_mark.line + 1, _field(child))
                lines[child] = k.start_mark.line + 1
                out[key] = walk(v, child)
            return out
        if isinstance(n, yaml.SequenceNode):
            items = []
            for i, v in enumerate(n.value):
                lines[(*path, i)] = v.start_mark.line + 1
                items.append(walk(v, (*path, i)))
            return items
        if n.tag == _STR_TAG:
            return n.value
        try:
            value = constructor.construct_object(n, deep=True)
        except (ValueError, OverflowError):
            # An unquoted scalar shaped like a date but no date (`2026-13-01`): keep the text,
            # so the field's own check reports it, located, next to the file's other errors.
            if n.tag != _TIMESTAMP_TAG:
                raise
            value = n.value
        finally:
            constructor.constructed_objects.clear()
        return value

    if node is None:
        return _Loaded({}, lines)
    return _Loaded(walk(node, ()), lines)


def _alias_line(text: str) -> int | None:
    """Line of the first alias (`*name`); only looked up on the error path."""
    for token in yaml.scan(text, Loader=_YAML_LOADER):
        if isinstance(token, yaml.AliasToken):
            return token.start_mark.line + 1
    return None


class _Located(Exception):
    def __init__(self, message: str, line: int | None, field: str | None = None):
        super().__init__(message)
        self.message, self.line, self.field = message, line, field


def _jsonable(x: Any) -> Any:
    """YAML dates -> ISO strings so the schema sees what a JSON rules document would carry."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    if isinstance(x, (date, datetime)):
        return x.isoformat()
    return x


class _Parser:
    def __init__(self, source: str, catalog: Catalog):
        self.source = source
        self.catalog = catalog
        self.errors: list[EdrulesError] = []
        self.lines: dict[PathKey, int] = {}
        self.bad_paths: set[PathKey] = set()  # reported by the schema; skip semantic checks

    # -- error helpers -----------------------------------------------------------------

    def _line(self, path: PathKey) -> int | None:
        p = tuple(path)
        while p not in self.lines and p:
            p = p[:-1]
        return self.lines.get(p)

    def error(self, path: PathKey, message: str) -> None:
        self.errors.append(EdrulesError(message, Location(self.source, self._line(path), _field(path) or None)))

    # -- driver ------------------------------------------------------------------------

    def run(self, text: str) -> tuple[Policy | None, list[EdrulesError]]:
        try:
            loaded = _load_located(text)
        except _Located as exc:
            return None, [EdrulesError(exc.message, Location(self.source, exc.line, exc.field))]
        except RecursionError:
            return None, [EdrulesError("YAML nesting is too deep", Location(self.source))]
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            problem = getattr(exc, "problem", None) or str(exc)
            return None, [EdrulesError(f"invalid YAML: {problem}", Location(self.source, line))]
        self.lines = loaded.lines
        data = loaded.data
        if not isinstance(data, dict):
            self.error((), "a rules file must be a mapping of keys such as name, from_policy, allow, block")
            return None, self.errors
        self._schema(data)
        policy = self._build(data)
        self.errors.sort(key=lambda e: (e.location.line or 0) if e.location else 0)
        return (None if self.errors else policy), self.errors

    # -- JSON Schema -------------------------------------------------------------------

    def _schema(self, data: dict[str, Any]) -> None:
        """Report every schema violation. jsonschema collects all errors but needs ~6 s per
        10,000 entries, so a compiled validator (fastjsonschema) checks first; only the parts
        it rejects (the top level, and each rejected entry) go through jsonschema for messages.
        tests/test_rules_parse.py holds the two validators to the same verdicts."""
        doc = _jsonable(data)
        fast = _fast_validators()
        if fast is None:
            self._report(_jsonschema_validator(rules_schema()).iter_errors(doc), ())
            return
        whole, entry, invalid = fast
        try:
            whole(doc)
            return
        except invalid:
            pass
        trimmed = dict(doc)
        rejected: list[tuple[str, int, Any]] = []
        for lst in ("allow", "block"):
            items = doc.get(lst)
            if isinstance(items, list):
                for i, item in enumerate(items):
                    try:
                        entry(item)
                    except invalid:
                        rejected.append((lst, i, item))
                trimmed[lst] = []
        self._report(_jsonschema_validator(rules_schema()).iter_errors(trimmed), ())
        entry_validator = _jsonschema_validator(_entry_schema())
        for lst, i, item in rejected:
            self._report(entry_validator.iter_errors(item), (lst, i))

    def _report(self, errors: Iterable[Any], prefix: PathKey) -> None:
        for err in sorted(errors, key=lambda e: list(map(str, e.absolute_path))):
            path: PathKey = (*prefix, *err.absolute_path)
            message = self._schema_message(err, path)
            if message is None:
                continue
            if err.validator == "additionalProperties":
                known = list(err.schema.get("properties") or {})
                for key in (k for k in err.instance if k not in known):
                    self.bad_paths.add((*path, key))
                    self.error((*path, key), self._unknown_key(key, known))
                continue
            self.bad_paths.add(path)
            self.error(path, message)

    def _schema_message(self, err: Any, path: PathKey) -> str | None:
        v, inst = err.validator, err.instance
        if v == "additionalProperties":
            return ""
        if v == "enum":
            if path == ("actions", "malware"):
                return f"malware is never delivered: use quarantine or reject (got {inst!r})"
            choices = ", ".join(map(str, err.validator_value))
            return f"must be one of {choices} (got {inst!r})"
        if v == "type":
            return f"must be {_a(err.validator_value)} (got {_describe(inst)})"
        if v == "oneOf" and isinstance(inst, dict):
            present = [k for k in _ENTRY_KINDS if k in inst]
            if not present:
                return "an entry needs one of 'sender', 'domain' or 'ip'"
            return f"an entry has exactly one of sender, domain, ip; this one has {' and '.join(present)}: split it"
        if v == "pattern" and path and path[-1] == "id":
            return "id must start with a letter or digit and use only letters, digits, '_', '.', '-'"
        if v == "pattern" and path and path[-1] == "scope":
            return f"scope must be global, domain:<recipient domain> or user:<recipient address> (got {inst!r})"
        if v in ("minimum", "maximum"):
            return f"must be between 0 and 36500 (got {inst})"
        if v == "minLength":
            return "must not be empty"
        return err.message

    def _unknown_key(self, key: str, allowed: list[str]) -> str:
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(allowed)}"
        return f"unknown key '{key}'{hint}"

    # -- semantic checks and building --------------------------------------------------

    def _ok(self, path: PathKey) -> bool:
        """No schema error at this path or above it (prefix lookups: no scan over errors)."""
        bad = self.bad_paths
        return not bad or not any(path[:n] in bad for n in range(len(path) + 1))

    def _build(self, data: dict[str, Any]) -> Policy:
        name = data.get("name") if isinstance(data.get("name"), str) else None
        if not name:
            stem = Path(self.source).stem if not self.source.startswith("<") else "rules"
            name = stem or "rules"
        from_policy = FromPolicy.STRICT
        if self._ok(("from_policy",)) and "from_policy" in data:
            from_policy = FromPolicy(data["from_policy"])
        bulk = self._bulk(data.get("bulk_mailers"))
        actions = dict(DEFAULT_ACTIONS)
        if isinstance(data.get("actions"), dict):
            for k, v in data["actions"].items():
                if self._ok(("actions", k)) and k in actions:
                    actions[k] = Action(v)
        retention = dict(DEFAULT_RETENTION_DAYS)
        if isinstance(data.get("retention_days"), dict):
            for k, v in data["retention_days"].items():
                if self._ok(("retention_days", k)) and k in retention:
                    retention[k] = int(v)
        relays, enforce = self._inbound(data.get("inbound"))
        providers: dict[str, ProviderDef] = {}
        for pname, pol in bulk.items():
            if pol is not BulkPolicy.SCAN:  # scan is the default: nothing depends on its catalog entry
                providers[pname] = self._provider_def(pname)
        allow = self._entries(data.get("allow"), ListKind.ALLOW, providers)
        block = self._entries(data.get("block"), ListKind.BLOCK, providers)
        seen: dict[str, PathKey] = {}
        for lst, entries in (("allow", allow), ("block", block)):
            for i, e in entries:
                if e.id in seen:
                    self.error((lst, i, "id"), f"duplicate id '{e.id}' (first used at {_field(seen[e.id])})")
                else:
                    seen[e.id] = (lst, i)
        return Policy(
            name=name,
            from_policy=from_policy,
            bulk_mailers={k: v for k, v in bulk.items() if v is not BulkPolicy.SCAN},
            actions=actions,
            retention_days=retention,
            inbound_relays=relays,
            inbound_enforce=enforce,
            allow=tuple(e for _, e in allow),
            block=tuple(e for _, e in block),
            providers=dict(sorted(providers.items())),
        )

    def _provider_def(self, name: str) -> ProviderDef:
        p = self.catalog.providers[name]
        return ProviderDef(p.name, p.envelope_suffixes, p.dkim_domains)

    def _resolve_provider(self, path: PathKey, name: str) -> str | None:
        canonical = self.catalog.resolve_name(name)
        if canonical is None:
            close = self.catalog.suggest(name)
            hint = f"; did you mean {' or '.join(close)}?" if close else (
                f"; known providers: {', '.join(sorted(self.catalog.providers))}"
            )
            self.error(path, f"unknown provider '{name}'{hint}")
        return canonical

    def _bulk(self, raw: Any) -> dict[str, BulkPolicy]:
        out: dict[str, BulkPolicy] = {}
        if not isinstance(raw, dict):
            return out
        first: dict[str, str] = {}
        for name, pol in raw.items():
            path = ("bulk_mailers", name)
            canonical = self._resolve_provider(path, name)
            if canonical is None or not self._ok(path):
                continue
            if canonical in out:
                self.error(path, f"'{name}' and '{first[canonical]}' name the same provider {canonical}")
                continue
            first[canonical] = name
            out[canonical] = BulkPolicy(pol)
        return out

    def _inbound(self, raw: Any) -> tuple[tuple[str, ...], bool]:
        if not isinstance(raw, dict) or not self._ok(("inbound",)):
            return (), False
        relays: list[str] = []
        raw_relays = raw.get("relays") if self._ok(("inbound", "relays")) else None
        for i, r in enumerate(raw_relays if isinstance(raw_relays, list) else []):
            path = ("inbound", "relays", i)
            if self._ok(path) and isinstance(r, str):
                cidr = self._cidr(path, r)
                if cidr:
                    relays.append(cidr)
        enforce = raw.get("enforce") is True
        if enforce and not raw.get("relays"):
            self.error(("inbound", "enforce"), "inbound.enforce is true but inbound.relays is empty: every message would be rejected")
        return tuple(relays), enforce

    def _cidr(self, path: PathKey, text: str) -> str | None:
        """Network text of an address or CIDR; a single address becomes /32 or /128."""
        t = text.strip()
        try:
            net = ipaddress.ip_network(t, strict=True)
        except ValueError as exc:
            try:
                loose = ipaddress.ip_network(t, strict=False)
            except ValueError:
                self.error(path, f"not an IP address or CIDR: {text!r} ({exc})")
                return None
            self.error(path, f"{text!r} has host bits set; did you mean {loose}?")
            return None
        # Ingest writes IPv4-mapped IPv6 client addresses as IPv4; do the same for entries.
        if net.version == 6 and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
            net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        return str(net)

    def _domain(self, path: PathKey, text: str, what: str = "domain") -> str | None:
        t = text.strip()
        if t.startswith("*."):
            self.error(path, f"wildcards are not supported: write '{t[2:]}' with 'subdomains: true'")
            return None
        if "@" in t:
            self.error(path, f"{what} {text!r} looks like an address; use 'sender' for addresses")
            return None
        d = normalize_domain(t)
        if not d or is_ip_literal(d) or not _HOSTNAME.match(d):
            self.error(path, f"not a valid {what}: {text!r}")
            return None
        return d

    def _address(self, path: PathKey, text: str, what: str = "sender") -> str | None:
        a = normalize_address(text)
        local, _, domain = (a or "").rpartition("@")
        if not a or not local or not domain or not _HOSTNAME.match(domain):
            self.error(path, f"{what} must be a full address such as name@example.com (got {text!r})")
            return None
        return a

    def _entries(self, raw: Any, lst: ListKind, providers: dict[str, ProviderDef]) -> list[tuple[int, Entry]]:
        out: list[tuple[int, Entry]] = []
        if not isinstance(raw, list):
            return out
        for i, item in enumerate(raw):
            path: PathKey = (lst.value, i)
            if not isinstance(item, dict) or not self._ok(path):
                continue
            entry = self._entry(path, item, lst, i, providers)
            if entry is not None:
                out.append((i, entry))
        return out

    def _entry(self, path: PathKey, item: dict[str, Any], lst: ListKind, i: int,
               providers: dict[str, ProviderDef]) -> Entry | None:
        n_before = len(self.errors)
        kind = next(EntryKind(k) for k in _ENTRY_KINDS if k in item)
        if not self._ok((*path, kind.value)):
            return None
        raw_value = item[kind.value]
        value: str | None
        if kind is EntryKind.SENDER:
            value = self._address((*path, "sender"), raw_value)
        elif kind is EntryKind.DOMAIN:
            value = self._domain((*path, "domain"), raw_value)
        else:
            value = self._cidr((*path, "ip"), raw_value)
        subdomains = item.get("subdomains") is True
        if "subdomains" in item and kind is not EntryKind.DOMAIN:
            self.error((*path, "subdomains"), "'subdomains' applies only to domain entries")
        via = None
        if "via" in item and self._ok((*path, "via")):
            if kind is EntryKind.IP:
                self.error((*path, "via"), "ip entries cannot have 'via': the IP already is the infrastructure")
            else:
                via = self._via((*path, "via"), item["via"], providers)
        scope = Scope()
        if "scope" in item and self._ok((*path, "scope")):
            scope = self._scope((*path, "scope"), item["scope"])
        expires = None
        if "expires" in item and self._ok((*path, "expires")):
            expires = self._date((*path, "expires"), item["expires"])
        if item.get("id") == "default" and self._ok((*path, "id")):
            self.error((*path, "id"), "id 'default' is reserved for the verdict of the default step")
        if len(self.errors) > n_before or value is None or scope is None:
            return None
        return Entry(
            id=item.get("id") or f"{lst.value}[{i}]",
            list=lst,
            kind=kind,
            value=value,
            subdomains=subdomains,
            via=via,
            scope=scope,
            comment=item.get("comment"),
            expires=expires,
            line=self._line(path),
        )

    def _via(self, path: PathKey, text: str, providers: dict[str, ProviderDef]) -> Via | None:
        t = text.strip()
        if "/" in t or is_ip_literal(t):
            cidr = self._cidr(path, t)
            return Via(ViaKind.CIDR, cidr) if cidr else None
        if "." in t:
            d = self._domain(path, t, "via domain")
            return Via(ViaKind.DOMAIN, d) if d else None
        canonical = self._resolve_provider(path, t)
        if canonical is None:
            return None
        providers.setdefault(canonical, self._provider_def(canonical))
        return Via(ViaKind.PROVIDER, canonical)

    def _scope(self, path: PathKey, text: str) -> Scope | None:
        if text == "global":
            return Scope()
        kind, _, value = text.partition(":")
        if kind == "domain":
            d = self._domain(path, value, "scope domain")
            return Scope(ScopeKind.DOMAIN, d) if d else None
        a = self._address(path, value, "scope user")
        return Scope(ScopeKind.USER, a) if a else None

    def _date(self, path: PathKey, raw: Any) -> date | None:
        if isinstance(raw, datetime):
            self.error(path, "expires must be a date (YYYY-MM-DD), not a date and time")
            return None
        if isinstance(raw, date):
            return raw
        try:
            return date.fromisoformat(str(raw))
        except ValueError:
            self.error(path, f"expires must be a date (YYYY-MM-DD) (got {raw!r})")
            return None


def _a(types: Any) -> str:
    names = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
             "boolean": "true or false", "number": "a number"}
    if isinstance(types, list):
        return " or ".join(names.get(t, t) for t in types)
    return names.get(types, str(types))


def _describe(x: Any) -> str:
    if isinstance(x, dict):
        return "a mapping"
    if isinstance(x, list):
        return "a list"
    if x is None:
        return "nothing"
    return f"{type(x).__name__} {x!r}"
