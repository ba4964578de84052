"""`milters.attachments`: settings of the attachments milter (milters/attachments)."""

from __future__ import annotations

from dataclasses import dataclass

from postwarden.config.sections.common import MilterSettings


@dataclass(frozen=True, slots=True)
class AttachmentsMilterSettings(MilterSettings):
    """Every key is documented in deploy/postwarden.yaml (milters.attachments)."""
