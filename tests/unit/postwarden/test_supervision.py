"""The supervisor's building blocks: lock file, parent-death signal, pinned config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from postwarden.config import load_config_text
from postwarden.config.load import load_pinned
from postwarden.errors import AlreadyRunning, EmbeddedRedisError
from postwarden.pidlock import PidLock
from postwarden.socketfile import identity, remove_own
from postwarden.store.embedded import EmbeddedRedis
from tests.conftest import REPO


def test_a_second_lock_on_the_same_state_dir_is_refused_naming_the_holder(
    tmp_path: Path,
) -> None:
    first = PidLock(str(tmp_path))
    first.acquire()
    holder = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from postwarden.pidlock import PidLock;"
            f"PidLock({str(tmp_path)!r}).acquire()",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert holder.returncode != 0
    assert f"another postwarden run (pid {os.getpid()}) is using {tmp_path}" in holder.stderr
    first.release()
    again = PidLock(str(tmp_path))
    again.acquire()  # released: free again, stale file or not
    again.release()


def test_the_lock_is_released_when_its_holder_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from postwarden.pidlock import PidLock;"
            f"PidLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(600)",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == b"locked\n"
    with pytest.raises(AlreadyRunning):
        PidLock(str(tmp_path)).acquire()
    holder.kill()
    holder.wait(30)
    holder.stdout.close()
    lock = PidLock(str(tmp_path))
    lock.acquire()
    lock.release()


def test_a_wrapped_program_dies_with_its_parent(tmp_path: Path) -> None:
    # A middle process starts `sleep` through the wrapper, prints its pid,
    # then is killed; the kernel must then stop the sleep.
    middle = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time; from postwarden import parentdeath;"
            "p = subprocess.Popen(parentdeath.command(os.getpid(), ['sleep', '600']));"
            "print(p.pid, flush=True); time.sleep(600)",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    assert middle.stdout is not None
    sleeper = int(middle.stdout.readline())
    wait_for(lambda: _cmdline(sleeper).startswith("sleep"), "the wrapper exec'd sleep")
    middle.send_signal(signal.SIGKILL)
    middle.wait(30)
    middle.stdout.close()
    wait_for(lambda: not _alive(sleeper), "the orphaned sleep gone")


def test_a_program_whose_parent_is_already_gone_does_not_start(tmp_path: Path) -> None:
    # The named parent is not our parent: as if it died before prctl.
    out = subprocess.run(
        [sys.executable, "-m", "postwarden.parentdeath", "1", "true"],
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert out.returncode == -signal.SIGTERM


def test_a_pinned_config_loads_to_the_same_settings_from_another_directory(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "etc"
    (conf / "rules").mkdir(parents=True)
    (conf / "rules" / "clients ü").write_text("192.0.2.1\n")
    (conf / "map").write_text("")
    text = (
        "# comment: rules/clients\n"
        "policyd:\n"
        "  greylist:\n"
        "    whitelist_clients_files: ['rules/clients ü']\n"
        "  sender_login: {map_file: map}\n"
    )
    settings, pinned = load_pinned(text, str(conf / "pw.yaml"))
    elsewhere = tmp_path / "state" / "running.yaml"
    assert load_config_text(pinned, str(elsewhere)) == settings
    assert pinned.splitlines()[0] == "# comment: rules/clients"
    assert len(pinned.splitlines()) == len(text.splitlines())
    assert settings.policyd.greylist.whitelist_clients_files == (str(conf / "rules" / "clients ü"),)


def test_remove_own_leaves_a_socket_file_that_is_no_longer_ours(tmp_path: Path) -> None:
    import socket

    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as first:
        first.bind(path)
        own = identity(path)
        os.unlink(path)
        with socket.socket(socket.AF_UNIX) as second:
            second.bind(path)
            assert not remove_own(path, own)
            assert os.path.exists(path)
            assert remove_own(path, identity(path))
            assert not os.path.exists(path)


def wait_for(predicate: object, what: str, timeout: float = 30.0) -> None:
    """Poll; the timeout only bounds a hung test."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def test_embedded_redis_waits_for_a_previous_server_still_stopping(tmp_path: Path) -> None:
    # A process named redis-server, recorded in the pidfile, stands in for an
    # orphan still saving its snapshot: it would unlink our socket on exit.
    (tmp_path / "redis").mkdir()
    previous = subprocess.Popen(["bash", "-c", "exec -a redis-server sleep 600"])
    try:
        server = EmbeddedRedis(tmp_path, persist=False)
        server.pidfile.write_text(f"{previous.pid}\n")
        wait_for(lambda: "redis-server" in _cmdline(previous.pid), "the stand-in's name")
        with pytest.raises(EmbeddedRedisError, match=f"previous run \\(pid {previous.pid}\\)"):
            server.start(previous_wait=0.2)
    finally:
        previous.kill()
        previous.wait(30)
    server.start()
    try:
        assert server.process is not None
        assert server.previous_pid() == server.process.pid
    finally:
        server.stop()
