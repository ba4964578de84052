"""What every long-running command does before it serves: logging as
configured, then the start-up checks, exiting 78 (EX_CONFIG) with what to
fix."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from postwarden import logs, preflight
from postwarden.cli.options import EX_CONFIG
from postwarden.config import Settings
from postwarden.errors import StartupError


def setup_logging(settings: Settings) -> None:
    try:
        logs.setup(
            settings.log.level.value, settings.log.format.value, target=settings.log.target.value
        )
    except StartupError as exc:
        click.echo(f"postwarden: {exc}", err=True)
        sys.exit(EX_CONFIG)


def check_or_exit(
    settings: Settings,
    services: Sequence[tuple[str, ...]],
    *,
    serves_metrics: bool,
    config_file: str | None = None,
) -> None:
    problems = preflight.problems(
        settings, services, serves_metrics=serves_metrics, config_file=config_file
    )
    for problem in problems:
        click.echo(f"postwarden: {problem}", err=True)
    if problems:
        sys.exit(EX_CONFIG)


def fail(exc: StartupError) -> None:
    click.echo(f"postwarden: {exc}", err=True)
    sys.exit(EX_CONFIG)
