"""Start-up checks: everything outside the config's syntax that would stop
a service, found before anything binds, each with what to fix.

The config loader answers "is the file right?"; these answer "can it run
here?": the service user and groups exist, each unix socket's directory
exists and Postfix can walk to it, the config file and every file it names
stay readable after the drop to the service user (a reload re-reads them
as that user), the metrics port is free, and root is refused unless
allowed. `postwarden run`, `postwarden milter NAME` and
`postwarden policyd` exit 78 (EX_CONFIG) with the list.
"""

from __future__ import annotations

import dataclasses
import errno
import socket
from collections.abc import Iterator, Sequence
from typing import Any

from postwarden import privileges, sockets
from postwarden.config import Settings
from postwarden.config.units import FilePath
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


def named_files(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(config key, path) of every file the settings name (FilePath values)."""
    if isinstance(node, FilePath):
        yield key, str(node)
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            yield from named_files(getattr(node, f.name), f"{key}.{f.name}".lstrip("."))
    elif isinstance(node, tuple | list):
        for i, item in enumerate(node):
            yield from named_files(item, f"{key}[{i}]")
    elif isinstance(node, dict):
        for name, item in node.items():
            yield from named_files(item, f"{key}.{name}")


def readable_files(
    settings: Settings, config_file: str | None, ident: privileges.Identity | None
) -> list[str]:
    """Files the service user could not read after the drop: the config and
    the files it names. Start-up reads them as root, so they would fail only
    at the next reload (SIGHUP), as that user: say so now."""
    if ident is None or ident.uid == 0:
        return []
    named = [("config file", config_file)] if config_file else []
    named += list(named_files(settings))
    found = []
    for key, path in named:
        try:
            blocked = privileges.unreadable(path, ident)
        except OSError:
            continue  # gone since it was loaded: the loader's own error says so
        if blocked is not None:
            found.append(
                f"{key}: {path} is not readable by user {ident.user} ({blocked} is closed to"
                f" it), and reloads read it as that user; e.g. chgrp {ident.user} {path} and"
                f" chmod g+r {path}"
            )
    return found


def problems(
    settings: Settings,
    services: Sequence[tuple[str, ...]],
    *,
    serves_metrics: bool,
    config_file: str | None = None,
) -> list[str]:
    """Every start-up problem for a process running `services`."""
    found: list[str] = []
    try:
        ident = privileges.effective(settings.privileges)
        privileges.check_not_root(settings.privileges)
        found.extend(privileges.python_problems(ident))
        found.extend(readable_files(settings, config_file, ident))
    except StartupError as exc:
        found.append(str(exc))
    found.extend(service_sockets(settings, services))
    if serves_metrics and settings.metrics.enabled:
        found.extend(metrics_port(settings.metrics.listen))
    return found
