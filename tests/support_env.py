"""The support pages' test site: the demo tenant's history, a state dir, each domain's signed pack.

Built once per test session (a directory under pytest's base temp) and copied per test where a
test changes state, so each test module does not re-ingest the tenant.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edrules.pack import build_pack, generate_keypair, write_pack
from edrules.rules.parse import parse_rules_file
from edrules.support.site import load_site, write_site_config

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT.parent / "shared" / "corpus" / "seed_example" / "otp-headers-pasted.txt"
TENANT = "northwind-traders.cz"
OTHER = "exchangedefenderdemo.com"


def demo_db(base: Path) -> Path:
    """The demo tenant ingested exactly as `edrules demo` does (dataset 'demo')."""
    from edrules.demo import STEPS, run_demo

    db = base / "support-demo" / "edrules.duckdb"
    if not (base / "support-demo" / "done").exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        steps = tuple(s for s in STEPS if s.name in ("tenant-ingest", "quarantine"))
        run_demo(db, sample=ROOT / "data" / "sample", tenant=ROOT / "data" / "demo-tenant",
                 rules=ROOT / "data" / "rules", echo=lambda _l: None, jobs=1, steps=steps)
        (base / "support-demo" / "done").write_text("ok")
    return db


def make_site(state: Path, db: Path, *, secure_release: bool = False, next_hop: str = "127.0.0.1:25"):
    """A state dir with support.yaml, a signing key and the tenant's current pack deployed."""
    state.mkdir(parents=True, exist_ok=True)
    keys = state / "keys"
    if not (keys / "edrules-pack.key").exists():
        generate_keypair(keys)
    write_site_config(state, {
        "dataset_db": str(db), "signing_key": str(keys / "edrules-pack.key"),
        "pubkey": str(keys / "edrules-pack.pub"), "next_hop": next_hop,
        "domains": {
            TENANT: {"dataset": "demo", "trusted_authserv": ["mx1.northwind-traders.cz"],
                     "secure_release": secure_release, "zone": str(ROOT / "data" / "demo-tenant" / "zone.txt"),
                     "dkim_selectors": ["nw2025"], "gateway_relays": ["203.0.113.0/28"],
                     "gateway_mx": ["mx1.northwind-traders.cz"]},
            OTHER: {"trusted_authserv": ["inbound10.exchangedefender.com"]},
        },
    })
    site = load_site(state)
    rules = ROOT / "data" / "rules" / "current.yaml"
    pack = build_pack(parse_rules_file(rules), source_bytes=rules.read_bytes(), private_key_path=keys / "edrules-pack.key")
    site.pack_path(TENANT).parent.mkdir(parents=True, exist_ok=True)
    write_pack(pack, site.pack_path(TENANT))
    return site


def copy_db(db: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(db, dest / db.name)
    return dest / db.name


def crlf(raw: bytes) -> bytes:
    """The message as a milter receives it from Postfix: CRLF line ends (the files use LF)."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def populated_state(base: Path, db: Path) -> Path:
    """A state dir with the tenant's quarantine populated, built once per session; copy it."""
    state = base / "support-populated"
    if not (state / "done").exists():
        shutil.rmtree(state, ignore_errors=True)
        populate_quarantine(make_site(state, db))
        (state / "done").write_text("ok")
    return state


def copy_state(template: Path, dest: Path, **site_options):
    """A private copy of a populated state dir, its support.yaml rewritten (next hop, policy)."""
    shutil.copytree(template, dest)
    (dest / "done").unlink()
    import yaml

    cfg = yaml.safe_load((dest / "support.yaml").read_text())
    if "next_hop" in site_options:
        cfg["next_hop"] = site_options.pop("next_hop")
    if "secure_release" in site_options:
        cfg["domains"][TENANT]["secure_release"] = site_options.pop("secure_release")
    cfg["signing_key"] = str(dest / "keys" / "edrules-pack.key")
    cfg["pubkey"] = str(dest / "keys" / "edrules-pack.pub")
    write_site_config(dest, cfg)
    return load_site(dest)


def populate_quarantine(site, *, limit: int | None = None, store=None) -> list:
    """Run demo-tenant mail through the runtime evaluator under the tenant's current pack, as
    the gateway does, and store what it quarantines. Returns the stored items."""
    from edrules.backends.runtime import RuntimeEvaluator
    from edrules.ingest import TrustConfig, facts_from_bytes
    from edrules.runtime.store import QuarantinedRecipient

    store = store or site.store()
    policy = site.current_policy(TENANT)
    evaluator = RuntimeEvaluator(policy)
    trust = TrustConfig(authserv_ids=frozenset({"mx1.northwind-traders.cz"}), auto_detect=False)
    items, n = [], 0
    tenant = ROOT / "data" / "demo-tenant"
    for label in ("ham", "spam", "phishing", "malware"):
        for path in sorted((tenant / label).glob("*.eml")):
            raw = crlf(path.read_bytes())
            facts = facts_from_bytes(raw, source=path.name, trust=trust, label=label).facts
            held = [QuarantinedRecipient(v.recipient, v.category, v.reason, v.rule_id)
                    for v in evaluator.evaluate(facts) if str(v.action) == "quarantine"]
            if not held:
                continue
            items += store.add(raw, held, envelope_from=facts.envelope_from, client_ip=facts.client_ip,
                               helo=facts.helo, queue_id=f"Q{n:05d}", pack_name=policy.name, pack_version="1",
                               received_at=facts.received_at, facts=facts)
            n += 1
            if limit is not None and n >= limit:
                return items
    return items


def add_for(site, raw: bytes, recipient: str, category: str = "spam", *, store=None):
    """One message quarantined for one recipient (another domain's mailbox, a malware case)."""
    from edrules.ingest import TrustConfig, facts_from_bytes
    from edrules.runtime.store import QuarantinedRecipient

    store = store or site.store()
    trust = TrustConfig(authserv_ids=frozenset({"mx1.northwind-traders.cz"}), auto_detect=False)
    facts = facts_from_bytes(raw, trust=trust, recipients=[recipient]).facts
    return store.add(raw, [QuarantinedRecipient(recipient, category, f"test: {category}", f"category:{category}")],
                     envelope_from=facts.envelope_from, client_ip=facts.client_ip, helo=facts.helo,
                     queue_id=f"X-{recipient}", pack_name="test", pack_version="1", facts=facts)[0]


class SmtpSink:
    """A real SMTP server on loopback (aiosmtpd) that keeps what it receives."""

    def __init__(self):
        from aiosmtpd.controller import Controller

        from components import free_port

        self.messages: list[tuple[str, list[str], bytes]] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                sink.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content or envelope.content))
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> "SmtpSink":
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()

    def to(self, recipient: str) -> list[bytes]:
        return [m[2] for m in self.messages if recipient in m[1]]
