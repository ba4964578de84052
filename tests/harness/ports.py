"""Loopback ports and directories that the `postfix` user can reach.

Tests never use fixed ports. When a program must bind a port itself
(Postfix's master reads it from master.cf) we ask the kernel for a free one
and hand it over; the tiny window in which another process could take it is
covered by callers retrying on a bind failure.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def make_traversable(path: Path) -> None:
    """Give every directory from `path` up to / the search (x) bit for others.

    Postfix's smtpd runs as user `postfix` and must walk the directories
    down to our config, queue and socket files; `mkdtemp` (and pytest's
    tmp_path root) create 0700 directories. Only the search bit is added:
    names stay unlistable for other users.
    """
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(directory, stat.S_IMODE(mode) | stat.S_IXOTH | stat.S_IXGRP)


def shared_tempdir(prefix: str) -> Path:
    """A fresh 0755 directory under the system temp dir, reachable by postfix.

    Short paths matter: a unix socket path must fit in sun_path (108 bytes).
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    make_traversable(path)
    return path


def wait_for_banner(host: str, port: int, timeout: float = 30.0) -> bytes:
    """Poll until an SMTP server on host:port sends its 220 greeting."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    delay = 0.01
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2.0) as s:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                banner = s.recv(512)
                if banner.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return banner
                last = RuntimeError(f"unexpected greeting {banner!r}")
        except OSError as exc:
            last = exc
        time.sleep(delay)  # polling back-off, not a readiness guess
        delay = min(delay * 2, 0.2)
    raise TimeoutError(f"no SMTP greeting from {host}:{port} within {timeout}s: {last}")


def wait_for_unix_socket(path: Path, timeout: float = 30.0) -> None:
    """Poll until a unix stream socket at `path` accepts a connection."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    delay = 0.01
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2.0)
                s.connect(str(path))
                return
        except OSError as exc:
            last = exc
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise TimeoutError(f"nothing accepts connections on {path} within {timeout}s: {last}")


def wait_for_tcp(host: str, port: int, timeout: float = 30.0) -> None:
    """Poll until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    delay = 0.01
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2.0):
                return
        except OSError as exc:
            last = exc
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise TimeoutError(f"nothing accepts connections on {host}:{port} within {timeout}s: {last}")
