"""`postwarden config check`: validate the file and what it names."""

from __future__ import annotations

import sys

import click

from postwarden import protections
from postwarden.cli.options import config_option
from postwarden.config import ConfigError, Settings, config_path, load_config
from postwarden.config.errors import ConfigProblem
from postwarden.redact import mask_url

EX_PROBLEMS = 2


@click.group()
def config() -> None:
    """Inspect the configuration."""


def service_problems(settings: Settings) -> list[ConfigProblem]:
    """Problems found by compiling what services load (rule and list files)."""
    from milters.context import ServiceContext
    from milters.registry import specs
    from policyd.pipeline import build_pipeline

    problems: list[ConfigProblem] = []
    for name, msettings in settings.milters.by_name().items():
        spec = specs().get(name)
        if msettings.enabled and spec is not None:
            ctx = ServiceContext(settings)
            spec.build(ctx)
            problems.extend(ctx.problems)
    if settings.policyd.enabled:
        build_pipeline(settings, problems)
    return problems


def summary(path: str, settings: Settings) -> list[str]:
    redis = settings.redis
    if redis.sentinel is not None:
        target = f"sentinel {','.join(redis.sentinel.hosts)} service {redis.sentinel.service}"
    elif redis.url:
        target = mask_url(redis.url) + (" (cluster)" if redis.cluster else "")
    else:
        target = f"embedded redis-server under {settings.state_dir}/redis"
    lines = [f"{path}: OK", f"  redis: {target} (prefix {redis.prefix!r})"]
    for name, m in settings.milters.by_name().items():
        state = "enabled " if m.enabled else "disabled"
        lines.append(f"  milter {name:<12} {state} {m.socket} on_error={m.on_error.value}")
    p = settings.policyd
    lines.append(
        f"  policyd             {'enabled ' if p.enabled else 'disabled'} {p.socket}"
        f" on_error={p.on_error.value}"
    )
    from policyd.registry import specs

    served = specs()
    blocks = p.checks()

    def check_state(name: str) -> str:
        if name not in served:
            return " (not in this version)"
        return "" if blocks[name].enabled else " (off)"

    order = " -> ".join(f"{n}{check_state(n)}" for n in p.order)
    lines.append(f"    checks: {order}")
    return lines


@config.command()
@config_option
def check(config_file: str | None) -> None:
    """Exit 0 with a summary, or 2 with FILE:LINE: key: reason per problem."""
    path = config_path(config_file)
    try:
        settings = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(EX_PROBLEMS)
    problems = service_problems(settings)
    for problem in problems:
        click.echo(str(problem), err=True)
    if any(p.severity == "error" for p in problems):
        sys.exit(EX_PROBLEMS)
    from milters.registry import names

    for line in [*summary(path, settings), *protections.summary(settings, names())]:
        click.echo(line)
    warnings = sum(1 for p in problems if p.severity != "error")
    if warnings:
        click.echo(f"  {warnings} warning(s): the lines named above are skipped, the rest loads")
