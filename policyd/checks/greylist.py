"""Placeholder until the greylist check lands: disabled, answers nothing."""

from __future__ import annotations

from postwarden.config.errors import ConfigProblem
from postwarden.config.schema import Settings
from policyd.pipeline import BuiltCheck


def build(settings: Settings, problems: list[ConfigProblem]) -> BuiltCheck | None:
    return None
