"""The asyncio policy server: sockets, framing, timeouts, fallbacks, reloads.

It owns everything around the checks and nothing of their logic:
- one connection carries many requests; pipelined requests are answered in
  order (SMTPD_POLICY_README), each within `request_timeout`;
- a malformed request is logged with its reason and answered with the
  `on_error` fallback; the connection stays usable (the parser resyncs at
  the next empty line);
- Redis or DNS failures and unexpected exceptions become the fallback, are
  counted, and are logged once per interval; nothing kills the server;
- `reload()` swaps in new checks atomically; `stop()` stops accepting and
  lets requests in flight finish before a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from postwarden import logs, metrics
from postwarden.config.schema import OnError, Settings
from postwarden.errors import ResolverUnavailable, StoreUnavailable
from postwarden.replies import SERVICE_UNAVAILABLE

log = logging.getLogger("postwarden.policyd")

READ_CHUNK = 65536


def fallback(on_error: OnError) -> Decision:
    """The answer when we cannot decide: DUNNO, or 451 4.3.0 for tempfail."""
    if on_error is OnError.TEMPFAIL:
        return Decision(Verb.DEFER, reply=SERVICE_UNAVAILABLE, check="on_error")
    return Decision(Verb.DUNNO, check="on_error")


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
        self._limit = asyncio.Semaphore(settings.policyd.max_connections)

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
            self._server = await asyncio.start_unix_server(self._handle, path=path)
        else:
            self._server = await asyncio.start_server(
                self._handle, host=sock.host or None, port=sock.port, reuse_address=True
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
        sock = self.settings.policyd.socket
        if sock.kind == "unix":
            # OSError: after dropping root the directory may not be ours
            # (Postfix's private/); the next start as root replaces it.
            with contextlib.suppress(OSError):
                os.unlink(sock.path)

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
        try:
            async with self._limit:
                with logs.context(connection=tag):
                    await self._serve_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # stop() cancels connections Postfix keeps open for reuse; ending
            # quietly here keeps asyncio from logging the cancellation as an error.
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        p = self.settings.policyd
        parser = RequestParser(max_line=p.max_line, max_attributes=p.max_attributes)
        while True:
            try:
                data = await asyncio.wait_for(reader.read(READ_CHUNK), float(p.idle_timeout))
            except TimeoutError:
                log.debug("closing idle connection after %ss", p.idle_timeout)
                return
            if not data:
                if parser.pending:
                    log.info("client closed the connection in the middle of a request")
                return
            for item in parser.feed(data):
                self._busy(+1)
                try:
                    if isinstance(item, ParseError):
                        answer = self._refuse(item)
                    else:
                        answer = await self._decide(item)
                    writer.write(format_action(answer.action_line()))
                finally:
                    self._busy(-1)
            await writer.drain()

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
        log.warning("malformed policy request: %s; answering %s", error, answer.action_line())
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
