"""The asyncio policy server: sockets, framing, timeouts, fallbacks, reloads.

It owns everything around the checks and nothing of their logic:
- one connection carries many requests; pipelined requests are answered in
  order (SMTPD_POLICY_README), each within `request_timeout`;
- no client can hold a slot: a request must arrive whole within
  `request_timeout` of its first byte (one deadline for the request, not a
  timer per read, so a client trickling a byte a second is cut off), a
  connection with no request in progress closes after `idle_timeout`, and a
  reply the client will not read is dropped after `request_timeout`;
- admission: at `max_connections` a new connection takes the slot of the
  longest-idle one (no request in progress; Postfix's policy client simply
  reconnects and resends when a reused connection was closed), else of the
  one that has been reading a partial request longest (Postfix writes each
  request at once, so that is a slow or hostile client). A connection whose
  request is being decided is never closed; when every slot is deciding, the
  newcomer waits for one, at most `request_timeout`;
- a malformed request is answered with the `on_error` fallback and logged
  with its reason once per interval with a count of the rest (a flood of
  blank lines must not flood the log); the connection stays usable (the
  parser resyncs at the next empty line);
- Redis or DNS failures and unexpected exceptions become the fallback, are
  counted, and are logged once per interval; nothing kills the server;
- `reload()` swaps in new checks atomically; `stop()` stops accepting and
  lets requests in flight finish before a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from policyd.check import BuiltCheck, CheckContext
from policyd.decision import DUNNO, Decision, Verb
from policyd.pipeline import evaluate
from policyd.protocol import ParseError, PolicyRequest, RequestParser, format_action
from postwarden import logs, metrics, socketfile
from postwarden.config.schema import OnError, Settings
from postwarden.errors import ResolverUnavailable, StoreUnavailable
from postwarden.replies import SERVICE_UNAVAILABLE

log = logging.getLogger("postwarden.policyd")

READ_CHUNK = 65536
# Pipelined requests answered from one read before the loop serves others.
YIELD_EVERY = 32


def fallback(on_error: OnError) -> Decision:
    """The answer when we cannot decide: DUNNO, or 451 4.3.0 for tempfail."""
    if on_error is OnError.TEMPFAIL:
        return Decision(Verb.DEFER, reply=SERVICE_UNAVAILABLE, check="on_error")
    return Decision(Verb.DUNNO, check="on_error")


@dataclass(eq=False)
class _Connection:
    """One client connection's state, as admission sees it."""

    tag: str
    task: asyncio.Task[None]
    last_active: float  # loop time of the last byte read or reply written
    reading_since: float | None = None  # first byte of a partial request
    deciding: bool = False

    @property
    def idle(self) -> bool:
        return self.reading_since is None and not self.deciding


@dataclass
class _Generation:
    """One loaded config: settings plus its compiled checks."""

    settings: Settings
    checks: Sequence[BuiltCheck]


class PolicyServer:
    def __init__(self, settings: Settings, checks: Sequence[BuiltCheck], ctx: CheckContext) -> None:
        self._gen = _Generation(settings, checks)
        self.ctx = ctx
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._conn_seq = 0
        self._errors = logs.RateLimitedLog(log, interval=60.0)
        self._client_errors = logs.RateLimitedLog(log, interval=60.0)
        # Admitted connections in admission order; waiters for a free slot.
        self._active: dict[_Connection, None] = {}
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._socket_id: socketfile.Identity | None = None

    @property
    def settings(self) -> Settings:
        return self._gen.settings

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        sock = self.settings.policyd.socket
        if sock.kind == "unix":
            path = sock.path
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            # Mode and owner: policyd/service.py (postwarden.sockets.grant).
            self._server = await asyncio.start_unix_server(
                self._handle, path=path, backlog=socket.SOMAXCONN
            )
            self._socket_id = socketfile.identity(path)
        else:
            self._server = await asyncio.start_server(
                self._handle,
                host=sock.host or None,
                port=sock.port,
                reuse_address=True,
                backlog=socket.SOMAXCONN,
            )
            for s in self._server.sockets:
                # Replies are small; don't let Nagle hold them back.
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.info(
            "policyd listening on %s (%d checks: %s)",
            sock,
            len(self._gen.checks),
            ",".join(c.name for c in self._gen.checks) or "none",
        )

    async def stop(self, deadline: float = 10.0) -> None:
        """Stop accepting; let requests in flight finish, then close connections."""
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), deadline)
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._client_errors.flush()
        self._errors.flush()
        sock = self.settings.policyd.socket
        if sock.kind == "unix":
            socketfile.remove_own(sock.path, self._socket_id)

    def reload(self, settings: Settings, checks: Sequence[BuiltCheck]) -> None:
        if settings.policyd.socket != self.settings.policyd.socket:
            log.warning("policyd.socket changed; restart the service to move the socket")
        self._gen = _Generation(settings, checks)
        self.ctx.settings = settings
        log.info(
            "policyd reloaded (%d checks: %s)",
            len(checks),
            ",".join(c.name for c in checks) or "none",
        )

    # -- connections -------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self._conn_seq += 1
        tag = f"p{os.getpid()}.{self._conn_seq}"
        loop = asyncio.get_running_loop()
        conn = _Connection(tag, task, loop.time())
        try:
            with logs.context(connection=tag):
                if not self._allowed(writer):
                    return
                if await self._admit(conn):
                    await self._serve_connection(conn, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # stop() cancels connections Postfix keeps open for reuse, and
            # admission cancels the one it closes; ending quietly here keeps
            # asyncio from logging the cancellation as an error.
            pass
        finally:
            self._release(conn)
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _allowed(self, writer: asyncio.StreamWriter) -> bool:
        """An inet listener serves only `allowed_clients` (default loopback):
        the policy protocol has no authentication, and any process that can
        reach the port could otherwise spend another user's rate-limit quota
        or pre-pass a greylist triplet. Unix sockets are guarded by their mode."""
        p = self.settings.policyd
        if p.socket.kind != "inet":
            return True
        peer = writer.get_extra_info("peername")
        try:
            addr = ipaddress.ip_address(peer[0] if isinstance(peer, tuple) else peer)
        except (TypeError, ValueError, IndexError):
            addr = None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if addr is not None and any(addr in net for net in p.allowed_clients):
            return True
        metrics.POLICY_ERRORS.labels("not_allowed").inc()
        self._client_errors.warning(
            "not_allowed",
            "policyd: connection from %s refused (not in policyd.allowed_clients)",
            addr if addr is not None else peer,
        )
        return False

    async def _admit(self, conn: _Connection) -> bool:
        """Take a slot, closing an idle or stalled connection when full."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(self.settings.policyd.request_timeout)
        while len(self._active) >= self.settings.policyd.max_connections:
            if self._evict():
                continue
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            except TimeoutError:
                metrics.POLICY_ERRORS.labels("refused").inc()
                self._client_errors.warning(
                    "refused",
                    "all %d connections are deciding requests; refused a new connection",
                    self.settings.policyd.max_connections,
                )
                return False
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        self._active[conn] = None
        return True

    def _evict(self) -> bool:
        """Close the longest-idle connection, else the one stalled longest in
        the middle of a request; never one whose request is being decided."""
        idle = [c for c in self._active if c.idle]
        if idle:
            victim = min(idle, key=lambda c: c.last_active)
            kind = "idle"
        else:
            partial = [c for c in self._active if c.reading_since is not None and not c.deciding]
            if not partial:
                return False
            victim = min(partial, key=lambda c: c.reading_since or 0.0)
            kind = "stalled"
        self._active.pop(victim, None)
        victim.task.cancel()
        metrics.POLICY_ERRORS.labels(f"evicted_{kind}").inc()
        self._client_errors.warning(
            f"evict-{kind}",
            "%d connections open: closed the %s connection %s to admit a new one",
            self.settings.policyd.max_connections,
            "longest-idle" if kind == "idle" else "longest-stalled",
            victim.tag,
        )
        return True

    def connection_states(self) -> dict[str, int]:
        """Admitted connections by state: idle, reading (a partial request), deciding."""
        states = {"idle": 0, "reading": 0, "deciding": 0}
        for c in self._active:
            states["deciding" if c.deciding else "idle" if c.idle else "reading"] += 1
        return states

    def _release(self, conn: _Connection) -> None:
        if self._active.pop(conn, 0) is None:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break

    async def _serve_connection(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        p = self.settings.policyd
        loop = asyncio.get_running_loop()
        parser = RequestParser(max_line=p.max_line, max_attributes=p.max_attributes)
        while True:
            if conn.reading_since is None:
                timeout = float(p.idle_timeout)
            else:
                timeout = conn.reading_since + float(p.request_timeout) - loop.time()
            try:
                if timeout <= 0:
                    raise TimeoutError
                data = await asyncio.wait_for(reader.read(READ_CHUNK), timeout)
            except TimeoutError:
                if conn.reading_since is None:
                    log.debug("closing idle connection after %ss", p.idle_timeout)
                else:
                    metrics.POLICY_ERRORS.labels("slow_client").inc()
                    self._client_errors.warning(
                        "slow_client",
                        "request not complete %gs after its first byte; closing the connection",
                        float(p.request_timeout),
                    )
                return
            now = loop.time()
            conn.last_active = now
            if not data:
                if parser.pending:
                    log.info("client closed the connection in the middle of a request")
                return
            answered = False
            conn.deciding = True
            self._busy(+1)
            try:
                for n, item in enumerate(parser.feed(data), 1):
                    answered = True
                    if isinstance(item, ParseError):
                        answer = self._refuse(item)
                    else:
                        answer = await self._decide(item)
                    writer.write(format_action(answer.action_line()))
                    if n % YIELD_EVERY == 0:
                        # One read can hold thousands of tiny (or empty)
                        # requests; let the other connections have a turn.
                        await asyncio.sleep(0)
            finally:
                self._busy(-1)
                conn.deciding = False
            if not parser.pending:
                conn.reading_since = None
            elif answered or conn.reading_since is None:
                conn.reading_since = now  # the partial request's first byte came in this read
            if answered and writer.transport.get_write_buffer_size():
                # Usually the reply is already flushed and this is skipped: a
                # wait_for per request would cost a task each (measured).
                try:
                    await asyncio.wait_for(writer.drain(), float(p.request_timeout))
                except TimeoutError:
                    metrics.POLICY_ERRORS.labels("slow_client").inc()
                    self._client_errors.warning(
                        "unread", "client does not read its replies; closing the connection"
                    )
                    return
                conn.last_active = loop.time()

    def _busy(self, delta: int) -> None:
        self._inflight += delta
        if self._inflight == 0:
            self._idle.set()
        else:
            self._idle.clear()

    # -- decisions ----------------------------------------------------------
    def _refuse(self, error: ParseError) -> Decision:
        metrics.POLICY_ERRORS.labels("malformed").inc()
        answer = fallback(self.settings.policyd.on_error)
        self._client_errors.warning(
            f"malformed-{type(error).__name__}",
            "malformed policy request: %s; answering %s",
            error,
            answer.action_line(),
        )
        metrics.POLICY_REQUESTS.labels(answer.verb.value).inc()
        return answer

    async def _decide(self, req: PolicyRequest) -> Decision:
        gen = self._gen
        started = time.perf_counter()
        trail: tuple[tuple[str, str], ...] = ()
        error = ""
        with logs.context(queue=req.queue_id):
            try:
                outcome = await asyncio.wait_for(
                    evaluate(gen.checks, req, self.ctx), float(gen.settings.policyd.request_timeout)
                )
                answer, trail = outcome.decision, outcome.trail
            except StoreUnavailable as exc:
                answer, error = self._failed("store", "redis unavailable: %s", exc)
            except ResolverUnavailable as exc:
                answer, error = self._failed("dns", "DNS unavailable: %s", exc)
            except TimeoutError:
                answer, error = self._failed(
                    "timeout", "request took longer than %ss", gen.settings.policyd.request_timeout
                )
            except Exception as exc:  # a bug in a check must not kill the server
                log.debug("check raised", exc_info=True)
                answer, error = self._failed("bug", "check failed: %r", exc)
            elapsed = time.perf_counter() - started
            metrics.POLICY_LATENCY.observe(elapsed)
            metrics.POLICY_REQUESTS.labels(answer.verb.value).inc()
            self.ctx.stats.add(f"policyd.{answer.verb.value.lower()}")
            for name, verb in trail:
                metrics.CHECK_DECISIONS.labels(name, verb).inc()
                self.ctx.stats.add(f"{name}.{verb.lower()}")
            logs.decision(
                log,
                {
                    "service": "policyd",
                    "state": req.protocol_state.value,
                    "client": req.client_address_raw,
                    "helo": req.helo_name,
                    "from": f"<{req.sender}>",
                    "to": f"<{req.recipient}>" if req.recipient else "",
                    "sasl": req.sasl_username,
                    "action": answer.action_line(),
                    "check": answer.check,
                    "reason": answer.reason,
                    "checks": [f"{n}:{v}" for n, v in trail],
                    "error": error,
                    "ms": f"{elapsed * 1000:.1f}",
                },
            )
        return answer if answer is not DUNNO else DUNNO

    def _failed(self, kind: str, msg: str, arg: object) -> tuple[Decision, str]:
        metrics.POLICY_ERRORS.labels(kind).inc()
        self.ctx.stats.add(f"policyd.error.{kind}")
        answer = fallback(self.settings.policyd.on_error)
        self._errors.warning(kind, msg + "; answering with on_error fallback", arg)
        return answer, kind
