"""`policyd.greylist`: postgrey-compatible greylisting."""

from __future__ import annotations

from dataclasses import dataclass

from postwarden.config.fields import setting
from postwarden.config.sections.common import Mode
from postwarden.config.units import Duration


@dataclass(frozen=True, slots=True)
class GreylistSettings:
    enabled: bool = setting(False)
    mode: Mode = setting(Mode.ENFORCE)
    delay: Duration = setting(Duration(300), min=0)
