"""The policy server over real unix sockets, with a real Redis behind it."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from policyd.check import BuiltCheck, CheckContext
from policyd.decision import Decision, Verb
from policyd.protocol import PolicyRequest, encode_request
from policyd.server import PolicyServer
from postwarden.clock import ManualClock
from postwarden.config.schema import OnError, Settings
from postwarden.config.sections.common import Mode
from postwarden.config.units import Duration, SocketAddress
from postwarden.replies import Reply
from postwarden.store.client import AsyncStore
from postwarden.store.embedded import EmbeddedRedis
from tests.conftest import make_async_store


def req(**attrs: str) -> bytes:
    base = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "client_address": "192.0.2.1",
        "sender": "a@example.org",
    }
    base.update(attrs)
    return encode_request(base)


async def by_recipient(r: PolicyRequest, ctx: CheckContext) -> Decision | None:
    """A check whose answer is spelled in the recipient's local part."""
    local = r.recipient.partition("@")[0]
    if local == "reject":
        return Decision(Verb.REJECT, reply=Reply(550, "5.7.1", "no thanks"), reason="test")
    if local == "defer":
        return Decision(Verb.DEFER, reply=Reply(450, "4.7.1", "later"))
    if local == "prepend":
        return Decision(Verb.PREPEND, header="X-Test: yes")
    if local == "boom":
        raise RuntimeError("bug in a check")
    if local == "slow":
        await asyncio.sleep(30)
    return None


async def counts_in_redis(r: PolicyRequest, ctx: CheckContext) -> Decision | None:
    store = ctx.store
    assert isinstance(store, AsyncStore)
    await store.run("stat_incr", [store.keys.stat("seen")], [1, 60])
    return None


def settings_for(tmp: Path, **policyd: Any) -> Settings:
    s = Settings()
    p = replace(s.policyd, socket=SocketAddress("unix", path=str(tmp / "p.sock")), **policyd)
    return replace(s, policyd=p)


@asynccontextmanager
async def running(
    tmp: Path, checks: list[BuiltCheck], store: AsyncStore | None = None, **policyd: Any
) -> AsyncIterator[PolicyServer]:
    s = settings_for(tmp, **policyd)
    ctx = CheckContext(settings=s, store=store, clock=ManualClock())
    server = PolicyServer(s, checks, ctx)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(deadline=2)


async def exchange(path: str, payload: bytes, replies: int, chunk: int = 65536) -> list[bytes]:
    reader, writer = await asyncio.open_unix_connection(path)
    for i in range(0, len(payload), chunk):
        writer.write(payload[i : i + chunk])
        await writer.drain()
    out = [await reader.readuntil(b"\n\n") for _ in range(replies)]
    writer.close()
    return out


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())  # type: ignore[arg-type]


CHECK = BuiltCheck("test", by_recipient)


@pytest.mark.parametrize("chunk", [1, 16, 128, 4096])
def test_pipelined_requests_are_answered_in_order(tmp_path: Path, chunk: int) -> None:
    async def go() -> None:
        async with running(tmp_path, [CHECK]) as server:
            payload = req(recipient="reject@x") + req(recipient="ok@x") + req(recipient="defer@x")
            out = await exchange(server.settings.policyd.socket.path, payload, 3, chunk)
            assert out == [
                b"action=550 5.7.1 no thanks\n\n",
                b"action=DUNNO\n\n",
                b"action=450 4.7.1 later\n\n",
            ]

    run(go)


def test_first_decisive_answer_wins_and_prepend_is_kept_otherwise(tmp_path: Path) -> None:
    async def always_defer(r: PolicyRequest, ctx: CheckContext) -> Decision | None:
        return Decision(Verb.DEFER, reply=Reply(450, "4.7.1", "second check"))

    async def go() -> None:
        checks = [CHECK, BuiltCheck("second", always_defer)]
        async with running(tmp_path, checks) as server:
            path = server.settings.policyd.socket.path
            out = await exchange(path, req(recipient="reject@x") + req(recipient="ok@x"), 2)
            assert out == [b"action=550 5.7.1 no thanks\n\n", b"action=450 4.7.1 second check\n\n"]
        async with running(tmp_path, [CHECK]) as server:
            out = await exchange(path, req(recipient="prepend@x"), 1)
            assert out == [b"action=PREPEND X-Test: yes\n\n"]

    run(go)


def test_warn_mode_prepends_what_would_have_happened(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(tmp_path, [BuiltCheck("test", by_recipient, Mode.WARN)]) as server:
            out = await exchange(server.settings.policyd.socket.path, req(recipient="reject@x"), 1)
            assert out == [b"action=PREPEND X-Postwarden-Warn: test would 550 5.7.1 no thanks\n\n"]

    run(go)


@pytest.mark.expect_log("WARNING", "malformed policy request")
def test_garbage_gets_dunno_and_the_connection_stays_usable(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(tmp_path, [CHECK]) as server:
            path = server.settings.policyd.socket.path
            garbage = b"\x00\xff\xfe binary\n\n"
            huge_line = b"recipient=" + b"A" * (1024 * 1024) + b"\n\n"
            many = b"".join(b"x%d=1\n" % i for i in range(10_000)) + b"\n"
            payload = garbage + huge_line + many + req(recipient="reject@x")
            out = await exchange(path, payload, 4, 8192)
            assert out[:3] == [b"action=DUNNO\n\n"] * 3
            assert out[3] == b"action=550 5.7.1 no thanks\n\n"

    run(go)


@pytest.mark.expect_log("WARNING", "malformed policy request")
def test_malformed_request_gets_tempfail_when_configured(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(tmp_path, [CHECK], on_error=OnError.TEMPFAIL) as server:
            out = await exchange(server.settings.policyd.socket.path, b"nonsense\n\n", 1)
            assert out == [b"action=451 4.3.0 Temporary local problem, please try again later\n\n"]

    run(go)


def test_half_closed_connection_does_not_disturb_others(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(tmp_path, [CHECK]) as server:
            path = server.settings.policyd.socket.path
            _, w = await asyncio.open_unix_connection(path)
            w.write(b"request=smtpd_access_policy\nsender=half")
            await w.drain()
            w.close()
            assert await exchange(path, req(recipient="reject@x"), 1) == [
                b"action=550 5.7.1 no thanks\n\n"
            ]

    run(go)


@pytest.mark.expect_log("WARNING", "check failed")
def test_a_bug_in_a_check_gets_the_fallback_not_a_dead_server(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(tmp_path, [CHECK]) as server:
            path = server.settings.policyd.socket.path
            out = await exchange(path, req(recipient="boom@x") + req(recipient="reject@x"), 2)
            assert out == [b"action=DUNNO\n\n", b"action=550 5.7.1 no thanks\n\n"]

    run(go)


@pytest.mark.expect_log("WARNING", "request took longer")
def test_a_slow_check_is_cut_off_by_request_timeout(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(tmp_path, [CHECK], request_timeout=0.2) as server:
            out = await exchange(server.settings.policyd.socket.path, req(recipient="slow@x"), 1)
            assert out == [b"action=DUNNO\n\n"]

    run(go)


@pytest.mark.expect_log("WARNING", "redis unavailable")
def test_redis_down_gives_fallback_and_service_recovers_without_restart(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    private = EmbeddedRedis(tmp_path / "own", persist=False)
    private.start()

    async def go() -> None:
        from postwarden.config.schema import RedisSettings
        from postwarden.store.client import open_async_store

        store = open_async_store(RedisSettings(prefix="t:", timeout=Duration(0.3)), private.socket)
        check = BuiltCheck("redis", counts_in_redis)
        async with running(tmp_path, [check, CHECK], store, on_error=OnError.TEMPFAIL) as server:
            path = server.settings.policyd.socket.path
            assert await exchange(path, req(recipient="reject@x"), 1) == [
                b"action=550 5.7.1 no thanks\n\n"
            ]
            await asyncio.to_thread(private.stop)
            out = await exchange(path, req(recipient="reject@x"), 1)
            assert out == [b"action=451 4.3.0 Temporary local problem, please try again later\n\n"]
            await asyncio.to_thread(private.start)
            out = await exchange(path, req(recipient="reject@x"), 1)
            assert out == [b"action=550 5.7.1 no thanks\n\n"]
        await store.close()

    try:
        run(go)
    finally:
        private.stop()


def test_reload_swaps_checks_without_dropping_the_connection(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    async def go() -> None:
        store = make_async_store(redis_server)
        async with running(tmp_path, [], store) as server:
            path = server.settings.policyd.socket.path
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(req(recipient="reject@x"))
            assert await reader.readuntil(b"\n\n") == b"action=DUNNO\n\n"
            server.reload(server.settings, [CHECK])
            writer.write(req(recipient="reject@x"))
            assert await reader.readuntil(b"\n\n") == b"action=550 5.7.1 no thanks\n\n"
            writer.close()
        await store.close()

    run(go)


@pytest.mark.expect_log("WARNING", "malformed policy request")
def test_a_flood_of_blank_lines_is_answered_but_logged_once_with_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        async with running(tmp_path, [CHECK]) as server:
            reader, writer = await asyncio.open_unix_connection(server.settings.policyd.socket.path)
            writer.write(b"\n" * 10_000)
            expected = b"action=DUNNO\n\n" * 10_000
            got = b""
            while len(got) < len(expected):
                chunk = await asyncio.wait_for(reader.read(65536), 30)
                assert chunk, "connection closed early"
                got += chunk
            assert got == expected
            writer.close()

    run(go)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2, lines
    assert "9999 more since last report" in lines[1]


@pytest.mark.expect_log("WARNING", "request not complete")
def test_a_trickling_client_is_cut_off_at_the_request_deadline(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(tmp_path, [CHECK], request_timeout=0.5) as server:
            reader, writer = await asyncio.open_unix_connection(server.settings.policyd.socket.path)
            # One byte at a time, each well within any per-read timer; bounded
            # so a server that never cuts it off fails instead of hanging.
            payload = req(recipient="reject@x")
            for i in range(600):
                if reader.at_eof() or writer.is_closing():
                    break
                writer.write(payload[i % (len(payload) - 2) : i % (len(payload) - 2) + 1])
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                await asyncio.sleep(0.05)
            assert await asyncio.wait_for(reader.read(), 30) == b""
            writer.close()

    run(go)


@pytest.mark.expect_log("WARNING", "to admit a new one")
def test_when_full_the_longest_idle_connection_makes_room(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(tmp_path, [CHECK], max_connections=4) as server:
            path = server.settings.policyd.socket.path
            idle = [await asyncio.open_unix_connection(path) for _ in range(4)]
            # the first one has answered a request since, so the second is the longest idle
            idle[0][1].write(req(recipient="ok@x"))
            assert await idle[0][0].readuntil(b"\n\n") == b"action=DUNNO\n\n"
            out = await asyncio.wait_for(exchange(path, req(recipient="reject@x"), 1), 30)
            assert out == [b"action=550 5.7.1 no thanks\n\n"]
            assert await asyncio.wait_for(idle[1][0].read(), 30) == b""
            idle[0][1].write(req(recipient="ok@x"))
            assert await idle[0][0].readuntil(b"\n\n") == b"action=DUNNO\n\n"
            for _, w in idle:
                w.close()

    run(go)


@pytest.mark.expect_log("WARNING", "to admit a new one")
def test_when_full_of_stalled_requests_the_oldest_stalled_makes_room(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(tmp_path, [CHECK], max_connections=3) as server:
            path = server.settings.policyd.socket.path
            stalled = []
            for _ in range(3):
                r, w = await asyncio.open_unix_connection(path)
                w.write(b"request=smtpd_access_policy\nsender=")
                await w.drain()
                stalled.append((r, w))
            for _ in range(600):  # until the server has read every partial request
                if server.connection_states()["reading"] == 3:
                    break
                await asyncio.sleep(0.05)
            out = await asyncio.wait_for(exchange(path, req(recipient="reject@x"), 1), 30)
            assert out == [b"action=550 5.7.1 no thanks\n\n"]
            assert await asyncio.wait_for(stalled[0][0].read(), 30) == b""
            for _, w in stalled:
                w.close()

    run(go)


async def _ask_over_inet(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(req(recipient="reject@example.net"))
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(1000), 10)
    except ConnectionResetError:  # closed with our request unread
        return b""
    finally:
        writer.close()


def _ask_inet_server(tmp: Path, **policyd: Any) -> bytes:
    """One request to a policyd listening on inet:127.0.0.1:PORT."""
    from tests.harness.ports import free_port

    port = free_port()
    s = settings_for(tmp, **policyd)
    inet = SocketAddress.parse(f"inet:127.0.0.1:{port}")
    s = replace(s, policyd=replace(s.policyd, socket=inet))
    answer: list[bytes] = []

    async def go() -> None:
        server = PolicyServer(s, [CHECK], CheckContext(settings=s, store=None, clock=ManualClock()))
        await server.start()
        try:
            answer.append(await _ask_over_inet(port))
        finally:
            await server.stop()

    run(go)
    return answer[0]


def test_inet_listener_answers_loopback_clients_by_default(tmp_path: Path) -> None:
    assert _ask_inet_server(tmp_path).startswith(b"action=550 5.7.1 no thanks")


@pytest.mark.expect_log("WARNING", "not in policyd.allowed_clients")
def test_inet_listener_closes_clients_outside_allowed_clients(tmp_path: Path) -> None:
    only = (ipaddress.ip_network("192.0.2.0/24"),)
    assert _ask_inet_server(tmp_path, allowed_clients=only) == b""  # closed, no answer
