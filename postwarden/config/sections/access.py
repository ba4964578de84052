"""`policyd.access`: static allow/deny rules, like a Postfix access(5) table."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from postwarden.config.errors import FieldProblem, Finding
from postwarden.config.fields import setting
from postwarden.config.sections.common import CheckSettings

# The actions SMTPD_POLICY_README allows in a policy reply (access(5)).
_ACTION = re.compile(
    r"^([45]\d\d|DUNNO|OK|REJECT|DEFER|DEFER_IF_PERMIT|DEFER_IF_REJECT|HOLD|DISCARD|PREPEND|WARN)"
    r"(\s|$)",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class AccessRule:
    """Matches when every given field matches (address, @domain, or domain)."""

    action: str = setting("DUNNO", doc='Postfix action, e.g. "REJECT no thanks", "450 4.7.1 x"')
    sender: str | None = setting(None)
    recipient: str | None = setting(None)
    client_address: str | None = setting(None, doc="IP or CIDR")

    def validate_node(self) -> list[Finding]:
        problems: list[Finding] = []
        if not _ACTION.match(self.action.strip()):
            problems.append(FieldProblem(
                "action",
                f"{self.action!r} is not a Postfix action (NNN text, OK, DUNNO, "
                "REJECT, DEFER, DEFER_IF_PERMIT, HOLD, DISCARD, PREPEND, WARN)",
            ))  # fmt: skip
        elif self.action.strip().upper().startswith("PREPEND") and ":" not in self.action:
            problems.append(
                FieldProblem("action", "PREPEND needs a header like 'PREPEND X-Name: value'")
            )
        if self.client_address is not None:
            try:
                ipaddress.ip_network(self.client_address, strict=False)
            except ValueError:
                problems.append(FieldProblem(
                    "client_address", f"{self.client_address!r} is not an IP or CIDR"
                ))  # fmt: skip
        return problems


@dataclass(frozen=True, slots=True)
class AccessSettings(CheckSettings):
    enabled: bool = setting(True)
    rules: tuple[AccessRule, ...] = setting(factory=tuple)
