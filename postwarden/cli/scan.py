"""`postwarden scan`: the content pipeline offline, on message files.

Runs `milters.pipeline`, the path the adapter takes under Postfix (budget,
on_error, warn mode, body cap, combining), for every enabled milter in
smtpd_milters order, and prints each verdict and the combined action.
Envelope options replay what Postfix would have sent.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from typing import Any

import click

from milters import pipeline, registry
from milters.context import ServiceContext
from milters.message import Envelope
from milters.pipeline import PipelineResult, Runner, Stage
from milters.service import build_stage
from postwarden.cli.options import EX_CONFIG, config_option, load_or_exit
from postwarden.config import ConfigError
from postwarden.config.errors import ConfigProblem


def result_json(result: PipelineResult) -> dict[str, Any]:
    """The `scan --json` object (ARCHITECTURE.md, "The user-facing contract")."""
    symbols: dict[str, Any] = {}
    milters: dict[str, Any] = {}
    for r in result.results:
        verdict = r.verdict
        for s in verdict.symbols:
            symbols[s.name] = {
                "score": s.score,
                "description": s.description,
                "options": list(s.options),
            }
        entry: dict[str, Any] = {"action": verdict.action.value, "reason": verdict.reason}
        if r.outcome != "ok":
            entry["outcome"] = r.outcome
        if verdict.reply is not None:
            entry["reply"] = str(verdict.reply)
        if verdict.header_edits:
            entry["headers"] = [
                {"op": e.op.value, "name": e.name, "value": e.value} for e in verdict.header_edits
            ]
        if verdict.new_body is not None:
            entry["body_replaced"] = True
        if verdict.add_recipients:
            entry["add_recipients"] = list(verdict.add_recipients)
        if verdict.remove_recipients:
            entry["remove_recipients"] = list(verdict.remove_recipients)
        if verdict.score is not None:
            entry["score"] = verdict.score
        if r.engine_verdict is not None and r.engine_verdict is not verdict:
            entry["engine_action"] = r.engine_verdict.action.value
        for k, v in verdict.details.items():
            entry.setdefault(k, _plain(v))
        milters[r.name] = entry
    return {
        "file": result.file,
        "action": result.action.value,
        "score": result.score,
        "required_score": result.required_score,
        "symbols": symbols,
        "milters": milters,
    }


def _plain(value: object) -> object:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def enabled_stages(service: ServiceContext) -> list[Stage]:
    """Build every enabled milter, in smtpd_milters order; ConfigError on
    fatal problems, warnings printed to stderr."""
    settings = service.settings
    configured = settings.milters.by_name()
    stages = []
    errors: list[ConfigProblem] = []
    for name in registry.names():
        if name not in configured or not configured[name].enabled:
            continue
        try:
            stages.append(build_stage(name, settings, service))
        except ConfigError as exc:
            errors.extend(exc.problems)
        for p in service.problems:
            if p.severity != "error":
                click.echo(str(p), err=True)
    if errors:
        raise ConfigError(errors)
    return stages


def _print_text(result: PipelineResult) -> None:
    click.echo(f"{result.file}: {result.action.value}")
    if result.required_score is not None:
        click.echo(f"  score: {result.score:.2f} / {result.required_score:.2f}")
    for r in result.results:
        name, v = r.name, r.verdict
        line = f"  {name}: {v.action.value}"
        if r.outcome != "ok":
            line += f" ({r.outcome})"
        if v.reply is not None:
            line += f" [{v.reply}]"
        if v.reason:
            line += f" ({v.reason})"
        click.echo(line)
        for key, value in v.details.items():
            click.echo(f"    {key}: {value}")
        for e in v.header_edits:
            click.echo(f"    header {e.op.value}: {e.name}: {e.value}")
        for s in v.symbols:
            opts = f" [{', '.join(s.options)}]" if s.options else ""
            click.echo(f"    {s.name:<28} {s.score:+7.2f}{opts}")


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="one JSON object per message")
@click.option("--from", "mail_from", default="", help="envelope sender (MAIL FROM)")
@click.option("--rcpt", "rcpts", multiple=True, help="envelope recipient (repeatable)")
@click.option("--ip", "client_ip", default=None, help="client IP address")
@click.option("--helo", default="", help="HELO/EHLO name")
@click.option("--authenticated", "auth_user", default="", metavar="USER", help="SASL login")
@click.argument("files", nargs=-1, required=True, type=click.Path(allow_dash=True))
def scan(
    config_file: str | None,
    as_json: bool,
    mail_from: str,
    rcpts: tuple[str, ...],
    client_ip: str | None,
    helo: str,
    auth_user: str,
    files: tuple[str, ...],
) -> None:
    """Run every enabled milter on FILES (or - for stdin) and print the verdicts."""
    _, settings = load_or_exit(config_file)
    service = ServiceContext(settings)
    try:
        stages = enabled_stages(service)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EX_CONFIG)
    address = None
    if client_ip:
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            raise click.BadParameter(f"not an IP address: {client_ip}", param_hint="--ip") from None
    env = Envelope(
        client_address=address,
        helo=helo,
        mail_from=mail_from,
        recipients=rcpts,
        auth_user=auth_user,
        queue_id="SCAN",
    )
    runner = Runner(service)
    status = 0
    for name in files:
        try:
            if name == "-":
                raw = sys.stdin.buffer.read()
            else:
                with open(name, "rb") as fh:
                    raw = fh.read()
        except OSError as exc:
            click.echo(f"{name}: cannot read: {exc.strerror}", err=True)
            status = 1
            continue
        result = pipeline.scan(runner, stages, raw, env, name)
        if as_json:
            click.echo(json.dumps(result_json(result), ensure_ascii=False))
        else:
            _print_text(result)
    runner.close()
    service.close()
    sys.exit(status)
