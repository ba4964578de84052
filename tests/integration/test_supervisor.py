"""`postwarden run` as shipped: embedded Redis, children, restarts, reloads, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postwarden.store.embedded import answers, socket_path
from tests.conftest import REPO

CONFIG = """\
state_dir: {tmp}/state
# as root in a 0700 tmp dir, no Postfix: stay root, owner-only sockets
privileges: {{user: null, allow_root: true, socket_group: null}}
milters:
  headers: {{enabled: false}}
  attachments: {{enabled: false}}
  dkim: {{enabled: false}}
  spam: {{enabled: false}}
  noop: {{enabled: true, socket: "unix:{tmp}/noop.sock"}}
policyd:
  socket: "unix:{tmp}/policy.sock"
  access:
    rules:
      - {{recipient: "blocked@example.net", action: "REJECT {word}"}}
"""


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll for a state change; the timeout only bounds a hung test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def connects(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
        return True
    except OSError:
        return False


def policy_answer(path: str, recipient: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(
            f"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient={recipient}\n\n".encode()
        )
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


def children(pid: int) -> dict[str, int]:
    """Child processes of `pid` by their command line's service words."""
    out = subprocess.run(
        ["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True, check=False
    )
    found = {}
    for line in out.stdout.splitlines():
        cpid, _, args = line.strip().partition(" ")
        if "milter noop" in args:
            found["noop"] = int(cpid)
        elif "policyd" in args:
            found["policyd"] = int(cpid)
    return found


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    cfg = tmp_path / "pw.yaml"
    cfg.write_text(CONFIG.format(tmp=tmp_path, word="first"))
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "postwarden", "run", "-c", str(cfg)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: connects(str(tmp_path / "policy.sock")), "policyd socket")
        wait_until(lambda: connects(str(tmp_path / "noop.sock")), "noop milter socket")
        yield proc, cfg
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


@pytest.mark.integration
def test_run_starts_embedded_redis_and_every_enabled_service(
    supervisor: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    proc, _ = supervisor
    assert answers(socket_path(tmp_path / "state"))
    assert set(children(proc.pid)) == {"noop", "policyd"}
    assert policy_answer(str(tmp_path / "policy.sock"), "blocked@example.net") == (
        b"action=554 5.7.1 first\n\n"
    )


@pytest.mark.integration
def test_run_restarts_a_child_that_dies(
    supervisor: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    proc, _ = supervisor
    before = children(proc.pid)["policyd"]
    os.kill(before, signal.SIGKILL)
    wait_until(lambda: children(proc.pid).get("policyd", before) != before, "policyd restart")
    wait_until(lambda: connects(str(tmp_path / "policy.sock")), "policyd socket after restart")
    assert policy_answer(str(tmp_path / "policy.sock"), "blocked@example.net").startswith(
        b"action=554"
    )
    assert "policyd exited with status -9; restarting" in (tmp_path / "run.log").read_text()


@pytest.mark.integration
def test_sighup_reloads_a_good_config_and_refuses_a_bad_one(
    supervisor: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    proc, cfg = supervisor
    sock = str(tmp_path / "policy.sock")
    cfg.write_text(CONFIG.format(tmp=tmp_path, word="second"))
    proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: policy_answer(sock, "blocked@example.net") == b"action=554 5.7.1 second\n\n",
        "reloaded answer",
    )
    cfg.write_text(CONFIG.format(tmp=tmp_path, word="third") + "policyd_typo: 1\n")
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in (tmp_path / "run.log").read_text(), "refusal logged")
    assert "policyd_typo: unknown key" in (tmp_path / "run.log").read_text()
    assert policy_answer(sock, "blocked@example.net") == b"action=554 5.7.1 second\n\n"


@pytest.mark.integration
def test_sigterm_stops_children_and_the_embedded_redis(
    supervisor: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    proc, _ = supervisor
    kids = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0

    def gone(pid: int) -> Callable[[], bool]:
        return lambda: not os.path.exists(f"/proc/{pid}")

    for pid in kids.values():
        wait_until(gone(pid), f"child {pid} gone")
    assert not answers(socket_path(tmp_path / "state"))
    assert not os.path.exists(tmp_path / "policy.sock")
