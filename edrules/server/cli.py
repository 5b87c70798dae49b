"""`edrules serve` and `edrules users ...`: thin wrappers over edrules.server."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click
import yaml

from edrules.errors import EdrulesError, Location

DEFAULT_STATE = Path(os.environ.get("EDRULES_STATE", "data/state"))
DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"

state_option = click.option("--state", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_STATE,
                            show_default=True, help="State directory (accounts.sqlite, quarantine, keys).")


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise EdrulesError(f"{what} must be HOST:PORT, got {value!r}")
    return host, int(port)


def load_oidc(path: Path | None):
    from edrules.server.handlers import OidcProvider

    if path is None:
        return ()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise EdrulesError(f"cannot read OIDC settings: {exc.strerror}", Location(str(path))) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise EdrulesError("not valid YAML", Location(str(path), mark.line + 1 if mark else None)) from None
    out = []
    for i, p in enumerate(data.get("providers") or []):
        for key in ("name", "issuer", "client_id"):
            if not isinstance(p, dict) or not p.get(key):
                raise EdrulesError(f"provider {i + 1} needs '{key}'", Location(str(path), field=f"providers[{i}].{key}"))
        out.append(OidcProvider(str(p["name"]), str(p.get("label") or p["name"]), str(p["issuer"]),
                                str(p["client_id"]), str(p.get("client_secret") or "")))
    return tuple(out)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8866, show_default=True, help="Port (0: any free one); the URL printed is the real one.")
@state_option
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None, help="DuckDB dataset the dashboards read.")
@click.option("--dashboards", type=click.Path(file_okay=False, exists=True, path_type=Path), default=DASHBOARDS,
              show_default="dashboards/", help="Folder of Voila notebooks.")
@click.option("--smtp", default=None, help="HOST:PORT of the relay that sends sign-in codes.")
@click.option("--mail-from", default="edrules@localhost", show_default=True, help="From address of sign-in mails.")
@click.option("--public-url", default=None, help="Base URL in e-mailed links and OIDC redirects (default: as requested).")
@click.option("--oidc", "oidc_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="YAML: providers: [{name, label, issuer, client_id, client_secret}].")
def serve(host: str, port: int, state: Path, db: Path | None, dashboards: Path, smtp: str | None, mail_from: str,
          public_url: str | None, oidc_file: Path | None) -> None:
    """Serve the dashboards behind login (Jupyter Server + Voila), on loopback by default."""
    from edrules.server.accounts import Accounts
    from edrules.server.app import run
    from edrules.server.handlers import ServerContext

    ctx = ServerContext(accounts=Accounts(state), state_dir=state, dashboards=dashboards.resolve(), db=db,
                        smtp=parse_hostport(smtp, "--smtp") if smtp else None, mail_from=mail_from,
                        public_url=public_url, oidc=load_oidc(oidc_file))
    run(ctx, host=host, port=port, echo=lambda m: click.echo(m) or sys.stdout.flush())


@click.group("users")
def users() -> None:
    """Accounts that may sign in to `edrules serve`."""


@users.command("add")
@click.argument("address")
@click.option("--role", type=click.Choice(["user", "domain_admin", "provider"]), default="user", show_default=True)
@click.option("--domain", "domains", multiple=True, help="Domain administered (domain_admin) or served (provider); repeat.")
@click.option("--password", default=None, help="Initial password (prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the initial password from standard input.")
@state_option
def users_add(address: str, role: str, domains: tuple[str, ...], password: str | None, password_stdin: bool,
              state: Path) -> None:
    """Create an account (without a password it signs in by e-mailed code or OIDC)."""
    from edrules.server.accounts import Accounts

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    if password is not None and len(password) < 10:
        raise EdrulesError("a password needs at least 10 characters")
    acc = Accounts(state).add(address, role, domains, password)  # type: ignore[arg-type]
    click.echo(f"added {acc.address} ({acc.role}: {', '.join(sorted(acc.domains))})")


@users.command("list")
@state_option
def users_list(state: Path) -> None:
    """List accounts."""
    from edrules.server.accounts import Accounts

    for a in Accounts(state).list():
        flags = [f for f, on in (("disabled", a.disabled), ("totp", a.totp_enabled),
                                 ("locked", a.locked_until > time.time()), ("password", a.has_password)) if on]
        click.echo(f"{a.address}\t{a.role}\t{','.join(sorted(a.domains))}\t{' '.join(flags)}")


@users.command("disable")
@click.argument("address")
@state_option
def users_disable(address: str, state: Path) -> None:
    """Disable an account and end its sessions."""
    from edrules.server.accounts import Accounts

    Accounts(state).set_disabled(address, True)
    click.echo(f"disabled {address.lower()}")


@users.command("enable")
@click.argument("address")
@state_option
def users_enable(address: str, state: Path) -> None:
    """Enable a disabled account again."""
    from edrules.server.accounts import Accounts

    Accounts(state).set_disabled(address, False)
    click.echo(f"enabled {address.lower()}")
