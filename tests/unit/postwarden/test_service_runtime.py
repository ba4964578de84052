"""What a service does for its host: systemd's watchdog, syslog lines with
the queue ID first, `postwarden serve NAME` for the template unit."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from postwarden import logs, sdnotify
from postwarden.cli import main
from postwarden.errors import StartupError


@pytest.fixture
def datagram_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "dgram")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(5)
        yield s, path


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_watchdog_pings_every_half_interval(
    datagram_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = datagram_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    now = [100.0]
    dog = sdnotify.Watchdog({"WATCHDOG_USEC": "30000000"}, clock=lambda: now[0])
    assert dog.interval == 15.0
    assert dog.tick() is True  # the first tick pings at once
    assert sock.recv(64) == b"WATCHDOG=1"
    now[0] += 14.9
    assert dog.tick() is False
    now[0] += 0.1
    assert dog.tick() is True
    assert sock.recv(64) == b"WATCHDOG=1"


def test_watchdog_is_off_without_systemd_or_for_another_pid() -> None:
    assert sdnotify.Watchdog({}).tick() is False
    other = str(os.getpid() + 1)
    assert sdnotify.Watchdog({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": other}).interval is None


def test_syslog_lines_carry_tag_pid_and_queue_id_first(
    datagram_socket: tuple[socket.socket, str], restore_logging: None
) -> None:
    sock, path = datagram_socket
    logs.setup("info", "text", target="syslog", syslog_address=path)
    log = logging.getLogger("postwarden.policyd")
    with logs.context(queue="4F2XQ1"):
        logs.decision(log, {"action": "DUNNO", "client": "192.0.2.1"})
        log.warning("redis unavailable")
    # facility mail (2) * 8 + severity info (6) = 22; warning (4) = 20
    first = sock.recv(4096).decode()
    assert first == (
        f"<22>postwarden/policyd[{os.getpid()}]: 4F2XQ1: decision action=DUNNO client=192.0.2.1\x00"
    )
    second = sock.recv(4096).decode()
    assert (
        second == f"<20>postwarden/policyd[{os.getpid()}]: 4F2XQ1: warning: redis unavailable\x00"
    )


def test_syslog_without_a_socket_is_a_startup_error(tmp_path: Path) -> None:
    with pytest.raises(
        StartupError, match=r"log.target: syslog: cannot reach .*log.target: stderr"
    ):
        logs.setup("info", "text", target="syslog", syslog_address=str(tmp_path / "no-log"))


def test_serve_names_policyd_or_a_milter_in_one_word() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    assert "policyd` or a milter NAME" in result.output
    unknown = CliRunner().invoke(main, ["serve", "no-such", "-c", "/dev/null"])
    assert unknown.exit_code != 0
