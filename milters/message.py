"""The plain data every milter engine works on, and the verdict it returns.

Engines never see pymilter: the adapter (or `postwarden scan`) builds an
`Envelope` and a `Message`, calls the engine, and applies the `Verdict`. So the
very same function decides a message under Postfix and on the command line.
"""

from __future__ import annotations

import email.policy
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from enum import StrEnum
from functools import cached_property

from postwarden.replies import Reply

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Action(StrEnum):
    """What happens to the message; ordered from mildest to strongest.

    The names are the ones `postwarden scan --json` prints (ARCHITECTURE.md).
    """

    ACCEPT = "accept"
    ADD_HEADER = "add_header"
    REWRITE_SUBJECT = "rewrite_subject"
    GREYLIST = "greylist"
    TEMPFAIL = "tempfail"
    QUARANTINE = "quarantine"
    REJECT = "reject"
    DISCARD = "discard"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    @property
    def is_final(self) -> bool:
        """True when later milters' opinions no longer matter for delivery."""
        return self in (Action.TEMPFAIL, Action.REJECT, Action.DISCARD, Action.GREYLIST)


_SEVERITY = {a: i for i, a in enumerate(Action)}


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the SMTP session told us before the message content.

    `macros` keeps every Postfix macro the adapter saw (`i`, `j`,
    `{auth_authen}`, `{daemon_name}`, `{client_addr}`, ...), keyed without
    braces, so engines can read ones the adapter does not model.
    """

    client_address: IPAddress | None = None
    client_name: str = "unknown"
    helo: str = ""
    mail_from: str = ""
    recipients: tuple[str, ...] = ()
    queue_id: str = ""
    auth_user: str = ""
    daemon_name: str = ""
    macros: Mapping[str, str] = field(default_factory=dict)

    @property
    def authenticated(self) -> bool:
        return bool(self.auth_user)

    @property
    def sender_domain(self) -> str:
        return self.mail_from.rpartition("@")[2].lower() if "@" in self.mail_from else ""


@dataclass(frozen=True, slots=True)
class Header:
    """One header as received: name, raw value (folding kept, no trailing CRLF)."""

    name: str
    value: str


@dataclass(frozen=True)
class Message:
    """A received message: the exact header list, the body bytes we kept, and
    a lazily parsed `EmailMessage` for engines that want MIME structure.

    `body` holds at most the adapter's `max_body_size` bytes; `body_size` is the
    real size and `truncated` says whether bytes were dropped, so engines can
    say "not scanned past N bytes" instead of guessing.
    """

    headers: tuple[Header, ...]
    body: bytes
    body_size: int = -1
    truncated: bool = False

    def __post_init__(self) -> None:
        if self.body_size < 0:
            object.__setattr__(self, "body_size", len(self.body))

    @classmethod
    def from_bytes(cls, raw: bytes, max_body_size: int | None = None) -> Message:
        """Split a whole RFC 5322 message (CRLF or LF) into headers and body.

        A leading mbox `From ` line is dropped; a header block with no blank
        line is all headers. Lines that are not headers and not continuations
        end the header block, as Postfix's cleanup does.
        """
        if raw.startswith(b"From "):
            raw = raw.split(b"\n", 1)[1] if b"\n" in raw else b""
        headers: list[Header] = []
        pos = 0
        cur_name: str | None = None
        cur_value: list[str] = []
        n = len(raw)
        while pos < n:
            end = raw.find(b"\n", pos)
            if end < 0:
                end = n
            line = raw[pos:end]
            next_pos = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if line == b"":
                pos = next_pos
                break
            text = line.decode("utf-8", "surrogateescape")
            if text[:1] in (" ", "\t") and cur_name is not None:
                cur_value.append(text)
            else:
                name, sep, value = text.partition(":")
                if not sep or not name or any(c in name for c in " \t"):
                    break  # not a header: body starts here
                if cur_name is not None:
                    headers.append(Header(cur_name, "\r\n".join(cur_value)))
                cur_name, cur_value = name, [value.lstrip(" ") if value else ""]
            pos = next_pos
        else:
            pos = n
        if cur_name is not None:
            headers.append(Header(cur_name, "\r\n".join(cur_value)))
        body = raw[pos:]
        size = len(body)
        truncated = max_body_size is not None and size > max_body_size
        if truncated:
            body = body[: max_body_size or 0]
        return cls(tuple(headers), body, size, truncated)

    def header_bytes(self) -> bytes:
        out = bytearray()
        for h in self.headers:
            out += f"{h.name}: {h.value}\r\n".encode("utf-8", "surrogateescape")
        return bytes(out)

    def as_bytes(self) -> bytes:
        """Headers (CRLF) + blank line + the body bytes we kept."""
        return self.header_bytes() + b"\r\n" + self.body

    def get_all(self, name: str) -> list[str]:
        low = name.lower()
        return [h.value for h in self.headers if h.name.lower() == low]

    def get(self, name: str, default: str = "") -> str:
        values = self.get_all(name)
        return values[0] if values else default

    @property
    def message_id(self) -> str:
        return self.get("Message-ID").strip()

    @cached_property
    def parsed(self) -> EmailMessage:
        """The stdlib's MIME tree of what we kept (headers + kept body)."""
        parsed = BytesParser(policy=email.policy.default).parsebytes(self.as_bytes())
        assert isinstance(parsed, EmailMessage)
        return parsed


class HeaderOp(StrEnum):
    ADD = "add"  # append at the end of the header block
    INSERT = "insert"  # insert at `index` (0 = top, like Postfix PREPEND)
    CHANGE = "change"  # replace the `index`-th (1-based) occurrence of `name`
    DELETE = "delete"  # remove the `index`-th (1-based) occurrence of `name`


@dataclass(frozen=True, slots=True)
class HeaderEdit:
    op: HeaderOp
    name: str
    value: str = ""
    index: int = 1


@dataclass(frozen=True, slots=True)
class Symbol:
    """One named signal with its score, as `X-Spamd-Result`-style output lists it."""

    name: str
    score: float = 0.0
    description: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """What one engine decided about one message.

    `reply` is used for reject/tempfail (engines take it from
    `postwarden.replies`); `header_edits`, `new_body`, recipient changes are
    applied whatever the action (unless the action is final). `details` carries
    engine-specific facts for `scan --json` (e.g. the rule's file:line).
    """

    action: Action = Action.ACCEPT
    reason: str = ""
    reply: Reply | None = None
    header_edits: tuple[HeaderEdit, ...] = ()
    new_body: bytes | None = None
    add_recipients: tuple[str, ...] = ()
    remove_recipients: tuple[str, ...] = ()
    symbols: tuple[Symbol, ...] = ()
    score: float | None = None
    required_score: float | None = None
    details: Mapping[str, object] = field(default_factory=dict)

    @property
    def is_noop(self) -> bool:
        return (
            self.action is Action.ACCEPT
            and not self.header_edits
            and self.new_body is None
            and not self.add_recipients
            and not self.remove_recipients
        )


ACCEPT = Verdict()
