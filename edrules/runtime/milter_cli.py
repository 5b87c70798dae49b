"""`edrules milter`: run the Postfix milter; `edrules milter status` / `reload` for operators."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import click

from edrules.errors import EdrulesError


def _host_port(text: str, option: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EdrulesError(f"{option} must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


@click.group(invoke_without_command=True)
@click.option("--pack", "pack_path", type=click.Path(dir_okay=False), help="Signed rule pack (PACK.json).")
@click.option("--pubkey", type=click.Path(dir_okay=False), help="Public key the pack must be signed by.")
@click.option("--listen", help="unix:PATH or inet:HOST:PORT (Postfix: smtpd_milters = the same).")
@click.option("--state", "state_dir", type=click.Path(file_okay=False), help="State directory (quarantine, keys, status).")
@click.option("--trusted-authserv", multiple=True, metavar="ID",
              help="Believe upstream Authentication-Results of this authserv-id instead of checking "
                   "SPF/DKIM/DMARC here (repeatable).")
@click.option("--zone", multiple=True, type=click.Path(dir_okay=False),
              help="Answer DNS from this zone file instead of the network (tests, air-gapped; repeatable).")
@click.option("--next-hop", help="HOST:PORT where released mail is re-injected (recorded in the status).")
@click.option("--authserv-id", default=None, help="Our authserv-id in the Authentication-Results we add "
              "(default: this host's name).")
@click.option("--scanner", type=click.Choice(["spamassassin", "rspamd"]),
              help="An upstream scanner whose headers (X-Spam-*, X-Rspamd-*) set the category.")
@click.option("--metrics", "metrics_addr", metavar="HOST:PORT", help="Serve Prometheus metrics here.")
@click.pass_context
def milter(ctx: click.Context, pack_path, pubkey, listen, state_dir, trusted_authserv, zone, next_hop,
           authserv_id, scanner, metrics_addr) -> None:
    """Run the Postfix milter: every message is evaluated against the signed pack."""
    if ctx.invoked_subcommand is not None:
        return
    missing = [o for o, v in (("--pack", pack_path), ("--pubkey", pubkey), ("--listen", listen),
                              ("--state", state_dir)) if not v]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)}")
    from edrules.runtime.milter import Listen, MilterServer  # needs pymilter
    from edrules.runtime.gateway import Gateway
    from edrules.runtime.metrics import Metrics, log_event, setup_logging

    setup_logging()
    where = Listen.parse(listen)
    resolver = None
    if zone:
        from edrules.auth.resolver import ZoneResolver

        resolver = ZoneResolver.from_file(*zone)
    hop = _host_port(next_hop, "--next-hop") if next_hop else None
    metrics = Metrics()
    gateway = Gateway(pack_path, pubkey, state_dir, trusted_authserv=trusted_authserv,
                      authserv_id=authserv_id or _hostname(), resolver=resolver, scanner=scanner,
                      metrics=metrics)
    # Open the store and key now: a broken state directory fails at start, not on the first message.
    try:
        gateway.store  # noqa: B018
        gateway.release_key()
    except ModuleNotFoundError as exc:  # quarantine store not installed: quarantining tempfails
        log_event({"event": "warning", "detail": f"quarantine store unavailable: {exc}"})
    gateway.warm_up()
    if metrics_addr:
        metrics.serve(*_host_port(metrics_addr, "--metrics"))
    server = MilterServer(gateway, where, next_hop=hop)
    server.serve()
    metrics.close()


def _hostname() -> str:
    import socket

    return socket.getfqdn() or "localhost"


@milter.command()
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False),
              help="The running milter's --state directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(state_dir: str, as_json: bool) -> None:
    """Show the running milter's pack (name, version, signed what-if metadata) and last reload."""
    from edrules.runtime.status import format_status, read_status

    s = read_status(state_dir)
    click.echo(json.dumps(s, indent=2, sort_keys=True, ensure_ascii=False) if as_json else format_status(s))
    if not s.get("running"):
        raise SystemExit(1)


@milter.command()
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False),
              help="The running milter's --state directory.")
def reload(state_dir: str) -> None:
    """Ask the running milter to reload its pack (SIGHUP); the old pack serves if the new one fails."""
    from edrules.runtime.status import read_status

    s = read_status(state_dir)
    if not s.get("running"):
        raise EdrulesError(f"the milter (pid {s.get('pid')}) is not running", None)
    os.kill(int(s["pid"]), signal.SIGHUP)
    click.echo(f"sent SIGHUP to pid {s['pid']}; see `edrules milter status --state {Path(state_dir)}`")
