"""Which user the services run as and who may reach their sockets.

Like the Debian packages of OpenDKIM (`UserID`) and Rspamd (`--user`):
started as root, a service binds its socket, hands it to the service user
and `socket_group`, and switches to the service user before it reads any
mail. Started as that user (or any other non-root user) it runs as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from postwarden.config.fields import setting


@dataclass(frozen=True, slots=True)
class PrivilegeSettings:
    user: str | None = setting(
        "postwarden", doc="service user; null = keep the user that started it"
    )
    group: str | None = setting(None, doc="service group; null = the user's primary group")
    socket_group: str | None = setting(
        "postfix", doc="group given rw on unix sockets (Postfix's smtpd); null = owner only"
    )
    allow_root: bool = setting(False, doc="let the services run as root (not advised)")

    def validate_node(self) -> list[str]:
        problems = []
        for key in ("user", "group", "socket_group"):
            value = getattr(self, key)
            if value is not None and (not value or any(c in value for c in ": \t\n")):
                problems.append(f"{key}: {value!r} is not a user or group name")
        return problems
