"""`postwarden scan`: the content pipeline offline, on message files.

Runs the very `evaluate` functions the adapter calls under Postfix, for every
enabled milter in smtpd_milters order, and prints each verdict and the
combined action. Envelope options replay what Postfix would have sent.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from milters.engine import ORDER, Engine, builders
from milters.message import Action, Envelope, Message, Verdict
from postwarden.cli.options import EX_CONFIG, config_option, load_or_exit
from postwarden.config import ConfigError
from postwarden.config.errors import ConfigProblem
from postwarden.config.schema import Settings


@dataclass
class ScanResult:
    file: str
    action: Action
    score: float
    required_score: float | None
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        symbols: dict[str, Any] = {}
        for verdict in self.verdicts.values():
            for s in verdict.symbols:
                symbols[s.name] = {
                    "score": s.score,
                    "description": s.description,
                    "options": list(s.options),
                }
        milters: dict[str, Any] = {}
        for name, verdict in self.verdicts.items():
            entry: dict[str, Any] = {"action": verdict.action.value, "reason": verdict.reason}
            if verdict.reply is not None:
                entry["reply"] = str(verdict.reply)
            if verdict.header_edits:
                entry["headers"] = [
                    {"op": e.op.value, "name": e.name, "value": e.value}
                    for e in verdict.header_edits
                ]
            if verdict.score is not None:
                entry["score"] = verdict.score
            entry.update({k: _plain(v) for k, v in verdict.details.items()})
            milters[name] = entry
        for name, error in self.errors.items():
            milters[name] = {"action": "error", "reason": error}
        return {
            "file": self.file,
            "action": self.action.value,
            "score": self.score,
            "required_score": self.required_score,
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


def enabled_engines(settings: Settings) -> list[Engine]:
    """Build every enabled milter engine, in smtpd_milters order."""
    problems: list[ConfigProblem] = []
    table = builders()
    configured = settings.milters.by_name()
    engines = []
    for name in ORDER:
        if name not in table or not configured[name].enabled:
            continue
        engine = table[name](settings, problems)
        if engine is not None:
            engines.append(engine)
    for p in problems:
        if p.severity != "error":
            click.echo(str(p), err=True)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise ConfigError(errors)
    return engines


def combine(verdicts: Sequence[Verdict]) -> Action:
    """Postfix stops at the first milter that rejects, tempfails or discards;
    otherwise the strongest action wins (quarantine over add_header)."""
    action = Action.ACCEPT
    for v in verdicts:
        if v.action.is_final:
            return v.action
        if v.action.severity > action.severity:
            action = v.action
    return action


def scan_message(
    name: str,
    raw: bytes,
    env: Envelope,
    engines: Sequence[Engine],
    max_body_size: int | None = None,
) -> ScanResult:
    msg = Message.from_bytes(raw, max_body_size)
    if not env.queue_id:
        env = Envelope(**{**_fields(env), "queue_id": "SCAN"})
    result = ScanResult(name, Action.ACCEPT, 0.0, None)
    for engine in engines:
        try:
            verdict = engine.evaluate(msg, env)
        except Exception as exc:  # the adapter would apply on_error here
            result.errors[engine.name] = f"{type(exc).__name__}: {exc}"
            continue
        result.verdicts[engine.name] = verdict
        if verdict.score is not None:
            result.score = verdict.score
            result.required_score = verdict.required_score
        if verdict.action.is_final:
            break
    result.action = combine(list(result.verdicts.values()))
    return result


def _fields(env: Envelope) -> dict[str, Any]:
    return {f: getattr(env, f) for f in Envelope.__dataclass_fields__}


def _print_text(result: ScanResult) -> None:
    click.echo(f"{result.file}: {result.action.value}")
    if result.required_score is not None:
        click.echo(f"  score: {result.score:.2f} / {result.required_score:.2f}")
    for name, v in result.verdicts.items():
        line = f"  {name}: {v.action.value}"
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
    for name, error in result.errors.items():
        click.echo(f"  {name}: error ({error})")


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
    try:
        engines = enabled_engines(settings)
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
    )
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
        result = scan_message(name, raw, env, engines)
        if as_json:
            click.echo(json.dumps(result.as_json(), ensure_ascii=False))
        else:
            _print_text(result)
    sys.exit(status)
