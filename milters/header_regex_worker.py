"""The bounded fallback for patterns RE2 cannot run (back-references, look-around).

Python's `re` backtracks, so one hostile pattern/input pair can run for
years, and a running `re` call cannot be interrupted inside a thread. So the
fallback runs in child processes (`python -m milters.header_regex_worker`)
and every match has a time limit: the smaller of `fallback_timeout` and what
is left of the message's budget. When it runs out, the child is killed (a
fresh one starts when next needed); a match stopped by `fallback_timeout`
counts as not matching (logged), one stopped by the message budget raises
`BudgetExceeded`, so the pipeline gives the message its `on_timeout`
outcome. Only the few rules RE2 refuses ever pay this IPC cost.

The children form a small pool shared by all connections of one milter
process: a message takes one child for the whole of its evaluation
(`FallbackWorker.session`), so a slow message holds one child, never all of
them, and other connections go on with their own (issue 10: one child
behind one lock let one crafted message stall every other). A message that
finds every child busy waits for one within its own budget.

Wire format (both directions, little-endian): request = u32 pattern length,
u32 flags, u32 subject length, pattern bytes, subject bytes; reply = i32 n,
then n i32 span values (n = -1: no match). The worker writes one byte
"R" when it is ready.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from postwarden.budget import Budget, BudgetExceeded
from postwarden.logs import RateLimitedLog

log = logging.getLogger("postwarden.milter.headers")

_REQ = struct.Struct("<III")
_INT = struct.Struct("<i")
_STARTUP_BUDGET = 30.0
# Children per milter process. A slow message holds one child for at most
# its budget; more children than cores buy little for CPU-bound matching
# but keep a few slow messages from queueing everyone else.
POOL_SIZE = 8


class _Child:
    """One worker process and its pipes."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "milters.header_regex_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=root,
        )
        # Interpreter start-up must not eat the first match's time: wait for
        # the worker's ready byte with a start-up allowance of its own.
        assert self.proc.stdout is not None
        try:
            _read_exact(self.proc.stdout, 1, time.monotonic() + _STARTUP_BUDGET)
        except BaseException:
            self.kill()
            raise

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(
        self, pattern: bytes, flags: int, subject: bytes, deadline: float
    ) -> tuple[int, ...] | None:
        """One search; TimeoutError when no reply came by `deadline` (monotonic)."""
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(_REQ.pack(len(pattern), flags, len(subject)) + pattern + subject)
        stdin.flush()
        return _read_reply(stdout, deadline)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@dataclass
class _Session:
    """One message's claim on the pool: its budget and the child it holds."""

    budget: Budget
    child: _Child | None = None


class FallbackWorker:
    """Runs Python `re` searches in a pool of child processes, each match
    bounded by `budget` (fallback_timeout) and by the message's own budget."""

    def __init__(self, budget: float = 0.25, processes: int = POOL_SIZE) -> None:
        self.budget = budget
        self.processes = processes
        self._cond = threading.Condition()
        self._idle: list[_Child] = []
        self._live = 0  # children started and not yet killed (idle or held)
        self._session: contextvars.ContextVar[_Session | None] = contextvars.ContextVar(
            f"fallback-session-{id(self)}", default=None
        )
        self._warn = RateLimitedLog(log, interval=60.0)
        self.timeouts = 0

    @property
    def children(self) -> int:
        """Children alive now, idle or held by a message."""
        with self._cond:
            return self._live

    @contextmanager
    def session(self, budget: Budget) -> Iterator[None]:
        """Evaluate one message: its searches share one child (taken at the
        first search, returned at the end) and end by `budget`'s deadline."""
        token = self._session.set(_Session(budget))
        try:
            yield
        finally:
            held = self._session.get()
            self._session.reset(token)
            if held is not None and held.child is not None:
                self._release(held.child)

    def search(self, pattern: bytes, flags: int, subject: bytes) -> tuple[int, ...] | None:
        """Spans of the first match, or None (no match, or over fallback_timeout).

        Raises BudgetExceeded when the message's budget runs out first.
        """
        current = self._session.get()
        if current is not None:
            return self._search(current, pattern, flags, subject)
        # Outside a message (tools, tests): a child for this one search.
        one = _Session(Budget.unlimited())
        try:
            return self._search(one, pattern, flags, subject)
        finally:
            if one.child is not None:
                self._release(one.child)

    def _search(
        self, session: _Session, pattern: bytes, flags: int, subject: bytes
    ) -> tuple[int, ...] | None:
        where = f"fallback regex {pattern[:60]!r}"
        if session.child is None:
            try:
                session.child = self._acquire(session.budget, where)
            except (OSError, EOFError, TimeoutError) as exc:  # could not start one
                self._warn.warning("crash", "fallback regex worker failed: %s", exc)
                return None
        child = session.child
        limit = min(self.budget, session.budget.remaining())
        try:
            return child.ask(pattern, flags, subject, time.monotonic() + limit)
        except (OSError, EOFError, TimeoutError) as exc:
            session.child = None
            self._discard(child)
            if isinstance(exc, TimeoutError):
                if session.budget.expired:
                    raise BudgetExceeded(where) from None
                self.timeouts += 1
                self._warn.warning(
                    "timeout",
                    "fallback regex %r ran out of its %.2fs budget; counted as no match",
                    pattern[:80],
                    self.budget,
                )
            else:
                self._warn.warning("crash", "fallback regex worker failed: %s", exc)
            return None

    def _acquire(self, budget: Budget, where: str) -> _Child:
        with self._cond:
            while True:
                while self._idle:
                    child = self._idle.pop()
                    if child.alive:
                        return child
                    self._live -= 1
                    child.kill()
                if self._live < self.processes:
                    self._live += 1
                    break
                if budget.expired:
                    raise BudgetExceeded(f"{where} (waiting for a free worker)")
                left = budget.remaining()
                self._cond.wait(None if left == float("inf") else left)
        try:
            return _Child()
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            raise

    def _release(self, child: _Child) -> None:
        with self._cond:
            if child.alive:
                self._idle.append(child)
                self._cond.notify()
                return
        self._discard(child)

    def _discard(self, child: _Child) -> None:
        child.kill()
        with self._cond:
            self._live -= 1
            self._cond.notify()

    def close(self) -> None:
        """Kill the idle children (a later search starts new ones)."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cond.notify_all()
        for child in idle:
            child.kill()

    def __del__(self) -> None:
        for child in getattr(self, "_idle", []):
            if child.alive:
                child.proc.kill()


def _read_exact(stream: IO[bytes], n: int, deadline: float) -> bytes:
    fd = stream.fileno()
    out = b""
    while len(out) < n:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise EOFError("worker closed its pipe")
        out += chunk
    return out


def _read_reply(stream: IO[bytes], deadline: float) -> tuple[int, ...] | None:
    (n,) = _INT.unpack(_read_exact(stream, 4, deadline))
    if n < 0:
        return None
    raw = _read_exact(stream, 4 * n, deadline)
    return struct.unpack(f"<{n}i", raw)


def _serve(inp: IO[bytes], out: IO[bytes]) -> None:
    cache: dict[tuple[bytes, int], re.Pattern[bytes]] = {}
    out.write(b"R")
    out.flush()
    while True:
        head = inp.read(_REQ.size)
        if len(head) < _REQ.size:
            return
        plen, flags, slen = _REQ.unpack(head)
        pattern = inp.read(plen)
        subject = inp.read(slen)
        rx = cache.get((pattern, flags))
        if rx is None:
            rx = cache[(pattern, flags)] = re.compile(pattern, flags)
        m = rx.search(subject)
        if m is None:
            out.write(_INT.pack(-1))
        else:
            spans = [x for g in range(rx.groups + 1) for x in m.span(g)]
            out.write(_INT.pack(len(spans)) + struct.pack(f"<{len(spans)}i", *spans))
        out.flush()


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
