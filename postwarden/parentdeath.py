"""Children die with their supervisor.

`postwarden run` starts every service and the embedded redis-server as its
children. If the supervisor is killed (`kill -9`, OOM killer), orphans would
keep serving beside the next instance and, when they stop at last, remove
its sockets or its Redis. Linux's parent-death signal (prctl(2)
PR_SET_PDEATHSIG) closes that hole: the kernel sends SIGTERM to the child the
moment its parent dies, so the child stops the ordinary way.

Two ways in:
- a postwarden service calls `follow_supervisor()` at start; the supervisor
  names itself in POSTWARDEN_SUPERVISOR_PID;
- any other program is started through `python -m postwarden.parentdeath
  PID PROGRAM ARGS...`, which sets the signal and then execs PROGRAM (the
  setting survives execve(2)), e.g. the embedded redis-server.

Both check afterwards that the parent is still PID: a supervisor that died
between fork and prctl would otherwise leave the child waiting forever.
The signal follows the parent *thread*, so the supervisor starts children
from its main thread only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

SUPERVISOR_ENV = "POSTWARDEN_SUPERVISOR_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with(parent: int, sig: int = signal.SIGTERM) -> None:
    """Ask the kernel for `sig` when our parent dies; leave now if `parent`
    is already gone (we were re-parented before asking)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def follow_supervisor() -> None:
    """For a service started by `postwarden run`: exit when the supervisor does."""
    pid = os.environ.get(SUPERVISOR_ENV, "")
    if pid.isdigit():
        die_with(int(pid))


def command(parent: int, argv: list[str]) -> list[str]:
    """`argv` wrapped so that it dies with `parent`."""
    return [sys.executable, "-m", "postwarden.parentdeath", str(parent), *argv]


def main(args: list[str]) -> None:
    if len(args) < 2 or not args[0].isdigit():
        sys.exit("usage: python -m postwarden.parentdeath PARENT_PID PROGRAM [ARGS...]")
    die_with(int(args[0]))
    os.execvp(args[1], args[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
