"""`milters.dkim`: settings of the dkim milter (milters/dkim)."""

from __future__ import annotations

from dataclasses import dataclass

from postwarden.config.sections.common import MilterSettings


@dataclass(frozen=True, slots=True)
class DkimMilterSettings(MilterSettings):
    """Every key is documented in deploy/postwarden.yaml (milters.dkim)."""
