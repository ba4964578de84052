"""The only module that talks to pymilter/libmilter.

It collects libmilter's callbacks into an `Envelope` and a `Message`, calls
the engine once at end-of-message, and applies the `Verdict`: header edits,
reply, tempfail, discard, quarantine (Postfix HOLD), body replacement and
recipient changes. Engines stay pure; `postwarden scan` calls them the same way.

Per-connection state lives on the instance, which libmilter may move between
worker threads: each callback sets the logging context from it on entry.
No exception ever reaches libmilter: a failure anywhere becomes the
service's `on_error` action, with one log line naming the queue ID.

Negotiation: every callback before end-of-message is declared `noreply`
(Postfix does not wait for an answer, saving a round trip per header), and
the ones an engine does not need (headers, body) are declared `nocallback`,
so Postfix does not even send them (MILTER_README, "Milter protocol").
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import Milter

from milters.engine import Engine, Needs, builders
from milters.message import Action, Envelope, Header, HeaderEdit, HeaderOp, Message, Verdict
from postwarden import logs, metrics, replies, sdnotify
from postwarden.config import ConfigError, Settings, load_config
from postwarden.config.errors import ConfigProblem
from postwarden.config.schema import MilterSettings, Mode, OnError
from postwarden.errors import ResolverUnavailable, StoreUnavailable
from postwarden.replies import SERVICE_UNAVAILABLE, Reply
from postwarden.stats import FLUSH_INTERVAL, StatBuffer
from postwarden.store import embedded
from postwarden.store.client import Store, open_store

log = logging.getLogger("postwarden.milter")

# libmilter's return codes, typed (pymilter exports them untyped).
CONTINUE: int = Milter.CONTINUE
ACCEPT: int = Milter.ACCEPT
REJECT: int = Milter.REJECT
TEMPFAIL: int = Milter.TEMPFAIL
DISCARD: int = Milter.DISCARD

# Macros read at each stage (Postfix MILTER_README "Macros"); `i` is the
# queue ID, known from MAIL FROM on.
_MACROS = {
    "connect": ("j", "{daemon_name}", "{client_addr}", "{client_name}", "{client_port}", "_"),
    "hello": ("{tls_version}", "{cipher}", "{cert_subject}"),
    "envfrom": ("i", "{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}"),
    "eom": ("i",),
}

WARN_HEADER = "X-Postwarden-Warn"
STOP_DEADLINE = 25.0


class EngineSlot:
    """The engine one milter process serves; swapped whole on reload."""

    def __init__(self, name: str, engine: Engine, settings: MilterSettings) -> None:
        self.name = name
        self.engine = engine
        self.settings = settings
        self.errors = logs.RateLimitedLog(log, interval=60.0)
        self.stats = StatBuffer()
        # Open SMTP connections, so shutdown can wait for them and no longer.
        self.active = 0
        self.active_lock = threading.Lock()
        self.drained = threading.Event()
        self.drained.set()

    def opened(self) -> None:
        with self.active_lock:
            self.active += 1
            self.drained.clear()

    def closed(self) -> None:
        with self.active_lock:
            self.active = max(0, self.active - 1)
            if self.active == 0:
                self.drained.set()

    def swap(self, engine: Engine, settings: MilterSettings) -> None:
        self.engine, self.settings = engine, settings


class MilterAdapter(Milter.Base):  # type: ignore[misc]
    """One instance per SMTP connection (Milter.factory builds it)."""

    slot: ClassVar[EngineSlot]

    def __init__(self) -> None:
        self.slot.opened()
        self._conn = f"m{os.getpid()}.{Milter.uniqueID()}"
        self._macros: dict[str, str] = {}
        self._client_address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self._client_name = "unknown"
        self._helo = ""
        self._reset_message()

    def _reset_message(self) -> None:
        self._mail_from = ""
        self._rcpts: list[str] = []
        self._headers: list[Header] = []
        self._body = bytearray()
        self._body_size = 0
        self._error: BaseException | None = None
        for key in ("i", "auth_authen", "auth_type", "auth_author", "mail_addr"):
            self._macros.pop(key, None)

    # -- helpers -----------------------------------------------------------
    def _context(self) -> Any:
        return logs.context(queue=self._macros.get("i", ""), connection=self._conn)

    def _read_macros(self, stage: str) -> None:
        for name in _MACROS[stage]:
            try:
                value = self.getsymval(name)
            except Exception:  # no libmilter context (e.g. some test harnesses)
                value = None
            if value:
                self._macros[name.strip("{}")] = value

    def _guard(self, fn: Callable[[], None]) -> None:
        """Record a failure in a pre-EOM callback; EOM turns it into on_error."""
        if self._error is not None:
            return
        try:
            fn()
        except Exception as exc:
            self._error = exc

    # -- callbacks (all before EOM: noreply) -------------------------------
    @Milter.noreply  # type: ignore[untyped-decorator]
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        def go() -> None:
            self._client_name = hostname or "unknown"
            self._read_macros("connect")
            # pymilter passes (ip, port) for inet families; some callers a bare string.
            addr = self._macros.get("client_addr") or (
                hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else hostaddr or ""
            )
            try:
                self._client_address = ipaddress.ip_address(str(addr).removeprefix("IPv6:"))
            except ValueError:
                self._client_address = None

        with self._context():
            self._guard(go)
        return CONTINUE

    @Milter.noreply  # type: ignore[untyped-decorator]
    def hello(self, heloname: str) -> int:
        self._helo = heloname
        with self._context():
            self._guard(lambda: self._read_macros("hello"))
        return CONTINUE

    @Milter.noreply  # type: ignore[untyped-decorator]
    def envfrom(self, mailfrom: str, *params: str) -> int:
        self._reset_message()
        self._mail_from = mailfrom.strip().removeprefix("<").removesuffix(">")
        with self._context():
            self._guard(lambda: self._read_macros("envfrom"))
        return CONTINUE

    @Milter.noreply  # type: ignore[untyped-decorator]
    def envrcpt(self, to: str, *params: str) -> int:
        self._rcpts.append(to.strip().removeprefix("<").removesuffix(">"))
        return CONTINUE

    @Milter.noreply  # type: ignore[untyped-decorator]
    def header(self, name: str, value: str) -> int:
        # Postfix sends folded values with bare LF; keep CRLF like Message.from_bytes.
        self._headers.append(Header(name, value.replace("\r\n", "\n").replace("\n", "\r\n")))
        return CONTINUE

    @Milter.noreply  # type: ignore[untyped-decorator]
    def eoh(self) -> int:
        return CONTINUE

    @Milter.noreply  # type: ignore[untyped-decorator]
    def body(self, chunk: bytes) -> int:
        self._body_size += len(chunk)
        room = int(self.slot.settings.max_body_size) - len(self._body)
        if room > 0:
            self._body += chunk[:room]
        return CONTINUE

    @Milter.nocallback  # type: ignore[untyped-decorator]
    def data(self) -> int:
        return CONTINUE

    @Milter.nocallback  # type: ignore[untyped-decorator]
    def unknown(self, cmd: str) -> int:
        return CONTINUE

    def eom(self) -> int:
        self._read_macros("eom")
        slot = self.slot
        with self._context():
            try:
                if self._error is not None:
                    raise self._error
                env = self._envelope()
                msg = Message(
                    tuple(self._headers),
                    bytes(self._body),
                    self._body_size,
                    self._body_size > len(self._body),
                )
                with logs.context(msgid=msg.message_id):
                    verdict = slot.engine.evaluate(msg, env)
                    if slot.settings.mode is Mode.WARN:
                        verdict = warn_only(slot.name, verdict)
                    rc = self._apply(verdict)
                    metrics.MILTER_MESSAGES.labels(slot.name, verdict.action.value).inc()
                    slot.stats.add(f"milter.{slot.name}.scanned")
                    slot.stats.add(f"milter.{slot.name}.{verdict.action.value}")
                    _log_decision(slot.name, env, msg, verdict)
                    return rc
            except Exception as exc:
                return self._fallback(exc)
            finally:
                self._reset_message()

    def abort(self) -> int:
        self._reset_message()
        return CONTINUE

    def close(self) -> int:
        self.slot.closed()
        return CONTINUE

    # -- EOM ---------------------------------------------------------------
    def _envelope(self) -> Envelope:
        m = self._macros
        return Envelope(
            client_address=self._client_address,
            client_name=m.get("client_name", self._client_name),
            helo=self._helo,
            mail_from=self._mail_from,
            recipients=tuple(self._rcpts),
            queue_id=m.get("i", ""),
            auth_user=m.get("auth_authen", ""),
            daemon_name=m.get("daemon_name", ""),
            macros=dict(m),
        )

    def _apply(self, verdict: Verdict) -> int:
        action = verdict.action
        if action in (Action.REJECT, Action.TEMPFAIL, Action.GREYLIST):
            default = (
                replies.TEMPFAIL if action is not Action.REJECT else Reply(550, "5.7.1", "Rejected")
            )
            self._reply(verdict.reply or default)
            return REJECT if action is Action.REJECT else TEMPFAIL
        if action is Action.DISCARD:
            return DISCARD
        for edit in verdict.header_edits:
            self._edit(edit)
        if verdict.new_body is not None:
            self.replacebody(verdict.new_body)
        for rcpt in verdict.remove_recipients:
            self.delrcpt(f"<{rcpt}>")
        for rcpt in verdict.add_recipients:
            self.addrcpt(f"<{rcpt}>")
        if action is Action.QUARANTINE:
            self.quarantine(verdict.reason or "held by postwarden")
        return ACCEPT

    def _edit(self, edit: HeaderEdit) -> None:
        # libmilter wants LF-folded values; our model keeps CRLF.
        value = edit.value.replace("\r\n", "\n")
        if edit.op is HeaderOp.ADD:
            self.addheader(edit.name, value)
        elif edit.op is HeaderOp.INSERT:
            self.addheader(edit.name, value, edit.index)
        elif edit.op is HeaderOp.CHANGE:
            self.chgheader(edit.name, edit.index, value)
        elif edit.op is HeaderOp.DELETE:
            self.chgheader(edit.name, edit.index, "")

    def _reply(self, reply: Reply) -> None:
        # libmilter drops a reply with a lone '%' silently: double them.
        self.setreply(str(reply.code), reply.enhanced, reply.text.replace("%", "%%"))

    def _fallback(self, exc: BaseException) -> int:
        slot = self.slot
        kind = (
            "store"
            if isinstance(exc, StoreUnavailable)
            else "dns"
            if isinstance(exc, ResolverUnavailable)
            else "bug"
        )
        metrics.MILTER_ERRORS.labels(slot.name, kind).inc()
        slot.stats.add(f"milter.{slot.name}.error.{kind}")
        log.debug("milter %s failed", slot.name, exc_info=exc)
        tempfail = slot.settings.on_error is OnError.TEMPFAIL
        slot.errors.warning(
            kind,
            "milter %s: %s: %s; on_error=%s",
            slot.name,
            kind,
            exc,
            slot.settings.on_error.value,
        )
        if tempfail:
            try:
                self._reply(SERVICE_UNAVAILABLE)
            except Exception:
                pass
            return TEMPFAIL
        return ACCEPT


def warn_only(name: str, verdict: Verdict) -> Verdict:
    """mode: warn — nothing a milter on trial does may lose or alter mail.

    Added headers stay (they only add information); a final action, a body
    rewrite, a changed or deleted header and recipient changes are dropped
    and named in one X-Postwarden-Warn header instead.
    """
    additive = tuple(e for e in verdict.header_edits if e.op in (HeaderOp.ADD, HeaderOp.INSERT))
    withheld: list[str] = []
    if verdict.action not in (Action.ACCEPT, Action.ADD_HEADER, Action.REWRITE_SUBJECT):
        withheld.append(verdict.action.value)
    if len(additive) != len(verdict.header_edits):
        withheld.append("change headers")
    if verdict.new_body is not None:
        withheld.append("rewrite the body")
    if verdict.add_recipients or verdict.remove_recipients:
        withheld.append("change recipients")
    if not withheld:
        return verdict
    text = f"{name} would {', '.join(withheld)}"
    if verdict.reason:
        text += f": {verdict.reason}"
    return Verdict(
        action=Action.ADD_HEADER,
        reason=f"warn mode: {verdict.reason}",
        header_edits=(*additive, HeaderEdit(HeaderOp.ADD, WARN_HEADER, text)),
        symbols=verdict.symbols,
        score=verdict.score,
        required_score=verdict.required_score,
        details=verdict.details,
    )


def _log_decision(name: str, env: Envelope, msg: Message, verdict: Verdict) -> None:
    reply = str(verdict.reply) if verdict.reply else ""
    logs.decision(
        log,
        {
            "service": name,
            "message_id": msg.message_id,
            "client": str(env.client_address or ""),
            "from": f"<{env.mail_from}>",
            "to": [f"<{r}>" for r in env.recipients],
            "auth": env.auth_user,
            "size": msg.body_size,
            "action": verdict.action.value,
            "reply": reply,
            "reason": verdict.reason,
            "score": "" if verdict.score is None else f"{verdict.score:.2f}",
        },
    )


def adapter_class(needs: Needs) -> type[MilterAdapter]:
    """A subclass that asks Postfix only for what the engine needs."""
    attrs: dict[str, Any] = {}
    if not needs.headers:

        def header(self: MilterAdapter, name: str, value: str) -> int:
            return CONTINUE

        def eoh(self: MilterAdapter) -> int:
            return CONTINUE

        attrs["header"] = Milter.nocallback(header)
        attrs["eoh"] = Milter.nocallback(eoh)
    if not needs.body:

        def body(self: MilterAdapter, chunk: bytes) -> int:
            return CONTINUE

        attrs["body"] = Milter.nocallback(body)
    return type("ScopedMilterAdapter", (MilterAdapter,), attrs)


def action_flags(needs: Needs) -> int:
    flags = 0
    if needs.add_headers:
        flags |= Milter.ADDHDRS
    if needs.change_headers:
        flags |= Milter.CHGHDRS | Milter.ADDHDRS
    if needs.change_body:
        flags |= Milter.CHGBODY
    if needs.change_recipients:
        flags |= Milter.ADDRCPT | Milter.DELRCPT
    if needs.quarantine:
        flags |= Milter.QUARANTINE
    return int(flags)


def build_engine(name: str, settings: Settings) -> Engine:
    problems: list[ConfigProblem] = []
    engine = builders()[name](settings, problems)
    for p in problems:
        if p.severity != "error":
            log.warning("%s", p)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise ConfigError(errors)
    if engine is None:
        raise ConfigError(
            [ConfigProblem("config", 0, f"milters.{name}", "milter is not available")]
        )
    return engine


def install(name: str, settings: Settings) -> type[MilterAdapter]:
    """Set `Milter.factory` (pymilter's one global) for this process."""
    engine = build_engine(name, settings)
    cls = adapter_class(engine.needs)
    cls.slot = EngineSlot(name, engine, settings.milters.by_name()[name])
    Milter.factory = cls
    Milter.set_flags(action_flags(engine.needs))
    return cls


def run(name: str, config_path: str, settings: Settings) -> int:
    """Serve milter NAME until SIGTERM; SIGHUP reloads its engine.

    libmilter runs in a worker thread: its own signal thread would otherwise
    stop the milter on SIGHUP. The main thread keeps Python's handlers.
    """
    cls = install(name, settings)
    msettings = settings.milters.by_name()[name]
    sock = msettings.socket
    if sock.kind == "unix":
        os.makedirs(os.path.dirname(sock.path), exist_ok=True)
        try:
            os.unlink(sock.path)
        except FileNotFoundError:
            pass
    stop = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            Milter.runmilter(f"postwarden-{name}", sock.libmilter, int(msettings.timeout))
        except BaseException as exc:
            failure.append(exc)
        finally:
            stop.set()

    def on_term(signum: int, frame: object) -> None:
        stop.set()

    def on_hup(signum: int, frame: object) -> None:
        try:
            new = load_config(config_path)
            engine = build_engine(name, new)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config:\n%s", exc)
            return
        cls.slot.swap(engine, new.milters.by_name()[name])
        log.info("milter %s reloaded", name)

    store = _stats_store(settings)
    if settings.metrics.enabled and not os.environ.get(metrics.MULTIPROC_ENV):
        metrics.serve(settings.metrics.listen)  # alone; under `run` the supervisor serves
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    old_umask = os.umask(0o111)  # socket rw for Postfix's smtpd (user postfix)
    thread = threading.Thread(target=serve, name=f"libmilter-{name}", daemon=True)
    thread.start()
    try:
        _wait_for_socket(sock.path if sock.kind == "unix" else "", stop)
    finally:
        os.umask(old_umask)
    if sock.kind == "inet":
        _set_nodelay(sock.port)
    log.info("milter %s listening on %s", name, sock)
    sdnotify.notify("READY=1")
    last_flush = time.monotonic()
    while not stop.wait(0.5):
        if store is not None and time.monotonic() - last_flush >= FLUSH_INTERVAL:
            cls.slot.stats.flush(store.redis, store.keys)
            last_flush = time.monotonic()
    if failure:
        log.error("milter %s stopped: %s", name, failure[0])
        return 1
    log.info("milter %s stopping", name)
    sdnotify.notify("STOPPING=1")
    # smfi_stop blocks until libmilter's accept poll times out (seconds), so it
    # runs on the side; removing the socket turns new connections away now.
    threading.Thread(target=Milter.milter.stop, name="libmilter-stop", daemon=True).start()
    if sock.kind == "unix":
        try:
            os.unlink(sock.path)
        except FileNotFoundError:
            pass
    # Let open sessions finish (bounded), then leave without waiting for
    # libmilter's own teardown.
    if not cls.slot.drained.wait(STOP_DEADLINE):
        log.warning("milter %s: %d connections still open at shutdown", name, cls.slot.active)
    thread.join(0.2)
    if store is not None:
        cls.slot.stats.flush(store.redis, store.keys)
        store.close()
    return 0


def _set_nodelay(port: int) -> None:
    """Set TCP_NODELAY on libmilter's listening socket (accepted sockets
    inherit it on Linux): small milter replies otherwise wait on Nagle and
    delayed ACKs (measured: 108 -> ~200 msgs/s over loopback TCP)."""
    import socket

    for _ in range(100):  # libmilter binds in its own thread, shortly after start
        for entry in os.scandir("/proc/self/fd"):
            try:
                fd = int(entry.name)
                s = socket.socket(fileno=os.dup(fd))
            except (ValueError, OSError):
                continue
            try:
                inet = s.family in (socket.AF_INET, socket.AF_INET6)
                if inet and s.type == socket.SOCK_STREAM and s.getsockname()[1] == port:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.01)
    log.warning("could not set TCP_NODELAY on the milter's port %d", port)


def _stats_store(settings: Settings) -> Store | None:
    """Redis for `postwarden stat` counters, if one is configured or running;
    a milter that needs no Redis does not start one just to count."""
    r = settings.redis
    if r.url is not None or r.sentinel is not None:
        return open_store(r)
    path = embedded.socket_path(settings.state_dir)
    return open_store(r, path) if embedded.answers(path) else None


def _wait_for_socket(path: str, stop: threading.Event) -> None:
    if not path:
        return
    for _ in range(200):
        if os.path.exists(path) or stop.is_set():
            return
        stop.wait(0.01)
