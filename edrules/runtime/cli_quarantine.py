"""`edrules quarantine|overrides|digest ...`: support staff's tools on the gateway (thin click
wrappers over edrules.runtime.store, release, overrides and digest)."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import click

from edrules.errors import EdrulesError

_STATE = click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False),
                      help="Gateway state directory (quarantine, keys, overrides).")
_ACTOR = click.option("--actor", default=None, help="Who does this, for the audit log (default: user@host).")


def _store(state_dir: str):
    from edrules.runtime.store import SqliteQuarantineStore

    if not Path(state_dir).is_dir():
        raise EdrulesError("state directory does not exist", _loc(state_dir))
    return SqliteQuarantineStore(state_dir)


def _loc(path: str):
    from edrules.errors import Location

    return Location(str(path))


def _actor(actor: str | None) -> str:
    from edrules.runtime.release import default_actor

    return actor or default_actor("cli")


def _item_or_fail(store, item_id: str):
    item = store.get(item_id)
    if item is None:
        raise EdrulesError(f"no quarantined item {item_id!r}", _loc(store.db_path))
    return item


def _short(text: str | None, n: int) -> str:
    t = (text or "").replace("\n", " ")
    return t if len(t) <= n else t[: n - 1] + "…"


@click.group()
def quarantine() -> None:
    """List, show, release, trust, delete and purge quarantined mail."""


@quarantine.command("list")
@_STATE
@click.option("--recipient", multiple=True, help="Only this recipient (repeatable).")
@click.option("--domain", multiple=True, help="Only recipients in this domain (repeatable).")
@click.option("--status", type=click.Choice(["quarantined", "released", "deleted"]), default=None,
              help="Only items in this state (default: all).")
@click.option("--category", default=None, help="Only this decision category (spam, forgery, block, ...).")
@click.option("--search", default=None, help="Substring of subject, sender or recipient.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_(state_dir, recipient, domain, status, category, search, limit, as_json) -> None:
    """Quarantined items, newest first."""
    store = _store(state_dir)
    kw = dict(recipients=list(recipient) or None, domains=list(domain) or None, state=status,
              category=category, search=search)
    items = store.list(**kw, limit=limit)
    if as_json:
        for it in items:
            click.echo(json.dumps(it.to_json(), sort_keys=True))
        return
    click.echo(f"{'ID':24}  {'QUARANTINED (UTC)':16}  {'STATE':11}  {'CATEGORY':9}  {'RECIPIENT':24}  "
               f"{'FROM':28}  SUBJECT")
    for it in items:
        click.echo(f"{it.id:24}  {it.quarantined_at:%Y-%m-%d %H:%M}  {it.state:11}  {it.category:9}  "
                   f"{_short(it.recipient, 24):24}  {_short(it.header_from or it.envelope_from, 28):28}  "
                   f"{_short(it.subject, 50)}")
    total = store.count(**kw)
    click.echo(f"{len(items)} of {total} item{'s' if total != 1 else ''}")


@quarantine.command()
@_STATE
@click.argument("item_id")
@click.option("--raw", is_flag=True, help="Write the stored message bytes to stdout instead.")
def show(state_dir, item_id, raw) -> None:
    """One item: its facts, why it was held, and its audit trail."""
    store = _store(state_dir)
    item = _item_or_fail(store, item_id)
    if raw:
        sys.stdout.buffer.write(store.raw(item_id))
        return
    for k, v in item.to_json().items():
        if k == "auth":
            v = json.dumps(v, sort_keys=True) if v else None
        click.echo(f"{k + ':':16}{'' if v is None else v}")
    click.echo("audit:")
    for a in store.audit_log(item_id=item_id, limit=None):
        click.echo(f"  {a.at:%Y-%m-%d %H:%M:%S} {a.actor} {a.action} ({a.how}) {a.detail}".rstrip())


@quarantine.command()
@_STATE
@click.argument("item_ids", nargs=-1, required=True)
@click.option("--next-hop", required=True, metavar="HOST:PORT", help="SMTP server to re-inject into.")
@click.option("--retry-unconfirmed", is_flag=True,
              help="Send again a release whose process died before the next hop confirmed it (10+ min ago).")
@_ACTOR
def release(state_dir, item_ids, next_hop, actor, retry_unconfirmed) -> None:
    """Re-inject items to their recipient via the next hop, exactly once each."""
    from edrules.runtime.release import parse_hostport, release as do_release, release_key

    store = _store(state_dir)
    hop = parse_hostport(next_hop)
    key = release_key(state_dir)
    failed = 0
    for iid in item_ids:
        _item_or_fail(store, iid)
        out = do_release(store, iid, next_hop=hop, actor=_actor(actor), how="cli", key=key,
                         retry_unconfirmed=retry_unconfirmed)
        click.echo(f"{iid}: {out.status}{' to ' + out.recipient if out.recipient else ''}"
                   f"{' (' + out.detail + ')' if out.detail else ''}")
        failed += not out.ok
    if failed:
        sys.exit(1)


@quarantine.command()
@_STATE
@click.argument("item_id")
@_ACTOR
def trust(state_dir, item_id, actor) -> None:
    """Trust the item's sender for its recipient (a pair via the authenticated network)."""
    from edrules.runtime.overrides import Overrides, trust_item

    store = _store(state_dir)
    choice = trust_item(store, Overrides(state_dir), item_id, _actor(actor), "cli")
    verb = "trusted" if choice.created else "already trusted"
    click.echo(f"{verb}: {choice.sender} via {choice.via} for {choice.scope} (entry {choice.entry_id}; {choice.why})")


@quarantine.command()
@_STATE
@click.argument("item_ids", nargs=-1, required=True)
@_ACTOR
def delete(state_dir, item_ids, actor) -> None:
    """Delete items (the message file goes when no other item needs it)."""
    store = _store(state_dir)
    for iid in item_ids:
        _item_or_fail(store, iid)
        click.echo(f"{iid}: {'deleted' if store.delete(iid, _actor(actor), 'cli') else 'already deleted'}")


@quarantine.command()
@_STATE
@click.option("--pack", type=click.Path(exists=True, dir_okay=False), help="Take retention_days from this pack.")
@click.option("--pubkey", type=click.Path(exists=True, dir_okay=False), help="Public key the pack must be signed by.")
@click.option("--retention", multiple=True, metavar="CATEGORY=DAYS", help="Retention for one category (repeatable; wins over --pack).")
def purge(state_dir, pack, pubkey, retention) -> None:
    """Drop items past their category's retention."""
    days: dict[str, int] = {}
    if pack:
        from edrules.pack import load_pack

        if not pubkey:
            raise EdrulesError("--pack needs --pubkey (the gateway trusts only packs signed by that key)")
        days.update(load_pack(pack, pubkey_path=pubkey).policy.retention_days)
    for r in retention:
        cat, sep, n = r.partition("=")
        if not sep or not cat or not n.strip().isdigit():
            raise EdrulesError(f"--retention must be CATEGORY=DAYS (got {r!r})")
        days[cat.strip()] = int(n)
    if not days:
        raise EdrulesError("give --pack PACK --pubkey PUB (its retention_days) or --retention CATEGORY=DAYS")
    store = _store(state_dir)
    n = store.purge(datetime.now(timezone.utc), days)
    store.sweep_temp_files()
    click.echo(f"purged {n} item{'s' if n != 1 else ''} ({', '.join(f'{k} {v}d' for k, v in sorted(days.items()))})")


@click.group()
def overrides() -> None:
    """Local trust decisions (STATE/overrides.yaml): list, export as rules YAML."""


@overrides.command("list")
@_STATE
def overrides_list(state_dir) -> None:
    """Every override entry."""
    from edrules.runtime.overrides import Overrides

    entries = Overrides(state_dir).entries()
    for e in entries:
        via = f" via {e.via.value}" if e.via else ""
        click.echo(f"{e.id}: allow {e.kind.value} {e.value}{via} scope {e.scope}"
                   f"{'  # ' + e.comment if e.comment else ''}")
    click.echo(f"{len(entries)} override{'s' if len(entries) != 1 else ''}")


@overrides.command("export")
@_STATE
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
def overrides_export(state_dir, output) -> None:
    """The overrides as rules YAML, for the analysts to merge into a rules file."""
    from edrules.runtime.overrides import Overrides

    text = Overrides(state_dir).export_yaml()
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}")
    else:
        click.echo(text, nl=False)


@click.group(invoke_without_command=True)
@click.option("--state", "state_dir", type=click.Path(file_okay=False), help="Gateway state directory.")
@click.option("--smtp", metavar="HOST:PORT", help="SMTP server that delivers the digests.")
@click.option("--base-url", help="Where the confirmation pages are served (links point there).")
@click.option("--user", help="Only this recipient.")
@click.option("--domain", help="Only recipients in this domain.")
@click.option("--from", "sender", help="Digest sender address (default quarantine@<this host>).")
@click.option("--link-days", default=7, show_default=True, type=click.IntRange(1, 365), help="Link lifetime.")
@click.option("--force", is_flag=True, help="Ignore the schedule's timing (an item is still never listed twice).")
@click.pass_context
def digest(ctx, state_dir, smtp, base_url, user, domain, sender, link_days, force) -> None:
    """Send due quarantine digests. `edrules digest schedule` sets daily/weekly/off."""
    if ctx.invoked_subcommand is not None:
        return
    missing = [n for n, v in (("--state", state_dir), ("--smtp", smtp), ("--base-url", base_url)) if not v]
    if missing:
        raise EdrulesError(f"edrules digest needs {', '.join(missing)}")
    if user and domain:
        raise EdrulesError("give --user or --domain, not both")
    from edrules.runtime.digest import send_digests
    from edrules.runtime.release import parse_hostport, release_key

    store = _store(state_dir)
    reports = send_digests(store, smtp=parse_hostport(smtp, "--smtp"), base_url=base_url, key=release_key(state_dir),
                           sender=sender, user=user, domain=domain, force=force, ttl_seconds=link_days * 86400)
    failed = 0
    for r in reports:
        what = f"{len(r.item_ids)} item{'s' if len(r.item_ids) != 1 else ''}" if r.status == "sent" else r.status
        click.echo(f"{r.recipient}: {what}{' (' + r.detail + ')' if r.detail else ''}")
        failed += r.status == "failed"
    sent = sum(r.status == "sent" for r in reports)
    click.echo(f"{sent} digest{'s' if sent != 1 else ''} sent")
    if failed:
        sys.exit(1)


@digest.command("schedule")
@_STATE
@click.argument("frequency", type=click.Choice(["daily", "weekly", "off"]))
@click.option("--user", help="For this recipient.")
@click.option("--domain", help="For every recipient in this domain (a user schedule wins).")
def digest_schedule(state_dir, frequency, user, domain) -> None:
    """Set how often a user, a domain, or (neither given) everyone gets a digest."""
    from edrules.runtime.digest import set_schedule

    subject = set_schedule(_store(state_dir), frequency, user=user, domain=domain)
    click.echo(f"digest schedule for {'everyone' if subject == '*' else subject}: {frequency}")
