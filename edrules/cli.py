"""Thin command line: parses arguments, calls the Python API, prints.

Subcommands live next to the code they drive and are imported lazily, so `edrules --help`
stays fast and the gateway never imports the analyst stack.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from edrules.errors import EdrulesError

# name -> "module:attribute" of a click command
COMMANDS: dict[str, str] = {
    "ingest": "edrules.workbench.cli_ingest:ingest",
    "upgrade": "edrules.ingest.upgrade:upgrade",
    "synth": "edrules.synth:synth_command",
    "pack": "edrules.rules.cli:pack",
    "evaluate": "edrules.workbench.cli_evaluate:evaluate",
    "explain": "edrules.workbench.cli_explain:explain",
    "whatif": "edrules.workbench.cli:whatif",
    "dns-check": "edrules.auth.cli:dns_check",
    "demo": "edrules.demo:demo",
    "serve": "edrules.server.cli:serve",
    "users": "edrules.server.cli:users",
    "milter": "edrules.runtime.milter_cli:milter",
    "quarantine": "edrules.runtime.cli_quarantine:quarantine",
    "overrides": "edrules.runtime.cli_quarantine:overrides",
    "digest": "edrules.runtime.cli_quarantine:digest",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if self._load(name) is not None)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._load(name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                return None  # that part of edrules is not installed/built yet
            raise
        return getattr(module, attr, None)


@click.group(cls=LazyGroup)
@click.version_option(package_name="edrules")
def cli() -> None:
    """edrules: test mail-filter rules on real traffic, ship signed rule packs."""


def main() -> None:
    try:
        # Non-standalone mode hands back ctx.exit(code) as the return value instead of exiting.
        code = cli.main(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except EdrulesError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug, not a user error: say so briefly, keep the trace on demand
        if os.environ.get("EDRULES_DEBUG"):
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc}", err=True)
        click.echo("this is a bug in edrules; rerun with EDRULES_DEBUG=1 for the traceback", err=True)
        sys.exit(70)


if __name__ == "__main__":
    main()
