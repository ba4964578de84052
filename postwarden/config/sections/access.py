"""`policyd.access`: static allow/deny rules, like a Postfix access(5) table."""

from __future__ import annotations

from dataclasses import dataclass

from postwarden.config.fields import setting
from postwarden.config.sections.common import Mode


@dataclass(frozen=True, slots=True)
class AccessRule:
    """Matches when every given field matches (address, @domain, or domain)."""

    action: str = setting(doc='Postfix action, e.g. "REJECT no thanks", "DEFER", "OK"')
    sender: str | None = setting(None)
    recipient: str | None = setting(None)
    client_address: str | None = setting(None, doc="IP or CIDR")


@dataclass(frozen=True, slots=True)
class AccessSettings:
    enabled: bool = setting(True)
    mode: Mode = setting(Mode.ENFORCE)
    rules: tuple[AccessRule, ...] = setting(factory=tuple)
