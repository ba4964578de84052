"""`postwarden ratelimit show|reset KEY`: look at or clear rate-limit counters.

KEY is `TYPE:VALUE` (`sasl_username:alice`, `client_address:192.0.2.7`,
`sender_domain:example.com`, ...) or a bare value, matched against every
rule whose key type it fits. Reads the same Redis logs policyd writes.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from policyd.checks import ratelimit as rl
from postwarden.cli.options import EX_UNAVAILABLE, config_option, load_or_exit
from postwarden.clock import SystemClock
from postwarden.config.schema import Settings
from postwarden.config.sections.ratelimit import FIRST_TIME_NAME
from postwarden.errors import StoreUnavailable
from postwarden.store.client import Store, open_configured_store, unavailable_on_error


@click.group()
def ratelimit() -> None:
    """Show or reset rate-limit counters for one key."""


def _open(settings: Settings) -> Store:
    return open_configured_store(settings)


def _seconds(ms: int) -> str:
    return f"{-(-ms // 1000)}s" if ms > 0 else "-"


@ratelimit.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per window")
@click.argument("key")
def show(config_file: str | None, as_json: bool, key: str) -> None:
    """Current use per rule and window, and when each frees up."""
    _, settings = load_or_exit(config_file)
    cfg = settings.policyd.ratelimit
    store = _open(settings)
    now = SystemClock().now()
    try:
        with unavailable_on_error():
            rows = rl.inspect(store, cfg, key, now)
            logins = sorted(
                {r.subject.partition(":")[2] for r in rows if r.rule == FIRST_TIME_NAME}
            )
            known = {login: rl.known_recipients(store, cfg, login, now) for login in logins}
    except StoreUnavailable as exc:
        click.echo(f"postwarden ratelimit: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE)
    finally:
        store.close()
    if not rows:
        click.echo(f"no rate-limit rule keys on {key!r}", err=True)
        sys.exit(1)
    if as_json:
        for r in rows:
            out: dict[str, Any] = {
                "rule": r.rule, "subject": r.subject, "unit": r.unit, "used": r.used,
                "limit": r.limit, "window": rl.window_text(r.per_ms),
                "next_free_s": r.next_free_ms / 1000, "reset_s": r.reset_ms / 1000,
            }  # fmt: skip
            click.echo(json.dumps(out))
        return
    click.echo(f"{'rule':<24} {'subject':<36} {'window':>6} {'used':>14}  next-free  reset")
    for r in rows:
        used = f"{r.used}/{r.limit}"
        click.echo(f"{r.rule:<24} {r.subject:<36} {rl.window_text(r.per_ms):>6} {used:>14}  "
                   f"{_seconds(r.next_free_ms):>9}  {_seconds(r.reset_ms)}  {r.unit}")  # fmt: skip
    for login, count in known.items():
        click.echo(f"known recipients of {login}: {count}")


@ratelimit.command()
@config_option
@click.argument("key")
def reset(config_file: str | None, key: str) -> None:
    """Delete the counters of KEY (known recipients are kept)."""
    _, settings = load_or_exit(config_file)
    store = _open(settings)
    try:
        with unavailable_on_error():
            deleted = rl.reset(store, settings.policyd.ratelimit, key)
    except StoreUnavailable as exc:
        click.echo(f"postwarden ratelimit: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE)
    finally:
        store.close()
    click.echo(f"deleted {deleted} counter key(s) for {key}")
