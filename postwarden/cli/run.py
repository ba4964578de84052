"""`postwarden run`: every enabled service under one supervisor."""

from __future__ import annotations

import logging
import sys

import click

from postwarden.cli import startup
from postwarden.cli.config import service_problems
from postwarden.cli.options import EX_CONFIG, config_option
from postwarden.config import ConfigError, Settings, config_path
from postwarden.config.load import load_config_text, read_config_text
from postwarden.errors import PostwardenError, StartupError

log = logging.getLogger("postwarden.supervisor")


def enabled_services(settings: Settings) -> list[tuple[str, ...]]:
    """The `postwarden` subcommands `run` keeps running for these settings."""
    from milters.registry import specs

    services: list[tuple[str, ...]] = []
    available = specs()
    for name, m in settings.milters.by_name().items():
        if m.enabled and name in available:
            services.append(("milter", name))
        elif m.enabled:
            log.info("milter %s is enabled but not part of this version; not started", name)
    if settings.policyd.enabled:
        services.append(("policyd",))
    return services


@click.command()
@config_option
def run(config_file: str | None) -> None:
    """Start every enabled service; restart crashed ones; SIGHUP reloads."""
    from postwarden.supervisor import Supervisor

    path = config_path(config_file)
    try:
        # Read once: what is validated here is what the children will run.
        text = read_config_text(path)
        settings = load_config_text(text, path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EX_CONFIG)
    startup.setup_logging(settings)
    problems = service_problems(settings)
    for problem in problems:
        click.echo(str(problem), err=True)
    if any(p.severity == "error" for p in problems):
        sys.exit(EX_CONFIG)
    # The children read (and reload) the supervisor's copy, running.yaml,
    # which it makes readable to them; the files the config names they read
    # themselves.
    startup.check_or_exit(settings, enabled_services(settings), serves_metrics=True)
    try:
        sys.exit(Supervisor(path, settings, enabled_services, config_text=text).run())
    except StartupError as exc:
        startup.fail(exc)
    except PostwardenError as exc:
        click.echo(f"postwarden run: {exc}", err=True)
        sys.exit(1)
