"""`postwarden stat`: counters kept in Redis, like `rspamc stat`."""

from __future__ import annotations

import json
import sys

import click

from postwarden.cli.options import EX_UNAVAILABLE, config_option, load_or_exit
from postwarden.errors import StoreUnavailable
from postwarden.stats import milter_action_shares
from postwarden.store.client import open_configured_store, unavailable_on_error


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def stat(config_file: str | None, as_json: bool) -> None:
    """Show counters: scanned, by action, learned, greylisted, rate-limited."""
    _, settings = load_or_exit(config_file)
    store = open_configured_store(settings)
    prefix = store.keys.stat("")
    try:
        with unavailable_on_error():
            keys = sorted(store.redis.scan_iter(match=store.keys.stat_pattern(), count=1000))
            values = store.redis.mget(keys) if keys else []
    except StoreUnavailable as exc:
        click.echo(f"postwarden stat: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE)
    counters = {
        k.decode()[len(prefix) :]: int(v)
        for k, v in zip(keys, values, strict=True)
        if v is not None
    }
    if as_json:
        click.echo(json.dumps(counters, sort_keys=True))
        return
    if not counters:
        click.echo("no counters yet")
    width = max((len(k) for k in counters), default=0)
    for name, value in counters.items():
        click.echo(f"{name:<{width}}  {value}")
    for milter, rows in milter_action_shares(counters).items():
        click.echo(f"\nmilter {milter}: {counters[f'milter.{milter}.scanned']} messages scanned")
        for action, n, share in rows:
            click.echo(f"  Messages with action {action}: {n}, {share:.2%}")
