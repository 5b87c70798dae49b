"""`edrules dns-check`: what a domain admin must publish (MX, SPF, DKIM, DMARC) for the gateway."""

from __future__ import annotations

import json

import click

from edrules.auth.dnscheck import Severity, check_domain
from edrules.auth.resolver import ZoneResolver, default_resolver

_MARK = {Severity.OK: "ok", Severity.INFO: "info", Severity.WARNING: "WARN", Severity.ERROR: "ERROR"}


@click.command("dns-check")
@click.argument("domain")
@click.option("--zone", "zones", multiple=True, type=click.Path(dir_okay=False),
              help="Answer from this master-format zone file instead of live DNS (repeatable).")
@click.option("--gateway-relays", "relays", multiple=True, metavar="CIDR",
              help="Outbound relay range(s) of the gateway that SPF must authorise (repeatable, or comma-separated).")
@click.option("--gateway-mx", "gateway_mx", multiple=True, metavar="HOST",
              help="Host name(s) of the gateway's inbound MX; the domain's MX must point there.")
@click.option("--dkim-selector", "selectors", multiple=True, metavar="S",
              help="DKIM selector(s) to check (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def dns_check(domain: str, zones: tuple[str, ...], relays: tuple[str, ...],
              gateway_mx: tuple[str, ...], selectors: tuple[str, ...], as_json: bool) -> None:
    """Check DOMAIN's MX, SPF, DKIM and DMARC records; exit 1 if any finding is an error."""
    resolver = ZoneResolver.from_file(*zones) if zones else default_resolver()
    report = check_domain(domain, resolver, gateway_mx=gateway_mx, gateway_relays=relays,
                          dkim_selectors=selectors)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(f"{report.domain}: {report.worst}")
        for f in report.findings:
            click.echo(f"  {_MARK[f.severity]:<5} {f.area:<5} {f.message}")
            if f.suggestion:
                click.echo(f"        publish: {f.suggestion}")
            if f.advice:
                click.echo(f"        advice:  {f.advice}")
    if report.worst >= Severity.ERROR:
        # SystemExit, not ctx.exit: edrules.cli.main runs click with standalone_mode=False,
        # which turns ctx.exit(code) into a return value and drops the code.
        raise SystemExit(1)
