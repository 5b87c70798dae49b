"""Default Security Policy wizard: load a domain's settings, measure a change on its history, apply it as a signed pack.

The proposed policy is the domain's current rules with the wizard's settings written over
them, as rules-file text run through the same parser analysts use (so every limit and
message of docs/rules.md applies). The what-if is the workbench's `whatif` over the domain's
dataset: the page shows exactly the numbers an analyst gets for the same change.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from edrules.catalog import load_catalog
from edrules.errors import EdrulesError, Location
from edrules.facts import Action
from edrules.rules.model import DEFAULT_ACTIONS, BulkPolicy, FromPolicy, Policy
from edrules.rules.parse import parse_rules

if TYPE_CHECKING:
    from edrules.support.site import Site
    from edrules.workbench import WhatIf, Workbench

REPORT_FREQUENCIES = ("off", "daily", "weekly")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
SETTINGS_NAME = "settings.yaml"  # non-pack settings of a domain (report schedule, wizard state)
STEPS = ("category actions", "retention", "report schedule", "From-policy", "bulk mailers",
         "inbound relays", "DNS check", "review and apply")


@dataclass(frozen=True, slots=True)
class ReportSchedule:
    """When users get their quarantine digest."""

    frequency: str = "daily"
    hour: int = 8
    weekday: str = "monday"  # used when weekly

    def validate(self) -> None:
        if self.frequency not in REPORT_FREQUENCIES:
            raise EdrulesError(f"must be one of {', '.join(REPORT_FREQUENCIES)} (got {self.frequency!r})",
                               Location("wizard", field="report.frequency"))
        if not 0 <= int(self.hour) <= 23:
            raise EdrulesError(f"must be an hour 0..23 (got {self.hour})", Location("wizard", field="report.hour"))
        if self.weekday not in WEEKDAYS:
            raise EdrulesError(f"must be a weekday (got {self.weekday!r})", Location("wizard", field="report.weekday"))


@dataclass(frozen=True, slots=True)
class WizardSettings:
    """Everything the wizard edits; the allow/block entries of the domain are kept as they are."""

    actions: dict[str, str]
    retention_days: dict[str, int]
    report: ReportSchedule
    from_policy: str
    bulk_mailers: dict[str, str]  # provider -> scan | allow | block (scan may be listed)
    inbound_relays: tuple[str, ...] = ()
    inbound_enforce: bool = False
    configured: bool = False  # has the wizard been applied for this domain before?

    def with_(self, **changes: Any) -> "WizardSettings":
        from dataclasses import replace

        return replace(self, **changes)


def settings_path(site: "Site", domain: str) -> Path:
    return site.domain_dir(domain) / SETTINGS_NAME


def _read_settings_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise EdrulesError(f"not valid YAML: {exc}", Location(str(path))) from None
    if not isinstance(doc, dict):
        raise EdrulesError("must be a mapping", Location(str(path)))
    return doc


def settings_from_policy(policy: Policy, extra: dict[str, Any] | None = None) -> WizardSettings:
    extra = extra or {}
    rep = extra.get("report") or {}
    providers = sorted(load_catalog().providers)
    return WizardSettings(
        actions={k: str(v) for k, v in policy.actions.items()},
        retention_days=dict(policy.retention_days),
        report=ReportSchedule(frequency=str(rep.get("frequency", "daily")), hour=int(rep.get("hour", 8)),
                              weekday=str(rep.get("weekday", "monday"))),
        from_policy=policy.from_policy.value,
        bulk_mailers={p: str(policy.bulk_mailers.get(p, BulkPolicy.SCAN)) for p in providers},
        inbound_relays=tuple(policy.inbound_relays),
        inbound_enforce=policy.inbound_enforce,
        configured=bool(extra.get("configured", False)),
    )


def load_settings(site: "Site", domain: str) -> WizardSettings:
    """The domain's current settings: its pack, plus the report schedule kept beside it."""
    return settings_from_policy(site.current_policy(domain), _read_settings_file(settings_path(site, domain)))


def needs_wizard(site: "Site", domain: str) -> bool:
    """True until the wizard has been applied once for the domain (shown at an admin's first login)."""
    return not bool(_read_settings_file(settings_path(site, domain)).get("configured"))


def _relays(values: tuple[str, ...]) -> list[str]:
    out = []
    for i, v in enumerate(values):
        v = v.strip()
        if not v:
            continue
        try:
            out.append(str(ipaddress.ip_network(v, strict=False)))
        except ValueError:
            raise EdrulesError(f"not an IP address or CIDR: {v!r}", Location("wizard", field=f"inbound.relays[{i}]")) from None
    return out


def proposed_rules_text(current: Policy, s: WizardSettings, *, name: str | None = None) -> str:
    """Rules-file text: the current rules with the wizard's settings written over them."""
    from edrules.workbench.packs import policy_to_rules_yaml

    s.report.validate()
    doc = yaml.safe_load(policy_to_rules_yaml(current)) or {}
    doc["name"] = name or current.name
    doc["from_policy"] = s.from_policy
    doc["actions"] = {k: v for k, v in s.actions.items()}
    doc["retention_days"] = {k: int(v) for k, v in s.retention_days.items()}
    bulk = {p: v for p, v in sorted(s.bulk_mailers.items()) if v != BulkPolicy.SCAN.value}
    if bulk:
        doc["bulk_mailers"] = bulk
    else:
        doc.pop("bulk_mailers", None)
    relays = _relays(s.inbound_relays)
    if relays or s.inbound_enforce:
        doc["inbound"] = {"relays": relays, "enforce": bool(s.inbound_enforce)}
    else:
        doc.pop("inbound", None)
    # Keep the key order of a hand-written file so the diff a reviewer reads is small.
    order = ["name", "from_policy", "bulk_mailers", "actions", "retention_days", "inbound", "allow", "block"]
    doc = {k: doc[k] for k in order if k in doc} | {k: v for k, v in doc.items() if k not in order}
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)


def proposed_policy(current: Policy, s: WizardSettings, *, name: str | None = None) -> tuple[Policy, str]:
    """(policy, rules text); a bad setting raises the parser's located error."""
    text = proposed_rules_text(current, s, name=name)
    return parse_rules(text, source="wizard"), text


@dataclass(frozen=True, slots=True)
class WhatIfNumbers:
    """What the page shows before Apply: the change on the domain's history."""

    total: int
    changed: int
    newly_delivered: int
    newly_delivered_messages: int
    newly_delivered_forged: int
    newly_delivered_by_label: dict[str, int]
    newly_stopped: int
    diff: Any = field(default=None, repr=False, compare=False)  # the workbench WhatIf

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "changed": self.changed, "newly_delivered": self.newly_delivered,
                "newly_delivered_messages": self.newly_delivered_messages,
                "newly_delivered_forged": self.newly_delivered_forged,
                "newly_delivered_by_label": dict(self.newly_delivered_by_label),
                "newly_stopped": self.newly_stopped}


def whatif_numbers(wb: "Workbench", current: Policy, proposed: Policy) -> WhatIfNumbers:
    """The workbench's what-if, unchanged: the page and an analyst's notebook agree by construction."""
    diff: WhatIf = wb.whatif(current, proposed)
    c = diff.counts()
    return WhatIfNumbers(total=c["total"], changed=c["changed"], newly_delivered=c["newly_delivered"],
                         newly_delivered_messages=c["newly_delivered_messages"],
                         newly_delivered_forged=c["newly_delivered_forged"],
                         newly_delivered_by_label=c["newly_delivered_by_label"],
                         newly_stopped=c["newly_stopped"], diff=diff)


def dns_report(site: "Site", domain: str):
    """dns-check for the domain with its configured selectors and relays (zone file offline)."""
    from edrules.auth.dnscheck import check_domain

    cfg = site.config(domain)
    if cfg.zone is not None:
        from edrules.auth.resolver import ZoneResolver

        resolver = ZoneResolver.from_file(cfg.zone)
    else:
        from edrules.auth.resolver import DnsPythonResolver

        resolver = DnsPythonResolver()
    relays = cfg.gateway_relays
    return check_domain(cfg.domain, resolver, gateway_mx=cfg.gateway_mx, gateway_relays=relays,
                        dkim_selectors=cfg.dkim_selectors)


@dataclass(frozen=True, slots=True)
class Applied:
    domain: str
    rules_path: Path
    pack_path: Path
    pack_name: str
    signed_by: str | None
    numbers: dict[str, Any]


def _atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename: a gateway reloading the pack never
    sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def apply_settings(site: "Site", domain: str, s: WizardSettings, *, actor: str,
                   numbers: WhatIfNumbers | None = None, audit=None, store=None) -> Applied:
    """Write the domain's rules, compile and sign its pack where the gateway loads it, keep
    the report schedule, and audit who did it. `audit(actor, action, how, detail)` defaults
    to the gateway store's audit log."""
    from edrules.pack import build_pack, canonical_json, load_pack

    if site.signing_key is None or not site.signing_key.exists():
        raise EdrulesError("this site has no signing key: set signing_key in support.yaml",
                           Location(str(site.state_dir / "support.yaml"), field="signing_key"))
    current = site.current_policy(domain)
    name = current.name if not current.name.endswith("-default") else f"{site.config(domain).domain}"
    policy, text = proposed_policy(current, s, name=name)
    rules_path, pack_path = site.rules_path(domain), site.pack_path(domain)
    meta: dict[str, Any] = {"applied_by": actor, "applied_via": "wizard",
                            "applied_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if numbers is not None:
        meta["whatif"] = {"against": current.name, "counts": numbers.as_dict()}
    pack = build_pack(policy, source_bytes=text.encode("utf-8"), private_key_path=site.signing_key, metadata=meta)
    _atomic_write(rules_path, text.encode("utf-8"))
    _atomic_write(pack_path, canonical_json(pack) + b"\n")  # the bytes write_pack writes, atomically
    loaded = load_pack(pack_path, pubkey_path=site.pubkey) if site.pubkey else load_pack(pack_path)
    extra = _read_settings_file(settings_path(site, domain))
    extra.update(configured=True, report={"frequency": s.report.frequency, "hour": int(s.report.hour),
                                          "weekday": s.report.weekday})
    _atomic_write(settings_path(site, domain), yaml.safe_dump(extra, sort_keys=False).encode())
    detail = json.dumps({"domain": site.config(domain).domain, "pack": loaded.name,
                         "from_policy": policy.from_policy.value,
                         "whatif": numbers.as_dict() if numbers else None}, sort_keys=True)
    if store is None and audit is None:
        store = site.store()
    if store is not None and hasattr(store, "set_schedule"):
        store.set_schedule(site.config(domain).domain, s.report.frequency)  # what the digest sender reads
    (audit or store.audit)(actor, "policy.apply", "wizard", detail=detail)
    return Applied(site.config(domain).domain, rules_path, pack_path, loaded.name, loaded.signed_by,
                   numbers.as_dict() if numbers else {})


def action_choices(category: str) -> list[str]:
    """The actions the rules file accepts for a category (malware is never delivered)."""
    if category == "malware":
        return [Action.QUARANTINE.value, Action.REJECT.value]
    return [a.value for a in Action]


CATEGORIES = tuple(DEFAULT_ACTIONS)
FROM_POLICIES = tuple(m.value for m in FromPolicy)
BULK_POLICIES = tuple(b.value for b in BulkPolicy)
