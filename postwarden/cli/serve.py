"""`postwarden serve NAME`: one service named by one word, for systemd's
template unit `postwarden@NAME.service` (an instance name is one word, so
`postwarden@policyd` and `postwarden@headers` need a command that takes
either)."""

from __future__ import annotations

import click

from postwarden.cli.options import config_option


@click.command()
@config_option
@click.argument("name")
@click.pass_context
def serve(ctx: click.Context, config_file: str | None, name: str) -> None:
    """Run one service in the foreground: `policyd` or a milter NAME."""
    from postwarden.cli.service import milter, policyd

    if name == "policyd":
        ctx.invoke(policyd, config_file=config_file)
    else:
        ctx.invoke(milter, config_file=config_file, name=name)
