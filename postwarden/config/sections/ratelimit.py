"""`policyd.ratelimit` and `policyd.sender_login`."""

from __future__ import annotations

from dataclasses import dataclass

from postwarden.config.fields import setting
from postwarden.config.sections.common import Mode


@dataclass(frozen=True, slots=True)
class RatelimitSettings:
    enabled: bool = setting(False)
    mode: Mode = setting(Mode.ENFORCE)


@dataclass(frozen=True, slots=True)
class SenderLoginSettings:
    enabled: bool = setting(False)
    mode: Mode = setting(Mode.ENFORCE)
