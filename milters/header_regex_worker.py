"""The bounded fallback for patterns RE2 cannot run (back-references, look-around).

Python's `re` backtracks, so one hostile pattern/input pair can run for
years, and a running `re` call cannot be interrupted inside a thread. So the
fallback runs in a child process (`python -m milters.header_regex_worker`)
and every match has a time budget: when it runs out, the child is killed and
restarted and the pattern counts as not matching (the caller logs the rule's
file:line). Only the few rules RE2 refuses ever pay this IPC cost.

Wire format (both directions, little-endian): request = u32 pattern length,
u32 flags, u32 subject length, pattern bytes, subject bytes; reply = i32 n,
then n i32 span values (n = -1: no match). The worker writes one byte
"R" when it is ready.
"""

from __future__ import annotations

import logging
import os
import re
import select
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from postwarden.logs import RateLimitedLog

log = logging.getLogger("postwarden.milter.headers")

_REQ = struct.Struct("<III")
_INT = struct.Struct("<i")
_STARTUP_BUDGET = 30.0


class FallbackWorker:
    """Runs Python `re` searches in a child process with a per-match budget."""

    def __init__(self, budget: float = 0.25) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._warn = RateLimitedLog(log, interval=60.0)
        self.timeouts = 0

    def _start(self) -> subprocess.Popen[bytes]:
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.Popen(
            [sys.executable, "-m", "milters.header_regex_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=root,
        )
        # Interpreter start-up must not eat the first match's budget: wait
        # for the worker's ready byte with a start-up allowance of its own.
        assert proc.stdout is not None
        try:
            _read_exact(proc.stdout, 1, _STARTUP_BUDGET)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return proc

    def search(self, pattern: bytes, flags: int, subject: bytes) -> tuple[int, ...] | None:
        with self._lock:
            try:
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._start()
                proc = self._proc
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(_REQ.pack(len(pattern), flags, len(subject)) + pattern + subject)
                proc.stdin.flush()
                reply = _read_reply(proc.stdout, self.budget)
            except (OSError, EOFError, TimeoutError) as exc:
                self._kill()
                if isinstance(exc, TimeoutError):
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
            return reply

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()

    def close(self) -> None:
        with self._lock:
            self._kill()

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()


def _read_exact(stream: IO[bytes], n: int, deadline_budget: float) -> bytes:
    fd = stream.fileno()
    out = b""
    while len(out) < n:
        ready, _, _ = select.select([fd], [], [], deadline_budget)
        if not ready:
            raise TimeoutError
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise EOFError("worker closed its pipe")
        out += chunk
    return out


def _read_reply(stream: IO[bytes], budget: float) -> tuple[int, ...] | None:
    (n,) = _INT.unpack(_read_exact(stream, 4, budget))
    if n < 0:
        return None
    raw = _read_exact(stream, 4 * n, budget)
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
