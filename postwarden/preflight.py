"""Start-up checks: everything outside the config's syntax that would stop
a service, found before anything binds, each with what to fix.

The config loader answers "is the file right?"; these answer "can it run
here?": the service user and groups exist, each unix socket's directory
exists and Postfix can walk to it, the metrics port is free, and root is
refused unless allowed. `postwarden run`, `postwarden milter NAME` and
`postwarden policyd` exit 78 (EX_CONFIG) with the list.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Sequence

from postwarden import privileges, sockets
from postwarden.config import Settings
from postwarden.errors import StartupError


def service_sockets(settings: Settings, services: Sequence[tuple[str, ...]]) -> list[str]:
    """Problems with the unix sockets of `services` (("milter", NAME) or
    ("policyd",))."""
    problems: list[str] = []
    milters = settings.milters.by_name()
    for service in services:
        if service[0] == "milter":
            key, sock = f"milters.{service[1]}.socket", milters[service[1]].socket
        else:
            key, sock = "policyd.socket", settings.policyd.socket
        problems.extend(sockets.check_path(key, sock, settings.privileges))
    return problems


def metrics_port(listen: str) -> list[str]:
    """A problem when host:port cannot be bound now (in use, bad address)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, int(port)))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return [
                f"metrics.listen: {listen} is already in use; stop what listens there"
                f" (ss -ltnp 'sport = :{port}') or pick another port"
            ]
        return [f"metrics.listen: cannot listen on {listen}: {exc.strerror}"]
    return []


def problems(
    settings: Settings, services: Sequence[tuple[str, ...]], *, serves_metrics: bool
) -> list[str]:
    """Every start-up problem for a process running `services`."""
    found: list[str] = []
    try:
        ident = privileges.effective(settings.privileges)
        privileges.check_not_root(settings.privileges)
        found.extend(privileges.python_problems(ident))
    except StartupError as exc:
        found.append(str(exc))
    found.extend(service_sockets(settings, services))
    if serves_metrics and settings.metrics.enabled:
        found.extend(metrics_port(settings.metrics.listen))
    return found
