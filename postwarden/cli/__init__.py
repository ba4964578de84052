"""The `postwarden` command: a click group, one module per subcommand.

Commands wire library code together and hold no decision logic themselves.
"""

from __future__ import annotations

import importlib

import click

from postwarden import __version__

# "module:attribute" of each subcommand; a new command adds one line here.
COMMANDS = [
    "postwarden.cli.run:run",
    "postwarden.cli.service:milter",
    "postwarden.cli.service:policyd",
    "postwarden.cli.serve:serve",
    "postwarden.cli.config:config",
    "postwarden.cli.scan:scan",
    "postwarden.cli.stat:stat",
    "postwarden.cli.learn:learn",
    "postwarden.cli.postfix_config:postfix_config",
    "postwarden.cli.ratelimit:ratelimit",
    "postwarden.cli.greylist:greylist",
    "postwarden.cli.dkim:dkim",
    "postwarden.cli.metrics_server:metrics_server",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="postwarden")
def main() -> None:
    """postwarden: milters and a policy daemon guarding Postfix."""


def _register() -> None:
    for spec in COMMANDS:
        module_name, _, attr = spec.partition(":")
        command = getattr(importlib.import_module(module_name), attr)
        main.add_command(command)


_register()
