"""Local overrides: "trust this sender" decisions users and support make on the gateway.

Kept in STATE/overrides.yaml as an ordinary rules file (edrules.rules.parse reads it), so the
analysts can take them into the real policy with `edrules overrides export`. Each entry is the
narrowest safe user-scope allow: a *pair* of the header From and the authenticated network it
came through (provider, then SPF-passing envelope domain, then DKIM-passing d=, then the client
IP the gateway itself saw), never a bare From, which anyone can write.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import yaml

from edrules.catalog import Catalog, load_catalog
from edrules.errors import EdrulesError, Location
from edrules.rules.model import Entry, Policy
from edrules.rules.parse import parse_rules
from edrules.runtime.store import QuarantineItem

OVERRIDES_FILE = "overrides.yaml"
_ID_PREFIX = "override:"


@dataclass(frozen=True, slots=True)
class TrustChoice:
    """What trust() wrote, and why that `via` was the narrowest safe one."""

    entry_id: str
    sender: str
    via: str
    scope: str
    why: str
    created: bool  # False when the same entry was already there


def _under(domain: str | None, suffixes: tuple[str, ...]) -> bool:
    return bool(domain) and any(domain == s or domain.endswith("." + s) for s in suffixes)


def choose_via(item: QuarantineItem, catalog: Catalog) -> tuple[str, str]:
    """(via value, why) for trusting `item`'s sender; EdrulesError when nothing authenticated."""
    auth = dict(item.auth or {})
    if auth.get("dmarc") == "fail" and auth.get("dmarc_policy") in ("quarantine", "reject"):
        # Pairs never match such a From (docs/rules.md): an entry would change nothing.
        raise EdrulesError(f"cannot trust the sender of {item.id}: the From domain's DMARC policy "
                           f"(p={auth['dmarc_policy']}) disowns this message, so no allow entry may let it through")
    spf_pass = auth.get("spf") == "pass"
    env_domain = auth.get("envelope_from_domain") or (
        item.envelope_from.rpartition("@")[2].lower() if item.envelope_from and "@" in item.envelope_from else None)
    # For the null sender SPF is checked on the HELO name (docs/rules.md): same here.
    spf_domain = env_domain or (item.helo.lower() if item.helo and not item.envelope_from else None)
    dkim_pass = [d for d in auth.get("dkim_pass") or () if d]
    provider = auth.get("bulk_provider")
    if provider and provider in catalog.providers:
        p = catalog.providers[provider]
        if spf_pass and _under(spf_domain, p.envelope_suffixes):
            return provider, f"SPF passed for {spf_domain}, a {provider} envelope domain"
        hit = next((d for d in dkim_pass if _under(d, p.dkim_domains)), None)
        if hit:
            return provider, f"DKIM passed for d={hit}, a {provider} signing domain"
    if spf_pass and env_domain:
        return env_domain, f"SPF passed for the envelope domain {env_domain}"
    if dkim_pass:
        hfd = (item.header_from or "").rpartition("@")[2]
        # Prefer the signature aligned with the From: it is the one the brand controls.
        d = next((d for d in dkim_pass if d == hfd or hfd.endswith("." + d) or d.endswith("." + hfd)), dkim_pass[0])
        return d, f"DKIM passed for d={d}"
    if item.client_ip:
        try:
            ip = ipaddress.ip_address(item.client_ip)
        except ValueError:
            ip = None
        if ip is not None:
            if ip.version == 6 and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            net = ipaddress.ip_network(f"{ip}/{32 if ip.version == 4 else 128}")
            return str(net), f"no authenticated domain; the gateway itself received it from {ip}"
    raise EdrulesError(f"cannot trust the sender of {item.id}: no authenticated network (no SPF or DKIM pass, "
                       "no client IP), and a bare From can be forged by anyone")


class Overrides:
    """STATE/overrides.yaml: read, add trust entries, merge into the policy the gateway runs."""

    def __init__(self, state_dir: str | Path, *, catalog: Catalog | None = None):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / OVERRIDES_FILE
        self._catalog = catalog

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = load_catalog()
        return self._catalog

    # -- file --------------------------------------------------------------------------

    def _document(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"name": "local-overrides", "allow": []}
        self.policy(text)  # a hand-broken file is reported with its line, never silently ignored
        doc = yaml.safe_load(text) or {}
        doc.setdefault("allow", [])
        return doc

    def policy(self, text: str | None = None) -> Policy:
        """The overrides file as a Policy (only its allow entries matter)."""
        if text is None:
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                text = "name: local-overrides\nallow: []\n"
        return parse_rules(text, source=str(self.path), catalog=self.catalog)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".overrides.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # trust from the CLI and from pages at once
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, doc: dict[str, Any]) -> None:
        text = "# edrules local overrides (trust decisions); rules YAML: edrules overrides export\n"
        text += yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        self.policy(text)  # never write what the parser would refuse
        tmp = self.path.with_name(f".{OVERRIDES_FILE}.{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.state_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- API ---------------------------------------------------------------------------

    def trust(self, item: QuarantineItem, actor: str, *, now: datetime | None = None) -> TrustChoice:
        sender = (item.header_from or "").strip().lower()
        if not sender or "@" not in sender:
            raise EdrulesError(f"cannot trust the sender of {item.id}: the message has no usable From address")
        via, why = choose_via(item, self.catalog)
        scope = f"user:{item.recipient}"
        when = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
        with self._locked():
            doc = self._document()
            for e in doc["allow"]:
                if e.get("sender") == sender and e.get("via") == via and e.get("scope") == scope:
                    return TrustChoice(e["id"], sender, via, scope, why, created=False)
            taken = {e.get("id") for e in doc["allow"]}
            entry_id = f"trust-{item.id}"
            n = 2
            while entry_id in taken:
                entry_id, n = f"trust-{item.id}-{n}", n + 1
            doc["allow"].append({"id": entry_id, "sender": sender, "via": via, "scope": scope,
                                 "comment": f"trusted by {actor} on {when} from {item.id}: {why}"})
            self._write(doc)
        return TrustChoice(entry_id, sender, via, scope, why, created=True)

    def entries(self) -> tuple[Entry, ...]:
        return self.policy().allow

    def remove(self, entry_id: str) -> bool:
        with self._locked():
            doc = self._document()
            kept = [e for e in doc["allow"] if e.get("id") != entry_id]
            if len(kept) == len(doc["allow"]):
                return False
            doc["allow"] = kept
            self._write(doc)
        return True

    def export_yaml(self) -> str:
        """The overrides as a rules YAML document an analyst can merge into a rules file."""
        doc = self._document()
        return yaml.safe_dump({"name": doc.get("name", "local-overrides"), "allow": doc["allow"]},
                              sort_keys=False, allow_unicode=True)

    def merged(self, policy: Policy) -> Policy:
        """`policy` plus the override allow entries (after the pack's own, so the analysts'
        entries keep deciding rule ids; block entries still beat every allow)."""
        own = self.policy()
        if not own.allow:
            return policy
        allow = tuple(replace(e, id=_ID_PREFIX + e.id) for e in own.allow)
        return replace(policy, allow=policy.allow + allow, providers={**own.providers, **policy.providers})


def overrides_location(state_dir: str | Path) -> Location:
    return Location(str(Path(state_dir) / OVERRIDES_FILE))


def trust_item(store, overrides: Overrides, item_id: str, actor: str, how: str) -> TrustChoice:
    """Trust the sender of one stored item and audit it (CLI, pages and links all come here)."""
    item = store.get(item_id)
    if item is None:
        raise EdrulesError(f"no quarantined item {item_id!r}")
    choice = overrides.trust(item, actor)
    store.audit(actor, "trust", how, item_id,
                f"{choice.entry_id}: {choice.sender} via {choice.via} for {choice.scope}"
                + ("" if choice.created else " (already trusted)"))
    return choice
