"""`postwarden run` as shipped: embedded Redis, children, restarts, reloads, stop."""

from __future__ import annotations

import json
import os
import re
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
from tests.harness.metrics import scrape
from tests.harness.ports import free_port

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
        elif "redis-server" in args:
            found["redis"] = int(cpid)
    return found


def gone(pid: int) -> Callable[[], bool]:
    """True once `pid` has exited and been reaped (a zombie still has /proc/PID)."""
    return lambda: not os.path.exists(f"/proc/{pid}")


def exited(pid: int) -> Callable[[], bool]:
    """True once `pid` has exited; an orphan's reaping is init's business."""

    def check() -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return True
        return stat.rsplit(")", 1)[1].split()[0] == "Z"

    return check


def start_run(cfg: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "postwarden", "run", "-c", str(cfg)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_run(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    cfg = tmp_path / "pw.yaml"
    cfg.write_text(CONFIG.format(tmp=tmp_path, word="first"))
    proc = start_run(cfg, tmp_path / "run.log")
    try:
        wait_until(lambda: connects(str(tmp_path / "policy.sock")), "policyd socket")
        wait_until(lambda: connects(str(tmp_path / "noop.sock")), "noop milter socket")
        yield proc, cfg
    finally:
        stop_run(proc)


@pytest.mark.integration
def test_run_starts_embedded_redis_and_every_enabled_service(
    supervisor: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    proc, _ = supervisor
    assert answers(socket_path(tmp_path / "state"))
    assert set(children(proc.pid)) == {"noop", "policyd", "redis"}
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

    for pid in kids.values():
        wait_until(gone(pid), f"child {pid} gone")
    assert not answers(socket_path(tmp_path / "state"))
    assert not os.path.exists(tmp_path / "policy.sock")


def greylist_answer(path: str, recipient: str) -> bytes:
    request = (
        "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.10\n"
        f"client_name=mx.example.org\nsender=alice@example.org\nrecipient={recipient}\n\n"
    )
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)  # "did not hang"
        s.connect(path)
        s.sendall(request.encode())
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


def stat_json(cfg: Path) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-m", "postwarden", "stat", "--json", "-c", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    counters: dict[str, int] = json.loads(out.stdout)
    return counters


@pytest.mark.integration
def test_embedded_redis_killed_is_restarted_and_greylisting_works_again(
    tmp_path: Path,
) -> None:
    # Given `postwarden run` with greylisting on its embedded Redis
    cfg = tmp_path / "pw.yaml"
    port = free_port()
    cfg.write_text(
        CONFIG.format(tmp=tmp_path, word="first")
        + "  greylist: {enabled: true, delay: 1h}\n"
        + f'metrics: {{enabled: true, listen: "127.0.0.1:{port}"}}\n'
    )
    log_path = tmp_path / "run.log"
    proc = start_run(cfg, log_path)
    sock = str(tmp_path / "policy.sock")
    try:
        wait_until(lambda: connects(sock), "policyd socket")
        assert b"Greylisted" in greylist_answer(sock, "one@example.net")
        kids = children(proc.pid)
        redis_pid = kids["redis"]

        # When the redis-server is killed
        os.kill(redis_pid, signal.SIGKILL)

        # Then the supervisor reaps it (no zombie), says so, and restarts it
        wait_until(gone(redis_pid), "the killed redis-server reaped")
        wait_until(lambda: "embedded redis-server restarted" in log_path.read_text(), "restart")
        text = log_path.read_text()
        assert f"embedded redis-server (pid {redis_pid}) exited with status -9" in text
        assert " ERROR " in text.split("exited with status -9")[0].splitlines()[-1]
        wait_until(lambda: answers(socket_path(tmp_path / "state")), "redis answers again")
        # and greylisting works again, a new triplet deferred, through the
        # same policyd that reconnected by itself
        wait_until(
            lambda: b"Greylisted" in greylist_answer(sock, "two@example.net"),
            "greylisting after the restart",
        )
        after = children(proc.pid)
        assert after["policyd"] == kids["policyd"]
        assert after["noop"] == kids["noop"]
        assert after["redis"] != redis_pid
        # and the restart is counted where an admin looks
        assert stat_json(cfg)["supervisor.restarts.redis"] == 1
        restarts = ("postwarden_supervisor_restarts_total", (("service", "redis"),))
        assert scrape(port)[restarts] == 1.0
        status = subprocess.run(
            [sys.executable, "-m", "postwarden", "stat", "-c", str(cfg)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert re.search(r"^  redis +pid \d+ +restarts 1$", status, re.MULTILINE), status
    finally:
        stop_run(proc)


@pytest.mark.integration
def test_a_child_crashing_after_a_refused_reload_comes_back_on_the_last_good_config(
    supervisor: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    proc, cfg = supervisor
    sock = str(tmp_path / "policy.sock")
    log_path = tmp_path / "run.log"
    # Given a good reload, then a broken file refused on SIGHUP
    cfg.write_text(CONFIG.format(tmp=tmp_path, word="second"))
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: policy_answer(sock, "blocked@example.net").endswith(b"second\n\n"), "reload")
    cfg.write_text(CONFIG.format(tmp=tmp_path, word="third") + "policyd_typo: 1\n")
    proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in log_path.read_text(), "refusal logged")
    assert f"{cfg}:" in log_path.read_text().split("reload refused")[1]

    # When policyd crashes
    before = children(proc.pid)["policyd"]
    os.kill(before, signal.SIGKILL)
    wait_until(lambda: children(proc.pid).get("policyd", before) != before, "policyd restart")

    # Then it comes back on the last config that passed, not the broken file
    wait_until(lambda: connects(sock), "policyd socket after restart")
    assert policy_answer(sock, "blocked@example.net") == b"action=554 5.7.1 second\n\n"
    assert "exited with status 78" not in log_path.read_text()


@pytest.mark.integration
def test_a_second_run_for_the_same_state_dir_is_refused(
    supervisor: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    proc, cfg = supervisor
    kids = children(proc.pid)
    second = subprocess.run(
        [sys.executable, "-m", "postwarden", "run", "-c", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,  # "did not hang"
        check=False,
    )
    assert second.returncode == 1
    assert f"another postwarden run (pid {proc.pid}) is using {tmp_path / 'state'}" in (
        second.stderr
    )
    # and the first one's services were not disturbed
    assert children(proc.pid) == kids
    assert policy_answer(str(tmp_path / "policy.sock"), "blocked@example.net").startswith(
        b"action=554"
    )


@pytest.mark.integration
def test_children_of_a_killed_supervisor_exit_and_a_new_run_starts_clean(
    supervisor: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    proc, cfg = supervisor
    kids = children(proc.pid)
    assert set(kids) == {"noop", "policyd", "redis"}

    # When the supervisor is killed outright
    proc.kill()
    proc.wait(30)

    # Then every child it started exits by itself (parent-death signal)
    for name, pid in kids.items():
        wait_until(exited(pid), f"orphaned {name} (pid {pid}) gone")

    # and a new `run` for the same state_dir starts and serves
    again = start_run(cfg, tmp_path / "run2.log")
    try:
        wait_until(lambda: connects(str(tmp_path / "policy.sock")), "new policyd socket")
        assert policy_answer(str(tmp_path / "policy.sock"), "blocked@example.net").startswith(
            b"action=554"
        )
        assert set(children(again.pid)) == {"noop", "policyd", "redis"}
    finally:
        stop_run(again)
