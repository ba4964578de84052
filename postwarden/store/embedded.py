"""The private redis-server postwarden starts when `redis.url` is not set.

A real redis-server from PATH, on a unix socket under `state_dir/redis/`, with
no TCP port. `postwarden run` starts it before the services and stops it after
them; a service started alone reuses one that already answers there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from postwarden import parentdeath, privileges
from postwarden.errors import EmbeddedRedisError
from postwarden.privileges import Identity

INSTALL_HINT = "install it with: apt-get install redis-server"
# How long a new server waits for a previous one that is still shutting down.
PREVIOUS_STOP_WAIT = 60.0


def socket_path(state_dir: str | os.PathLike[str]) -> str:
    return str(Path(state_dir) / "redis" / "redis.sock")


def answers(path: str, timeout: float = 0.5) -> bool:
    """True when something on `path` answers PING with PONG."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """Start/stop one private redis-server.

    `persist=True` (production) snapshots to `dump.rdb` so greylist and Bayes
    data survive a restart; tests pass `persist=False`.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        persist: bool = True,
        run_as: Identity | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.dir = Path(state_dir) / "redis"
        self.socket = socket_path(state_dir)
        self.pidfile = self.dir / "redis.pid"
        self.persist = persist
        self.run_as = run_as  # started by root: run redis-server as the service user
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0, previous_wait: float = PREVIOUS_STOP_WAIT) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedRedisError(f"redis-server not found on PATH; {INSTALL_HINT}")
        try:
            privileges.own_dir(str(self.state_dir), self.run_as, 0o750, adopt=False)
            privileges.own_dir(str(self.dir), self.run_as, 0o700)
        except OSError as exc:
            raise EmbeddedRedisError(f"cannot create {self.dir}: {exc.strerror}") from None
        if answers(self.socket):
            raise EmbeddedRedisError(f"a Redis already answers on {self.socket}")
        self._wait_for_previous(previous_wait)
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        log = self.dir / "redis.log"
        args = [
            binary,
            "--port",
            "0",
            "--unixsocket",
            self.socket,
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--logfile",
            str(log),
            "--pidfile",
            str(self.pidfile),
            "--appendonly",
            "no",
            "--save",
            "300 1 60 1000" if self.persist else "",
        ]
        self.process = subprocess.Popen(
            # It stops when its owner dies, however it dies (parentdeath.py).
            parentdeath.command(os.getpid(), args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            **privileges.popen_identity(self.run_as),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (
                    self.process.stderr.read().decode(errors="replace")
                    if self.process.stderr
                    else ""
                )
                tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                raise EmbeddedRedisError(f"redis-server exited at start: {err or tail}".strip())
            if answers(self.socket):
                return self.socket
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer on {self.socket} in {timeout}s")

    def previous_pid(self) -> int | None:
        """The pid of a redis-server that ran here and has not exited yet."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"redis-server" in cmdline else None  # a zombie's is empty

    def _wait_for_previous(self, timeout: float) -> None:
        """A redis-server still stopping (an orphan's, saving its snapshot)
        unlinks the socket path when it exits, whoever has bound it since:
        start only once it is gone."""
        deadline = time.monotonic() + timeout
        while (pid := self.previous_pid()) is not None:
            if time.monotonic() >= deadline:
                raise EmbeddedRedisError(
                    f"a redis-server from a previous run (pid {pid}) is still running in"
                    f" {self.dir}; stop it first"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ensure(
    state_dir: str, persist: bool = True, run_as: Identity | None = None
) -> tuple[str, EmbeddedRedis | None]:
    """The embedded socket for a service started on its own: reuse a server
    that already answers (e.g. one `postwarden run` started), else start one
    owned by the caller (returned, so the caller stops it on exit)."""
    path = socket_path(state_dir)
    if answers(path):
        return path, None
    server = EmbeddedRedis(state_dir, persist=persist, run_as=run_as)
    server.start()
    return path, server
