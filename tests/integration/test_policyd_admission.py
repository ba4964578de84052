"""The policy socket cannot be starved (issue 10, finding 1).

Any local process can open connections to the policy daemon. Idle ones used
to take every slot until `idle_timeout` (300 s), and one sending a byte a
second was never timed out at all, so Postfix answered RCPT with `451 4.3.5
Server configuration problem`. Here 300 such connections (more than
`max_connections`) sit on the real `postwarden policyd`, and real Postfix
still gets the access rule's answer.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.harness.postfix import PostfixInstance
from tests.harness.services import ServiceConfig, ServiceProcess

pytestmark = pytest.mark.integration

IDLE = 150
TRICKLING = 150


class Crowd:
    """Hostile clients: some connect and say nothing, some trickle a partial
    request one byte at a time. Bounded: the trickle thread stops after
    `rounds` rounds even if the server never closes anything."""

    def __init__(self, path: str, idle: int, trickling: int, rounds: int = 240) -> None:
        self.idle = [self._connect(path) for _ in range(idle // 2)]
        self.trickling = [self._connect(path) for _ in range(trickling // 2)]
        self.idle += [self._connect(path) for _ in range(idle - idle // 2)]
        self.trickling += [self._connect(path) for _ in range(trickling - trickling // 2)]
        self.closed_by_server: set[int] = set()
        self._rounds = rounds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    @staticmethod
    def _connect(path: str) -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)  # blocking: waits for room in the listen backlog
        s.settimeout(10)
        return s

    def _trickle(self) -> None:
        payload = b"request=smtpd_access_policy\nsender=slow" + b"w" * 10_000
        for i in range(self._rounds):
            if self._stop.is_set() or len(self.closed_by_server) == len(self.trickling):
                return
            for n, s in enumerate(self.trickling):
                if n in self.closed_by_server:
                    continue
                try:
                    s.send(payload[i : i + 1])
                except OSError:
                    self.closed_by_server.add(n)
            self._stop.wait(0.25)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for s in self.idle + self.trickling:
            s.close()


@contextmanager
def crowd(path: str) -> Iterator[Crowd]:
    c = Crowd(path, IDLE, TRICKLING)
    try:
        yield c
    finally:
        c.close()


def policy_answer(path: str, recipient: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)  # "did not hang", not a latency bound
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


def test_policyd_under_300_idle_and_trickling_connections_still_answers_postfix(
    postfix_factory: Callable[..., PostfixInstance],
    postwarden_config: Callable[..., ServiceConfig],
    postwarden_service: Callable[..., ServiceProcess],
) -> None:
    # Given policyd with the shipped max_connections (256), a short request
    # deadline, and an access rule whose text proves who answered
    config = postwarden_config(
        overrides={
            "policyd": {
                "request_timeout": "2s",
                "access": {"rules": [{"recipient": "blocked@example.net", "action": "REJECT no"}]},
            }
        }
    )
    policyd = postwarden_service(config, "policyd")
    path = config.socket("policyd").removeprefix("unix:")
    postfix = postfix_factory(policy_services=[config.socket("policyd")])

    # When 300 connections sit on it, half idle and half trickling bytes
    with crowd(path) as hostile:
        # Then a direct request and Postfix's own are answered by the rule
        assert policy_answer(path, "blocked@example.net") == b"action=554 5.7.1 no\n\n"
        result = postfix.send("alice@example.org", ["blocked@example.net", "bob@example.net"])
        codes = result.rcpt_codes()
        assert codes["blocked@example.net"] == 554, result.replies
        assert codes["bob@example.net"] == 250, result.replies
        # and every trickling client is cut off at its request deadline
        # (the crowd's own bounded loop would end long after that)
        deadline = time.monotonic() + 120
        while len(hostile.closed_by_server) < TRICKLING and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(hostile.closed_by_server) == TRICKLING
    assert policy_answer(path, "blocked@example.net") == b"action=554 5.7.1 no\n\n"
    # Then the log says what happened in a few lines, not one per connection
    log = policyd.log_text()
    assert "to admit a new one" in log
    assert "request not complete 2s after its first byte" in log, log[-3000:]
    warnings = [line for line in log.splitlines() if " WARNING " in line]
    assert len(warnings) < 20, warnings
