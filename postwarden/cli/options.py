"""Options several subcommands share, and loading the config for a command."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from postwarden.config import ConfigError, Settings, config_path, load_config
from postwarden.config.load import ENV_VAR

F = TypeVar("F", bound=Callable[..., Any])

# Exit statuses (sysexits.h): config problems stop daemons with EX_CONFIG so
# systemd's RestartPreventExitStatus can tell them from crashes.
EX_CONFIG = getattr(os, "EX_CONFIG", 78)
EX_UNAVAILABLE = getattr(os, "EX_UNAVAILABLE", 69)


def config_option(f: F) -> F:
    return click.option(
        "-c",
        "--config",
        "config_file",
        envvar=ENV_VAR,
        default=None,
        metavar="FILE",
        help=f"config file (default: ${ENV_VAR}, else /etc/postwarden/postwarden.yaml)",
    )(f)


def load_or_exit(config_file: str | None, status: int = EX_CONFIG) -> tuple[str, Settings]:
    path = config_path(config_file)
    try:
        return path, load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(status)
