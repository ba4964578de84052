"""A clamd client: the INSTREAM command over clamd's unix or TCP socket.

clamd(8): `zINSTREAM\\0`, then chunks each prefixed with its length as a
4-byte big-endian integer, then a zero-length chunk; the reply is one
NUL-terminated line, `stream: OK`, `stream: NAME FOUND` or `... ERROR`.
clamd refuses streams over its StreamMaxLength (default 25 MB), so data is
cut to `max_size` before sending and the cut is reported. Every socket
operation has a timeout, so a down or slow clamd ends in `ClamdError`
within the caller's budget, never a hang.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from postwarden.config.units import SocketAddress
from postwarden.errors import PostwardenError

CHUNK = 64 * 1024
MAX_REPLY = 4096


class ClamdError(PostwardenError):
    """clamd could not be reached, timed out, or answered with an error."""


@dataclass(frozen=True, slots=True)
class ScanResult:
    virus: str  # "" when clean
    scanned: int  # bytes sent
    truncated: bool


def _connect(address: SocketAddress, timeout: float) -> socket.socket:
    if address.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address.path)
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection((address.host or "127.0.0.1", address.port), timeout=timeout)


def instream(address: SocketAddress, data: bytes, *, timeout: float, max_size: int) -> ScanResult:
    """Scan `data` (its first `max_size` bytes) with clamd; `timeout` bounds
    the whole exchange (connect, send, reply)."""
    if timeout <= 0:
        raise ClamdError("no time left to scan")
    truncated = len(data) > max_size
    payload = memoryview(data)[:max_size]
    deadline = time.monotonic() + timeout

    def left(sock: socket.socket) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no answer within {timeout:.1f}s")
        sock.settimeout(remaining)

    try:
        with _connect(address, timeout) as sock:
            sock.sendall(b"zINSTREAM\0")
            for pos in range(0, len(payload), CHUNK):
                chunk = payload[pos : pos + CHUNK]
                left(sock)
                sock.sendall(struct.pack("!I", len(chunk)) + bytes(chunk))
            sock.sendall(struct.pack("!I", 0))
            reply = bytearray()
            while b"\0" not in reply and len(reply) < MAX_REPLY:
                left(sock)
                got = sock.recv(MAX_REPLY)
                if not got:
                    break
                reply += got
    except OSError as exc:  # refused, missing socket, timeout, reset
        raise ClamdError(f"clamd at {address}: {exc or type(exc).__name__}") from exc
    line = bytes(reply).split(b"\0", 1)[0].decode("utf-8", "replace").strip()
    if line.endswith("FOUND"):
        name = line.rpartition(":")[2].strip()[: -len("FOUND")].strip()
        return ScanResult(name or "unknown", len(payload), truncated)
    if line.endswith(": OK"):
        return ScanResult("", len(payload), truncated)
    raise ClamdError(f"clamd at {address} answered {line[:200]!r}")
