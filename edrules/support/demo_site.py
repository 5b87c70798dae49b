"""The demo tenant as a support site: deployed pack, quarantine filled by the gateway runtime, sign-in accounts.

`edrules demo` calls `prepare_demo_site` after compiling the example packs, then serves the
dashboards with `edrules serve --state STATE`. The quarantine is filled by running the demo
tenant's mail through `edrules.runtime.gateway.Gateway` (the milter's own decision code), with
the envelope the tenant's gateway recorded in its headers.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from edrules.server.demo import create_demo_logins, demo_logins
from edrules.support.site import load_site, write_site_config

TENANT = "northwind-traders.cz"
TENANT_GATEWAY = "mx1.northwind-traders.cz"
# Demo sign-ins (edrules.server.demo), printed by the demo; they exist only in the demo state dir.
DEMO_ACCOUNTS = tuple((d.address, d.role, d.domains, d.password) for d in demo_logins(TENANT))
LABELS = ("ham", "spam", "phishing", "malware")


def crlf(raw: bytes) -> bytes:
    """As Postfix hands a message to a milter: CRLF line ends (the sample files use LF)."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def prepare_demo_site(state: Path, *, db: Path, pack: Path, keys: Path, tenant: Path,
                      next_hop: str = "127.0.0.1:10026", echo: Callable[[str], None] = print) -> dict[str, int]:
    """Write STATE/support.yaml, deploy `pack` as the tenant's pack, fill the quarantine once
    (a second run finds the items already stored), add the demo accounts."""
    state.mkdir(parents=True, exist_ok=True)
    write_site_config(state, {
        "dataset_db": str(Path(db).resolve()), "signing_key": str((keys / "edrules-pack.key").resolve()),
        "pubkey": str((keys / "edrules-pack.pub").resolve()), "next_hop": next_hop,
        "domains": {
            TENANT: {"dataset": "demo", "trusted_authserv": [TENANT_GATEWAY], "secure_release": False,
                     "zone": str((tenant / "zone.txt").resolve()), "dkim_selectors": ["nw2025"],
                     "gateway_relays": ["203.0.113.0/28"], "gateway_mx": [TENANT_GATEWAY]},
            "exchangedefenderdemo.com": {"trusted_authserv": ["inbound10.exchangedefender.com"]},
        },
    })
    site = load_site(state)
    deployed = site.pack_path(TENANT)
    if not deployed.exists():
        deployed.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(pack, deployed)
    counts = fill_quarantine(site, tenant)
    echo(f"  quarantine: {counts['held']} recipient items from {counts['messages']} messages "
         f"(of {counts['seen']}) through the gateway runtime, in {state}")
    for login in create_demo_logins(state, TENANT):
        echo(f"  sign in as {login.address} / {login.password} ({login.role})")
    return counts


def fill_quarantine(site, tenant: Path) -> dict[str, int]:
    from edrules.ingest import TrustConfig, facts_from_bytes
    from edrules.runtime.gateway import Gateway

    # The upstream scanner of the demo is SpamAssassin: its stamp is how the gateway learns
    # "spam" (the sample files carry their label in the folder name only).
    gw = Gateway(site.pack_path(TENANT), site.pubkey, site.state_dir, trusted_authserv=[TENANT_GATEWAY],
                 authserv_id="edrules.demo", scanner="spamassassin")
    trust = TrustConfig(authserv_ids=frozenset({TENANT_GATEWAY}), auto_detect=False)
    seen = messages = held = 0
    for label in LABELS:
        for i, path in enumerate(sorted((tenant / label).glob("*.eml"))):
            raw = crlf(path.read_bytes())
            if label in ("spam", "phishing"):
                raw = b"X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=9.1\r\n" + raw
            # The envelope the tenant's gateway recorded (Return-Path, Received, RCPT in headers).
            f = facts_from_bytes(raw, trust=trust, label=label).facts
            d = gw.process(raw, mail_from=f.envelope_from or "", rcpts=list(f.recipients), client_ip=f.client_ip,
                           helo=f.helo, queue_id=f"demo-{label}-{i:04d}", received_at=f.received_at)
            seen += 1
            if d.quarantined:
                messages += 1
                held += len(d.quarantined)
    return {"seen": seen, "messages": messages, "held": held}


DEMO_MAILBOX_PORT = 10026  # the demo's next hop: where released mail and sign-in codes are delivered


class DemoMailbox:
    """The demo's downstream mail server: a real SMTP server (aiosmtpd) on 127.0.0.1 that files
    every message it accepts under STATE/mailbox/, so a release or an e-mailed sign-in code
    can be read there. Stand-in for the tenant's mailbox server, not for any edrules part."""

    def __init__(self, state: Path, port: int = DEMO_MAILBOX_PORT):
        from aiosmtpd.controller import Controller

        self.folder = Path(state) / "mailbox"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.controller = Controller(self, hostname="127.0.0.1", port=port)

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        import time

        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{len(list(self.folder.iterdir())):04d}.eml"
        head = f"X-Demo-Envelope: from <{envelope.mail_from}> to {', '.join(envelope.rcpt_tos)}\r\n".encode()
        (self.folder / name).write_bytes(head + bytes(envelope.content))
        return "250 OK filed in the demo mailbox"

    def __enter__(self) -> "DemoMailbox":
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()
