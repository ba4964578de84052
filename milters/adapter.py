"""The only module that talks to pymilter/libmilter: callbacks, nothing else.

It collects libmilter's callbacks into an `Envelope` and a `Message`, hands
them to `milters.pipeline` at end-of-message (which applies the budget,
on_error, warn mode; the very path `postwarden scan` takes), and maps the
resulting `Verdict` onto libmilter: header edits, reply, tempfail, discard,
quarantine (Postfix HOLD), body replacement and recipient changes. The
process around it (sockets, signals, reload, counters) is `milters.service`.

Per-connection state lives on the instance, which libmilter may move between
worker threads: each callback sets the logging context from it on entry.
No exception ever reaches libmilter.

Negotiation: every callback before end-of-message is declared `noreply`
(Postfix does not wait for an answer, saving a round trip per header), and
the ones an engine does not need (headers, body; DATA) are declared
`nocallback`, so Postfix does not even send them (MILTER_README, "Milter
protocol").

Over TCP (inet: sockets) DATA is sent and answered, once per message. Postfix
buffers the unanswered commands and flushes them at DATA; the milter's kernel,
in delayed-ACK ("ping-pong") mode since its option-negotiation reply, holds
the ACK for that segment up to 40 ms; and Postfix's next write (the rest of
the message and end-of-message) waits for that ACK under Nagle's algorithm,
since Postfix leaves TCP_NODELAY off on milter sockets. Packet captures on
loopback showed exactly one such 40 ms stall per message, and TCP_NODELAY on
our side cannot help: the waiting end is Postfix's. Answering DATA puts an
immediate ACK on the wire (it rides on the reply), so end-of-message goes out
at once, for one round trip per message (not per recipient). Over unix
sockets there is no ACK to wait for, and an extra libmilter wake-up per
message would buy nothing, so DATA is not even sent.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import Milter

from milters.engine import Needs
from milters.message import Action, Envelope, Header, HeaderEdit, HeaderOp, Message, Verdict
from milters.pipeline import Runner, Stage, StageResult
from postwarden import logs, metrics, replies
from postwarden.replies import Reply

log = logging.getLogger("postwarden.milter")

# libmilter's return codes, typed (pymilter exports them untyped).
CONTINUE: int = Milter.CONTINUE
ACCEPT: int = Milter.ACCEPT
REJECT: int = Milter.REJECT
TEMPFAIL: int = Milter.TEMPFAIL
DISCARD: int = Milter.DISCARD

# Macros read at each stage (Postfix MILTER_README "Macros"); `i` is the
# queue ID, known from MAIL FROM on. `postwarden postfix-config` prints the
# main.cf parameter of each stage (MACRO_PARAMETERS) so Postfix sends them.
MACROS = {
    "connect": ("j", "{daemon_name}", "{client_addr}", "{client_name}", "{client_port}", "_"),
    "hello": ("{tls_version}", "{cipher}", "{cert_subject}"),
    "envfrom": ("i", "{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}"),
    "eom": ("i",),
}
MACRO_PARAMETERS = {
    "connect": "milter_connect_macros",
    "hello": "milter_helo_macros",
    "envfrom": "milter_mail_macros",
    "eom": "milter_end_of_data_macros",
}


class StageSlot:
    """The stage one milter process serves and its runner.

    Reload replaces `stage` with one assignment, so a message in flight keeps
    the engine and settings (mode, budget) it started with: never a new
    engine with an old mode.
    """

    def __init__(self, stage: Stage, runner: Runner) -> None:
        self.stage = stage
        self.runner = runner
        # Open SMTP connections, so shutdown can wait for them and no longer.
        self.active = 0
        self.active_lock = threading.Lock()
        self.drained = threading.Event()
        self.drained.set()

    @property
    def name(self) -> str:
        return self.stage.name

    def opened(self) -> None:
        with self.active_lock:
            self.active += 1
            self.drained.clear()

    def closed(self) -> None:
        with self.active_lock:
            self.active = max(0, self.active - 1)
            if self.active == 0:
                self.drained.set()

    def swap(self, stage: Stage) -> None:
        self.stage = stage


class MilterAdapter(Milter.Base):  # type: ignore[misc]
    """One instance per SMTP connection (Milter.factory builds it)."""

    slot: ClassVar[StageSlot]

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
        for name in MACROS[stage]:
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

    # -- callbacks (all before EOM: noreply; DATA see adapter_class) -------
    @Milter.noreply  # type: ignore[untyped-decorator]
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        def go() -> None:
            self._client_name = hostname or "unknown"
            self._read_macros("connect")
            # pymilter passes (ip, port) for inet families; some callers a bare string.
            addr = self._macros.get("client_addr") or (
                hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else hostaddr or ""
            )
            self._client_address = client_ip(str(addr))

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
        room = int(self.slot.stage.settings.max_body_size) - len(self._body)
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
        stage = slot.stage  # one read: engine and settings stay paired
        with self._context():
            try:
                env = self._envelope()
                msg = Message(
                    tuple(self._headers),
                    bytes(self._body),
                    self._body_size,
                    self._body_size > len(self._body),
                )
                with logs.context(msgid=msg.message_id):
                    if self._error is not None:
                        result = slot.runner.failed(stage, self._error)
                    else:
                        result = slot.runner.run(stage, msg, env)
                    rc = self._apply(result.verdict)
                    record(slot.runner, result, env, msg)
                    return rc
            except Exception as exc:  # applying the verdict failed (libmilter call)
                log.warning("milter %s: cannot apply verdict: %s", stage.name, exc)
                metrics.MILTER_ERRORS.labels(stage.name, "bug").inc()
                return TEMPFAIL if stage.settings.on_error.value == "tempfail" else ACCEPT
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


def client_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client address as one form: `IPv6:` prefixes dropped and
    IPv4-mapped IPv6 (::ffff:192.0.2.1) unwrapped, as policyd's protocol does."""
    try:
        addr = ipaddress.ip_address(text.removeprefix("IPv6:").strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def record(runner: Runner, result: StageResult, env: Envelope, msg: Message) -> None:
    """Count and log one decision (one greppable line per message)."""
    verdict = result.verdict
    name = result.name
    metrics.milter_decided(
        name, verdict.action.value, result.seconds, [s.name for s in verdict.symbols]
    )
    stats = runner.service.stats
    stats.add(f"milter.{name}.scanned")
    stats.add(f"milter.{name}.{verdict.action.value}")
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
            "outcome": "" if result.outcome == "ok" else result.outcome,
        },
    )


def adapter_class(needs: Needs, *, answer_data: bool = False) -> type[MilterAdapter]:
    """A subclass that asks Postfix only for what the engine needs.

    `answer_data` (inet: sockets): DATA is sent and answered, so the reply
    carries the ACK Postfix's Nagle waits for (module docstring).
    """
    attrs: dict[str, Any] = {}
    if answer_data:

        def data(self: MilterAdapter) -> int:
            return CONTINUE

        attrs["data"] = data
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


def install(slot: StageSlot) -> type[MilterAdapter]:
    """Set `Milter.factory` (pymilter's one global) for this process."""
    needs = slot.stage.engine.needs
    cls = adapter_class(needs, answer_data=slot.stage.settings.socket.kind == "inet")
    cls.slot = slot
    Milter.factory = cls
    Milter.set_flags(action_flags(needs))
    return cls


def serve(name: str, libmilter_socket: str, timeout: int) -> None:
    """libmilter's main loop (blocks; run it on a thread of its own)."""
    Milter.runmilter(f"postwarden-{name}", libmilter_socket, timeout)


def stop() -> None:
    """Ask libmilter to stop (blocks until its accept poll wakes up)."""
    Milter.milter.stop()
