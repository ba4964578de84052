"""`milters.headers`: Postfix header_checks/body_checks files and YAML rules."""

from __future__ import annotations

from dataclasses import dataclass

from postwarden.config.fields import setting
from postwarden.config.sections.common import MilterSettings
from postwarden.config.units import FilePath


@dataclass(frozen=True, slots=True)
class HeadersMilterSettings(MilterSettings):
    header_checks: tuple[FilePath, ...] = setting(factory=tuple)
    body_checks: tuple[FilePath, ...] = setting(factory=tuple)
