"""A single service under systemd (deploy/systemd/postwarden@.service,
WatchdogSec=) pings WATCHDOG=1 on its own: policyd from its event loop, a
milter while libmilter's thread lives (sd_watchdog_enabled(3))."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from postwarden.store.embedded import EmbeddedRedis
from tests.harness.services import ServiceProcess, service_argv, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(30)  # bounds a hung test only
        yield s, path


def messages(s: socket.socket, until: bytes, count: int) -> list[bytes]:
    """Datagrams received until `until` was seen `count` times."""
    got: list[bytes] = []
    while got.count(until) < count:
        got.append(s.recv(4096).strip())
    return got


@pytest.mark.parametrize(("kind", "name"), [("policyd", None), ("milter", "noop")])
def test_a_single_service_pings_the_watchdog_after_ready(
    kind: str,
    name: str | None,
    notify: tuple[socket.socket, str],
    tmp_path: Path,
    socket_dir: Path,
    redis_server: EmbeddedRedis,
) -> None:
    s, path = notify
    cfg = write_config(tmp_path / "cfg", socket_dir, redis_server.socket, milters=("noop",))
    service = ServiceProcess(
        service_argv(cfg, kind, name),
        cfg.socket(name or kind),
        tmp_path / "service.log",
        env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"},  # pings every 0.2 s
    ).start()
    try:
        got = messages(s, b"WATCHDOG=1", 3)
    finally:
        assert service.stop() == 0
    assert got.index(b"READY=1") < got.index(b"WATCHDOG=1")
