"""One demo login per role for `edrules demo` (loopback only; the passwords are printed on purpose)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edrules.server.accounts import Accounts

DEMO_DOMAIN = "northwind-traders.cz"


@dataclass(frozen=True, slots=True)
class DemoLogin:
    address: str
    role: str
    domains: tuple[str, ...]
    password: str


def demo_logins(domain: str = DEMO_DOMAIN) -> tuple[DemoLogin, ...]:
    # Martin is the user of the story: his OTP mail is in the demo quarantine.
    return (
        DemoLogin(f"martin.kral@{domain}", "user", (domain,), "demo-martin-pass"),
        DemoLogin(f"admin@{domain}", "domain_admin", (domain,), "demo-admin-pass"),
        DemoLogin("ops@provider.example", "provider", (domain, "exchangedefenderdemo.com"), "demo-provider-pass"),
    )


def create_demo_logins(state_dir: str | Path, domain: str = DEMO_DOMAIN) -> tuple[DemoLogin, ...]:
    """Create the demo accounts (idempotent: an existing one gets its demo password back)."""
    store = Accounts(state_dir)
    logins = demo_logins(domain)
    for login in logins:
        if store.get(login.address) is None:
            store.add(login.address, login.role, login.domains, login.password, actor="demo")  # type: ignore[arg-type]
        else:
            store.set_password(login.address, login.password, actor="demo")
            store.set_disabled(login.address, False, actor="demo")
            store.unlock(login.address, actor="demo")
    return logins


def serve_demo(state_dir: str | Path, *, db: str | Path | None, dashboards: str | Path, host: str = "127.0.0.1",
               port: int = 8866, smtp: tuple[str, int] | None = None, echo=print) -> None:
    """`edrules demo --serve`: create the demo logins, print them, serve the dashboards behind login."""
    from edrules.server.app import run
    from edrules.server.handlers import ServerContext

    logins = create_demo_logins(state_dir)

    def echo_then_logins(line: str) -> None:
        echo(line)
        if line.startswith("edrules: serving"):  # last, below the server's start-up log
            echo("demo logins (one per role):")
            for login in logins:
                echo(f"  {login.role:<13} {login.address:<36} password: {login.password}")

    ctx = ServerContext(accounts=Accounts(state_dir), state_dir=Path(state_dir), dashboards=Path(dashboards).resolve(),
                        db=Path(db) if db else None, smtp=smtp)
    run(ctx, host=host, port=port, echo=echo_then_logins)
