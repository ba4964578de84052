"""`policyd.spf`: SPF (RFC 7208) on MAIL FROM and HELO."""

from __future__ import annotations

from dataclasses import dataclass

from postwarden.config.fields import setting
from postwarden.config.sections.common import Mode


@dataclass(frozen=True, slots=True)
class SpfSettings:
    enabled: bool = setting(False)
    mode: Mode = setting(Mode.ENFORCE)
