"""`milters.spam`: settings of the spam milter (milters/spam)."""

from __future__ import annotations

from dataclasses import dataclass

from postwarden.config.fields import setting
from postwarden.config.sections.bayes import BayesSettings
from postwarden.config.sections.common import MilterSettings


@dataclass(frozen=True, slots=True)
class SpamMilterSettings(MilterSettings):
    """Every key is documented in deploy/postwarden.yaml (milters.spam)."""

    bayes: BayesSettings = setting(factory=BayesSettings)
