"""`postwarden greylist list|show|whitelist|delete`: inspect and override greylisting.

Reads and writes the same Redis records policyd's greylist check uses
(`policyd/checks/greylist.py`), so an operator can see why a sender is
waiting, let a client through at once, or make it start over.
CLIENT is an address (grouped into its network as `policyd.greylist`
configures: /24 and /64 by default) or a network in CIDR form.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

import click

from policyd.checks import greylist as gl
from postwarden.cli.options import EX_UNAVAILABLE, config_option, load_or_exit
from postwarden.clock import SystemClock
from postwarden.config.schema import Settings
from postwarden.config.units import Duration
from postwarden.errors import StoreUnavailable
from postwarden.store.client import Store, open_configured_store, unavailable_on_error

EX_USAGE = 64


@click.group()
def greylist() -> None:
    """Inspect and override greylisting entries."""


@contextmanager
def _store(settings: Settings) -> Iterator[Store]:
    store = open_configured_store(settings)
    try:
        with unavailable_on_error():
            yield store
    except StoreUnavailable as exc:
        click.echo(f"postwarden greylist: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE)
    finally:
        store.close()


def _network(settings: Settings, client: str) -> str:
    try:
        return gl.network_of(client, settings.policyd.greylist)
    except ValueError:
        click.echo(f"postwarden greylist: {client!r} is not an IP address or CIDR", err=True)
        sys.exit(EX_USAGE)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"


def _ttl(ms: int) -> str:
    if ms < 0:
        return "-"
    s = ms // 1000
    return (
        f"{s // 86400}d{s % 86400 // 3600:02}h"
        if s >= 86400
        else f"{s // 3600}h{s % 3600 // 60:02}m"
    )


def _print_triplets(rows: list[gl.TripletEntry], as_json: bool) -> None:
    if as_json:
        for t in rows:
            click.echo(json.dumps(asdict(t)))
        return
    click.echo(f"{'state':<7} {'network':<20} {'first seen (UTC)':<19} {'waited':>7} "
               f"{'expires':>7}  sender -> recipient")  # fmt: skip
    for t in rows:
        state = "passed" if t.passed else "waiting"
        waited = f"{int(t.last - t.first)}s" if t.passed else "-"
        click.echo(f"{state:<7} {t.network:<20} {_when(t.first):<19} {waited:>7} "
                   f"{_ttl(t.ttl_ms):>7}  <{t.sender}> -> <{t.recipient}>")  # fmt: skip


def _print_clients(rows: list[gl.ClientEntry], threshold: int, as_json: bool) -> None:
    if as_json:
        for c in rows:
            click.echo(json.dumps(asdict(c)))
        return
    for c in rows:
        if c.manual:
            state = "whitelisted (by hand)"
        elif threshold and c.count >= threshold:
            state = f"auto-whitelisted ({c.count} passes)"
        else:
            state = f"{c.count}/{threshold or '-'} passes"
        click.echo(f"client {c.network:<20} {state}; last {_when(c.last)} UTC; "
                   f"expires in {_ttl(c.ttl_ms)}")  # fmt: skip


@greylist.command("list")
@config_option
@click.option("--clients", "show_clients", is_flag=True, help="list client networks instead")
@click.option("--waiting", is_flag=True, help="only triplets still being greylisted")
@click.option("--limit", type=int, default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def list_(
    config_file: str | None, show_clients: bool, waiting: bool, limit: int, as_json: bool
) -> None:
    """Triplets (or client networks with --clients) in Redis."""
    _, settings = load_or_exit(config_file)
    with _store(settings) as store:
        if show_clients:
            rows_c = gl.clients(store, limit=limit)
            _print_clients(rows_c, settings.policyd.greylist.auto_whitelist_clients, as_json)
            return
        rows = gl.triplets(store, limit=limit)
    if waiting:
        rows = [t for t in rows if not t.passed]
    _print_triplets(rows, as_json)


@greylist.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@click.argument("client")
def show(config_file: str | None, as_json: bool, client: str) -> None:
    """Everything known about CLIENT's network: whitelist state and triplets."""
    _, settings = load_or_exit(config_file)
    network = _network(settings, client)
    with _store(settings) as store:
        rows_c = gl.clients(store, network)
        rows = gl.triplets(store, network)
    if not rows_c and not rows:
        click.echo(f"nothing recorded for {network}")
        return
    _print_clients(rows_c, settings.policyd.greylist.auto_whitelist_clients, as_json)
    if rows:
        _print_triplets(rows, as_json)


@greylist.command()
@config_option
@click.option("--ttl", default=None, metavar="DURATION",
              help="forget it after this long without mail (default: max_age)")  # fmt: skip
@click.argument("client")
def whitelist(config_file: str | None, ttl: str | None, client: str) -> None:
    """Let CLIENT's network skip greylisting from now on."""
    _, settings = load_or_exit(config_file)
    g = settings.policyd.greylist
    network = _network(settings, client)
    try:
        seconds = float(Duration.parse(ttl)) if ttl else float(g.max_age)
    except ValueError as exc:
        click.echo(f"postwarden greylist: --ttl: {exc}", err=True)
        sys.exit(EX_USAGE)
    with _store(settings) as store:
        gl.whitelist_client(store, network, SystemClock().now(), seconds)
    click.echo(f"whitelisted {network} for {_ttl(int(seconds * 1000))} after its last mail")


@greylist.command()
@config_option
@click.option("--sender", default=None, help="with --recipient: delete only this triplet")
@click.option("--recipient", default=None)
@click.argument("client")
def delete(config_file: str | None, sender: str | None, recipient: str | None, client: str) -> None:
    """Forget CLIENT's network (triplets and whitelisting), or one triplet."""
    _, settings = load_or_exit(config_file)
    if (sender is None) != (recipient is None):
        click.echo("postwarden greylist: give both --sender and --recipient, or neither", err=True)
        sys.exit(EX_USAGE)
    network = _network(settings, client)
    with _store(settings) as store:
        n = gl.delete_entries(store, settings.policyd.greylist, network, sender, recipient)
    click.echo(f"deleted {n} record(s) for {network}")
