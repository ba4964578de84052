"""`postwarden milter NAME` and `postwarden policyd`: one service, foreground."""

from __future__ import annotations

import os
import sys

import click

from postwarden import metrics, parentdeath
from postwarden.cli import startup
from postwarden.cli.options import EX_CONFIG, config_option, load_or_exit
from postwarden.config import ConfigError
from postwarden.errors import PostwardenError, StartupError


@click.command()
@config_option
@click.argument("name")
def milter(config_file: str | None, name: str) -> None:
    """Run the milter NAME in the foreground (see `postwarden milter --help`)."""
    from milters import registry, service

    parentdeath.follow_supervisor()
    path, settings = load_or_exit(config_file)
    startup.setup_logging(settings)
    if name not in registry.specs():
        known = ", ".join(registry.names())
        raise click.BadParameter(f"unknown milter {name!r}; known: {known}", param_hint="NAME")
    alone = not os.environ.get(metrics.MULTIPROC_ENV)  # under `run` the supervisor serves
    startup.check_or_exit(settings, [("milter", name)], serves_metrics=alone, config_file=path)
    try:
        sys.exit(service.serve(name, path, settings))
    except StartupError as exc:
        startup.fail(exc)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EX_CONFIG)
    except PostwardenError as exc:
        click.echo(f"postwarden milter {name}: {exc}", err=True)
        sys.exit(1)


@click.command()
@config_option
def policyd(config_file: str | None) -> None:
    """Run the policy daemon in the foreground."""
    from policyd import service

    parentdeath.follow_supervisor()
    path, settings = load_or_exit(config_file)
    startup.setup_logging(settings)
    alone = not os.environ.get(metrics.MULTIPROC_ENV)  # under `run` the supervisor serves
    startup.check_or_exit(settings, [("policyd",)], serves_metrics=alone, config_file=path)
    try:
        sys.exit(service.run(path, settings))
    except StartupError as exc:
        startup.fail(exc)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EX_CONFIG)
    except PostwardenError as exc:
        click.echo(f"postwarden policyd: {exc}", err=True)
        sys.exit(1)
