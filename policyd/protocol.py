"""The Postfix SMTPD policy delegation protocol, without any I/O.

Postfix SMTPD_POLICY_README, "Protocol description": a request is a series
of `name=value` lines ended by an empty line; the reply is `action=...`
followed by an empty line. One connection carries many requests, and Postfix
may pipeline them. `RequestParser.feed()` takes bytes in whatever chunks the
socket gives and yields parsed requests or `ParseError`s in order, so the
server answers each in turn; `format_action()` writes a reply.

Limits protect the daemon: a line longer than `max_line` or a request with
more than `max_attributes` attributes is skipped up to its terminating empty
line and reported as one error, so the connection stays usable.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from postwarden.errors import PostwardenError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_MAX_LINE = 4096
DEFAULT_MAX_ATTRIBUTES = 100
DEFAULT_MAX_REQUEST = 64 * 1024


class ProtocolState(StrEnum):
    """`protocol_state`: the SMTP command the request is about."""

    CONNECT = "CONNECT"
    EHLO = "EHLO"
    HELO = "HELO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    END_OF_MESSAGE = "END-OF-MESSAGE"
    VRFY = "VRFY"
    ETRN = "ETRN"
    UNKNOWN = "UNKNOWN"


class ParseError(PostwardenError):
    """A request Postfix should never send; the server logs it and answers DUNNO."""


class LineTooLong(ParseError):
    pass


class TooManyAttributes(ParseError):
    pass


class RequestTooLarge(ParseError):
    pass


class MalformedLine(ParseError):
    pass


class BadEncoding(ParseError):
    pass


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """One policy query with typed fields; unknown attributes land in `extra`.

    Fields Postfix did not send are empty strings / None. `client_address` is
    None when absent or not an IP (Postfix sends "unknown" in some cases),
    and `client_address_raw` keeps the text for logging.
    """

    request: str = ""
    protocol_state: ProtocolState = ProtocolState.UNKNOWN
    protocol_name: str = ""
    helo_name: str = ""
    queue_id: str = ""
    sender: str = ""
    recipient: str = ""
    recipient_count: int = 0
    client_address: IPAddress | None = None
    client_address_raw: str = ""
    client_name: str = ""
    reverse_client_name: str = ""
    instance: str = ""
    sasl_method: str = ""
    sasl_username: str = ""
    sasl_sender: str = ""
    size: int = 0
    ccert_subject: str = ""
    ccert_issuer: str = ""
    ccert_fingerprint: str = ""
    encryption_protocol: str = ""
    encryption_cipher: str = ""
    encryption_keysize: int = 0
    etrn_domain: str = ""
    stress: str = ""
    server_address: str = ""
    server_port: str = ""
    policy_context: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def authenticated(self) -> bool:
        return bool(self.sasl_username)

    @property
    def sender_domain(self) -> str:
        return _domain(self.sender)

    @property
    def recipient_domain(self) -> str:
        return _domain(self.recipient)

    @classmethod
    def from_attributes(cls, attrs: Mapping[str, str]) -> PolicyRequest:
        """Build a request from decoded attributes; never raises on values."""
        known: dict[str, object] = {}
        extra: dict[str, str] = {}
        for name, value in attrs.items():
            if name in _STR_FIELDS:
                known[name] = value
            elif name in _INT_FIELDS:
                known[name] = _to_int(value)
            elif name == "protocol_state":
                known[name] = _state(value)
            elif name == "client_address":
                known["client_address_raw"] = value
                known["client_address"] = _to_ip(value)
            else:
                extra[name] = value
        return cls(extra=extra, **known)  # type: ignore[arg-type]


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower() if "@" in address else ""


def _to_int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


def unmapped(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, RFC 4291 section
    2.5.5.2, what a dual-stack listener reports for an IPv4 client) as the
    IPv4 address it is, so one client gets one key in every check."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _to_ip(value: str) -> IPAddress | None:
    text = value.strip()
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        return unmapped(ipaddress.ip_address(text))
    except ValueError:
        return None


def _state(value: str) -> ProtocolState:
    try:
        return ProtocolState(value.upper())
    except ValueError:
        return ProtocolState.UNKNOWN


_STR_FIELDS = frozenset(
    {
        "request",
        "protocol_name",
        "helo_name",
        "queue_id",
        "sender",
        "recipient",
        "client_name",
        "reverse_client_name",
        "instance",
        "sasl_method",
        "sasl_username",
        "sasl_sender",
        "ccert_subject",
        "ccert_issuer",
        "ccert_fingerprint",
        "encryption_protocol",
        "encryption_cipher",
        "etrn_domain",
        "stress",
        "server_address",
        "server_port",
        "policy_context",
    }
)
_INT_FIELDS = frozenset({"recipient_count", "size", "encryption_keysize"})


class RequestParser:
    """Incremental parser: `feed(bytes)` yields each complete request or error.

    Lines end in LF (Postfix sends LF; a CR before it is tolerated). Values are
    UTF-8 (Postfix passes SMTPUTF8 addresses through); undecodable bytes are
    an error for that request only.
    """

    def __init__(
        self,
        max_line: int = DEFAULT_MAX_LINE,
        max_attributes: int = DEFAULT_MAX_ATTRIBUTES,
        max_request: int = DEFAULT_MAX_REQUEST,
    ) -> None:
        self.max_line = max_line
        self.max_attributes = max_attributes
        self.max_request = max_request
        self._buf = bytearray()
        self._attrs: dict[str, str] = {}
        self._count = 0
        self._size = 0
        self._error: ParseError | None = None
        self._discarding_line = False

    @property
    def pending(self) -> bool:
        """True when part of a request has been read (for half-closed peers)."""
        return bool(self._buf) or self._count > 0 or self._error is not None

    def feed(self, data: bytes) -> Iterator[PolicyRequest | ParseError]:
        self._buf += data
        while True:
            if self._at_request_start():
                fast = self._whole_request()
                if fast is not None:
                    yield fast
                    continue
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.max_line:
                    # Drop the oversize line's bytes now so memory stays bounded.
                    self._fail(LineTooLong(f"line longer than {self.max_line} bytes"))
                    self._size += len(self._buf)
                    self._buf.clear()
                    self._discarding_line = True
                return
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if self._discarding_line:
                self._discarding_line = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                yield self._finish()
                continue
            self._size += len(line) + 1
            if len(line) > self.max_line:
                self._fail(LineTooLong(f"line longer than {self.max_line} bytes"))
                continue
            if self._error is not None:
                continue
            self._count += 1
            if self._count > self.max_attributes:
                self._fail(TooManyAttributes(f"more than {self.max_attributes} attributes"))
                continue
            if self._size > self.max_request:
                self._fail(RequestTooLarge(f"request larger than {self.max_request} bytes"))
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(BadEncoding(f"attribute line {self._count} is not UTF-8"))
                continue
            name, sep, value = text.partition("=")
            if not sep or not name or not _valid_name(name):
                self._fail(MalformedLine(f"attribute line {self._count} is not name=value"))
                continue
            self._attrs[name] = value

    def _at_request_start(self) -> bool:
        return not self._count and self._error is None and not self._discarding_line

    def _whole_request(self) -> PolicyRequest | None:
        """Fast path for the common case: a complete, well-formed request
        (LF line ends, within every limit) parsed in one pass. Anything
        unusual returns None and goes through the line-by-line path, which
        names the exact problem."""
        end = self._buf.find(b"\n\n")
        if end <= 0 or end > self.max_request:
            return None
        block = bytes(self._buf[:end])
        if b"\r" in block:
            return None
        lines = block.split(b"\n")
        if len(lines) > self.max_attributes or max(map(len, lines)) > self.max_line:
            return None
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            return None
        attrs: dict[str, str] = {}
        for line in text.split("\n"):
            name, sep, value = line.partition("=")
            if not sep or not _NAME.match(name):
                return None
            attrs[name] = value
        del self._buf[: end + 2]
        return PolicyRequest.from_attributes(attrs)

    def _fail(self, error: ParseError) -> None:
        if self._error is None:
            self._error = error

    def _finish(self) -> PolicyRequest | ParseError:
        error, attrs = self._error, self._attrs
        self._attrs, self._count, self._size, self._error = {}, 0, 0, None
        if error is not None:
            return error
        if not attrs:
            return MalformedLine("empty request (a blank line with no attributes)")
        return PolicyRequest.from_attributes(attrs)


_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")


def _valid_name(name: str) -> bool:
    return _NAME.match(name) is not None


def format_action(action: str) -> bytes:
    """`action=...` plus the empty line; newlines in text cannot break framing."""
    clean = action.replace("\r", " ").replace("\n", " ")
    return f"action={clean}\n\n".encode("utf-8", "replace")


def encode_request(attrs: Mapping[str, str]) -> bytes:
    """The request bytes Postfix would send; for tests, benchmarks and tools."""
    return b"".join(f"{k}={v}\n".encode() for k, v in attrs.items()) + b"\n"
