"""An SMTP sink that records what the test Postfix relays to it.

Postfix under test relays every accepted message (`relayhost`) to this sink,
so a test can see the message exactly as Postfix delivered it: after milters
added their headers and after cleanup(8). It runs aiosmtpd's threaded
`Controller` on 127.0.0.1 with a port the kernel chooses (never a fixed one).

Error injection (`fail_next`) makes the next deliveries answer with a given
reply, like Mailman's test SMTP server, so tests can watch Postfix defer and
retry.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from functools import cached_property
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True)
class ReceivedMessage:
    """One delivery to the sink: envelope plus the exact DATA bytes."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    peer: str

    @classmethod
    def from_envelope(cls, envelope: Envelope, peer: str) -> ReceivedMessage:
        return cls(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            raw=envelope.original_content or b"",
            peer=peer,
        )

    @cached_property
    def parsed(self) -> EmailMessage:
        """The message parsed on first use (keeps the sink cheap under load)."""
        parsed = message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def header_block(self) -> bytes:
        """The raw header section, up to (not including) the blank line."""
        head, _, _ = self._split()
        return head

    @property
    def body(self) -> bytes:
        """The raw body after the first blank line, byte for byte."""
        _, _, body = self._split()
        return body

    def _split(self) -> tuple[bytes, bytes, bytes]:
        for sep in (b"\r\n\r\n", b"\n\n"):
            head, found, body = self.raw.partition(sep)
            if found:
                return head, found, body
        return self.raw, b"", b""

    def header(self, name: str) -> str | None:
        """First value of header `name` (unfolded, decoded), or None."""
        value = self.parsed.get(name)
        return None if value is None else str(value)

    def headers(self, name: str) -> list[str]:
        return [str(v) for v in self.parsed.get_all(name, [])]


class _Handler:
    """aiosmtpd handler: records messages, or answers with an injected reply."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        injected = self._sink._take_injected()
        if injected is not None:
            self._sink._record_refusal()
            return injected
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        self._sink._record(ReceivedMessage.from_envelope(envelope, peer))
        return "250 2.0.0 OK: recorded by the test sink"


class _FreePortController(Controller):
    """A Controller bound to port 0; the real port is read back after bind.

    aiosmtpd's Controller connects to `self.port` to trigger its lazy SMTP
    factory; reading the bound port first makes port 0 work without a race.
    """

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class SmtpSink:
    """Thread-safe recorder of relayed messages on 127.0.0.1:<free port>."""

    def __init__(self, hostname: str = "sink.test") -> None:
        self._lock = threading.Condition()
        self._messages: list[ReceivedMessage] = []
        self._refused = 0
        self._inject: list[str] = []
        self._controller = _FreePortController(
            _Handler(self),
            hostname="127.0.0.1",
            port=0,
            server_hostname=hostname,
            # Postfix may relay large test messages; keep the limit roomy.
            data_size_limit=64 * 1024 * 1024,
        )
        self.host = "127.0.0.1"
        self.port = 0

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> SmtpSink:
        self._controller.start()
        self.port = self._controller.port
        return self

    def stop(self) -> None:
        try:
            self._controller.stop()
        except AssertionError:
            pass  # never started

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def relayhost(self) -> str:
        """The value for Postfix's `relayhost` (brackets: no MX lookup)."""
        return f"[{self.host}]:{self.port}"

    # -- recording -----------------------------------------------------------
    def _record(self, message: ReceivedMessage) -> None:
        with self._lock:
            self._messages.append(message)
            self._lock.notify_all()

    def _record_refusal(self) -> None:
        with self._lock:
            self._refused += 1
            self._lock.notify_all()

    def _take_injected(self) -> str | None:
        with self._lock:
            return self._inject.pop(0) if self._inject else None

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._lock:
            return list(self._messages)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._messages)

    @property
    def refused(self) -> int:
        """How many deliveries got an injected failure reply."""
        with self._lock:
            return self._refused

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()
            self._refused = 0
            self._inject.clear()

    def fail_next(self, count: int, reply: str = "451 4.3.0 test sink: injected failure") -> None:
        """Answer the next `count` DATA commands with `reply` instead of 250."""
        with self._lock:
            self._inject.extend([reply] * count)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[ReceivedMessage]:
        """Block until at least `count` messages arrived; return them all.

        Waits on a condition variable (woken by every delivery), so there is
        no polling interval to tune. Raises TimeoutError naming what arrived.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"sink got {len(self._messages)} of {count} messages"
                        f" ({self._refused} refused) within {timeout}s"
                    )
                self._lock.wait(left)
            return list(self._messages)

    def wait_for_refusals(self, count: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._refused < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"sink refused {self._refused} of {count} within {timeout}s")
                self._lock.wait(left)
            return self._refused


@contextmanager
def running_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()
