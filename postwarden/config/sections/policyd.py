"""`policyd`: the policy daemon and the order of its checks.

Every field whose type is a `CheckSettings` is a policy check: its YAML key
is the check's name, `policyd.order` may list it, and the order of those
fields is the default order. Adding a check is a field here, its section
module and `policyd/checks/<name>.py` declaring `CHECK`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from postwarden.config.errors import FieldProblem, Finding
from postwarden.config.fields import setting
from postwarden.config.sections.access import AccessSettings
from postwarden.config.sections.common import CheckSettings, OnError
from postwarden.config.sections.greylist import GreylistSettings
from postwarden.config.sections.ratelimit import RatelimitSettings, SenderLoginSettings
from postwarden.config.sections.spf import SpfSettings
from postwarden.config.units import Duration, Network, SocketAddress, parse_network

# The policy protocol has no authentication: an inet listener answers only
# these clients unless the admin lists others (Postfix's own hosts).
LOOPBACK: tuple[Network, ...] = (parse_network("127.0.0.0/8"), parse_network("::1/128"))


@dataclass(frozen=True, slots=True)
class PolicydSettings:
    enabled: bool = setting(True)
    socket: SocketAddress = setting(
        SocketAddress("unix", path="/var/spool/postfix/private/postwarden-policy")
    )
    on_error: OnError = setting(OnError.ACCEPT)
    order: tuple[str, ...] = setting(
        factory=lambda: CHECK_NAMES, doc="checks in the order they run"
    )
    warn_header: str = setting("X-Postwarden-Warn", doc="header PREPENDed by checks in warn mode")
    max_line: int = setting(4096, min=256, max=1024 * 1024)
    max_attributes: int = setting(100, min=10, max=10000)
    idle_timeout: Duration = setting(Duration(300.0), min=1, doc="Postfix reuses for 100s")
    request_timeout: Duration = setting(
        Duration(20.0), min=0.1, doc="below smtpd_policy_service_timeout"
    )
    max_connections: int = setting(256, min=1, max=100000)
    allowed_clients: tuple[Network, ...] = setting(
        LOOPBACK, doc="inet socket only: client networks that may connect"
    )
    access: AccessSettings = setting(factory=AccessSettings)
    sender_login: SenderLoginSettings = setting(factory=SenderLoginSettings)
    ratelimit: RatelimitSettings = setting(factory=RatelimitSettings)
    spf: SpfSettings = setting(factory=SpfSettings)
    greylist: GreylistSettings = setting(factory=GreylistSettings)

    def validate_node(self) -> list[Finding]:
        problems: list[Finding] = []
        seen: set[str] = set()
        for i, name in enumerate(self.order):
            if name not in CHECK_NAMES:
                problems.append(FieldProblem(
                    f"order[{i}]", f"unknown check {name!r} (known: {', '.join(CHECK_NAMES)})"
                ))  # fmt: skip
            elif name in seen:
                problems.append(FieldProblem(f"order[{i}]", f"{name!r} is listed twice"))
            seen.add(name)
        return problems

    def checks(self) -> dict[str, CheckSettings]:
        """Every check's block by its name, in the default order."""
        return {name: getattr(self, name) for name in CHECK_NAMES}


def _check_names(cls: type) -> tuple[str, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(
        f.name
        for f in dataclasses.fields(cls)
        if isinstance(hints[f.name], type) and issubclass(hints[f.name], CheckSettings)
    )


# The checks `policyd.order` may name, in their default order.
CHECK_NAMES: tuple[str, ...] = _check_names(PolicydSettings)
