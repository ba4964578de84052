"""Placeholder until the header-checks engine lands: accepts everything."""

from __future__ import annotations

from postwarden.config.errors import ConfigProblem
from postwarden.config.schema import Settings
from milters.engine import Engine


def build(settings: Settings, problems: list[ConfigProblem]) -> Engine | None:
    return None
