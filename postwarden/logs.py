"""Logging: context on every line, one greppable decision line per message.

Every record carries the Postfix queue ID, the Message-ID and a connection
tag from context variables, so `grep 4F2XQ1 mail.log` finds the whole story
(like Rspamd's task lines). Services set the context on entry to each
callback: libmilter may move a session between worker threads.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.handlers
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from postwarden.errors import StartupError

queue_id: contextvars.ContextVar[str] = contextvars.ContextVar("queue_id", default="")
message_id: contextvars.ContextVar[str] = contextvars.ContextVar("message_id", default="")
conn: contextvars.ContextVar[str] = contextvars.ContextVar("conn", default="")

_DEFAULT_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(context)s%(message)s"


class ContextFilter(logging.Filter):
    """Adds `queue_id`, `message_id`, `conn` and a ready-made `context` prefix."""

    def filter(self, record: logging.LogRecord) -> bool:
        q, m, c = queue_id.get(), message_id.get(), conn.get()
        record.queue_id, record.message_id, record.conn = q, m, c
        parts = []
        if q:
            parts.append(f"{q}:")
        if c:
            parts.append(f"conn={c}")
        record.context = (" ".join(parts) + " ") if parts else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for key in ("queue_id", "message_id", "conn"):
            value = getattr(record, key, "")
            if value:
                out[key] = value
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class SyslogFormatter(logging.Formatter):
    """`postwarden/policyd[123]: 4F2XQ1: message`: the tag and pid as Postfix
    writes them, then the queue ID first, so one grep finds both."""

    def format(self, record: logging.LogRecord) -> str:
        parts = record.name.split(".")
        tag = "/".join(parts[:2]) if parts[0] == "postwarden" else "postwarden/" + parts[0]
        # Postfix marks problems the same way: "warning: ...", "error: ...".
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        text = f"{tag}[{record.process}]: {getattr(record, 'context', '')}{level}"
        text += record.getMessage()
        if record.exc_info:
            text += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return text


def setup(
    level: str = "info",
    fmt: str = "text",
    stream: object = None,
    *,
    target: str = "stderr",
    syslog_address: str = "/dev/log",
) -> None:
    """Configure the root logger once per process.

    target "stderr" (journald reads a unit's stderr) or "syslog": the local
    syslog socket, facility mail, so lines land in mail.log next to
    Postfix's own. `fmt` json applies to either.
    """
    handler: logging.Handler
    if target == "syslog":
        try:
            # SysLogHandler ignores a missing socket (and then drops every
            # line); probe it first so the start fails instead.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
                probe.connect(syslog_address)
            handler = logging.handlers.SysLogHandler(
                address=syslog_address, facility=logging.handlers.SysLogHandler.LOG_MAIL
            )
        except OSError as exc:
            raise StartupError(
                f"log.target: syslog: cannot reach {syslog_address} ({exc.strerror});"
                " start rsyslog or systemd-journald, or set log.target: stderr"
            ) from None
    else:
        handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.addFilter(ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif target == "syslog":
        handler.setFormatter(SyslogFormatter())
    else:
        formatter = logging.Formatter(_DEFAULT_FORMAT)
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def kv(fields: Mapping[str, object]) -> str:
    """`key=value` pairs; values with spaces or quotes are JSON-quoted."""
    parts = []
    for key, value in fields.items():
        if value is None or value == "" or (isinstance(value, list | tuple) and not value):
            continue
        text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        if not text or any(c in text for c in ' "=\t\n') or not text.isprintable():
            text = json.dumps(text, ensure_ascii=False)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def decision(
    logger: logging.Logger, fields: Mapping[str, object], level: int = logging.INFO
) -> None:
    """The one line per decision: `decision key=value ...`; JSON gets fields too."""
    if logger.isEnabledFor(level):  # formatting costs more than the decision itself
        logger.log(level, "decision %s", kv(fields), extra={"fields": dict(fields)})


@contextmanager
def context(
    *, queue: str | None = None, msgid: str | None = None, connection: str | None = None
) -> Iterator[None]:
    tokens = []
    if queue is not None:
        tokens.append((queue_id, queue_id.set(queue)))
    if msgid is not None:
        tokens.append((message_id, message_id.set(msgid)))
    if connection is not None:
        tokens.append((conn, conn.set(connection)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class RateLimitedLog:
    """Log a recurring failure once per interval and count the rest."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._messages: dict[str, str] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        skipped = self._suppressed.pop(key, 0)
        self._last[key] = now
        if skipped:
            self.logger.warning("%s (%d more since last report)", msg % args, skipped)
        else:
            self.logger.warning(msg, *args)
        self._messages[key] = msg % args if args else msg

    def flush(self) -> None:
        """Report what was suppressed since the last line (e.g. at shutdown),
        so a count is never lost just because the flood stopped."""
        for key, skipped in sorted(self._suppressed.items()):
            self.logger.warning(
                "%s (%d more since last report)", self._messages.get(key, key), skipped
            )
        self._suppressed.clear()
