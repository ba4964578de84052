"""One supervisor per state_dir: a lock file held for the supervisor's life.

`postwarden run` takes an exclusive flock(2) on `state_dir/postwarden.pid`
and writes its pid there. A second `run` for the same state_dir (the same
embedded Redis, metrics directory and running config) is refused while the
first lives. The kernel drops the lock when the holder dies, however it
dies, so a stale file never blocks a restart. The descriptor is
close-on-exec: children never hold the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from postwarden.errors import AlreadyRunning, PostwardenError

LOCK_NAME = "postwarden.pid"


class PidLock:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            why = exc.strerror
            raise PostwardenError(f"cannot open the lock file {self.path}: {why}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(
                f"another postwarden run (pid {holder}) is using {os.path.dirname(self.path)};"
                f" stop it first (lock file {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)
