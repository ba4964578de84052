"""A service removes only the socket it created (issue 10, finding 5).

An orphan of a killed supervisor used to delete, when it finally stopped,
the socket a newer instance had bound at the same path, cutting Postfix off
from the new instance without anyone noticing. Each service now remembers
the inode it bound and leaves a socket file that is no longer its own.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.services import ServiceConfig, ServiceProcess

pytestmark = pytest.mark.integration


def answers_policy(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)  # "did not hang"
        s.connect(path)
        s.sendall(b"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=a@b.example\n\n")
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


def inode(path: str) -> int | None:
    try:
        return Path(path).stat().st_ino
    except FileNotFoundError:
        return None


def connects(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


@pytest.mark.parametrize("service", ["policyd", "noop"])
def test_an_old_instance_stopping_leaves_the_new_instances_socket(
    service: str,
    postwarden_config: Callable[..., ServiceConfig],
    postwarden_service: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    # Given an old instance, and a new one that took over its socket path
    config = postwarden_config(milters=("noop",))
    kind, name = ("policyd", None) if service == "policyd" else ("milter", "noop")
    old = postwarden_service(config, kind, name)
    path = config.socket(service).removeprefix("unix:")
    old_inode = Path(path).stat().st_ino
    new_config = ServiceConfig(tmp_path / "config" / "new.yaml", config.data)
    new_config.path.write_text(config.path.read_text())
    new = ServiceProcess(
        argv=[*old.argv[:-1], str(new_config.path)],
        socket=config.socket(service),
        log_path=tmp_path / f"new-{service}.log",
    )
    # (the new one replaces the socket file at start, as a restarted service does)
    new.start()
    try:
        deadline = time.monotonic() + 30  # "did not hang"
        while inode(path) in (old_inode, None) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert inode(path) not in (old_inode, None)

        # When the old instance stops
        assert old.stop() == 0

        # Then the new instance's socket is still there and still serves
        assert inode(path) not in (old_inode, None)
        assert connects(path)
        if service == "policyd":
            assert answers_policy(path) == b"action=DUNNO\n\n"
        assert "now belongs to another process; leaving it in place" in old.log_text()
    finally:
        new.stop()
    # and the new one, stopping last, removes its own socket
    assert not Path(path).exists()
