"""`policyd`: the policy daemon and the order of its checks."""

from __future__ import annotations

from dataclasses import dataclass

from postwarden.config.fields import setting
from postwarden.config.sections.access import AccessSettings
from postwarden.config.sections.common import OnError
from postwarden.config.sections.greylist import GreylistSettings
from postwarden.config.sections.ratelimit import RatelimitSettings, SenderLoginSettings
from postwarden.config.sections.spf import SpfSettings
from postwarden.config.units import Duration, SocketAddress

CHECK_NAMES = ("access", "sender_login", "ratelimit", "spf", "greylist")


@dataclass(frozen=True, slots=True)
class PolicydSettings:
    enabled: bool = setting(True)
    socket: SocketAddress = setting(
        SocketAddress("unix", path="/var/spool/postfix/private/postwarden-policy")
    )
    on_error: OnError = setting(OnError.ACCEPT)
    order: tuple[str, ...] = setting(CHECK_NAMES, doc="checks in the order they run")
    warn_header: str = setting("X-Postwarden-Warn", doc="header PREPENDed by checks in warn mode")
    max_line: int = setting(4096, min=256, max=1024 * 1024)
    max_attributes: int = setting(100, min=10, max=10000)
    idle_timeout: Duration = setting(Duration(300.0), min=1, doc="Postfix reuses for 100s")
    request_timeout: Duration = setting(
        Duration(20.0), min=0.1, doc="below smtpd_policy_service_timeout"
    )
    max_connections: int = setting(256, min=1, max=100000)
    access: AccessSettings = setting(factory=AccessSettings)
    sender_login: SenderLoginSettings = setting(factory=SenderLoginSettings)
    ratelimit: RatelimitSettings = setting(factory=RatelimitSettings)
    spf: SpfSettings = setting(factory=SpfSettings)
    greylist: GreylistSettings = setting(factory=GreylistSettings)

    def validate_node(self) -> list[str]:
        problems = []
        for name in self.order:
            if name not in CHECK_NAMES:
                problems.append(f"order: unknown check {name!r} (known: {', '.join(CHECK_NAMES)})")
        if len(set(self.order)) != len(self.order):
            problems.append("order: a check is listed twice")
        return problems
