"""The sans-IO policy protocol parser (Postfix SMTPD_POLICY_README)."""

from __future__ import annotations

import ipaddress

import pytest

from policyd.decision import Decision, Verb
from policyd.protocol import (
    BadEncoding,
    LineTooLong,
    MalformedLine,
    PolicyRequest,
    ProtocolState,
    RequestParser,
    TooManyAttributes,
    encode_request,
    format_action,
)
from postwarden.replies import Reply

REQUEST = encode_request(
    {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT",
        "client_address": "2001:db8::25",
        "helo_name": "mx.example.org",
        "sender": "Alice@Example.ORG",
        "recipient": "bob@example.net",
        "recipient_count": "0",
        "instance": "7d0.6553e1e8.4bd64.0",
        "size": "12345",
        "sasl_username": "",
        "x_future_attribute": "kept",
    }
)


def parse_all(data: bytes, chunk: int, **limits: int) -> list[object]:
    parser = RequestParser(**limits)
    out: list[object] = []
    for i in range(0, len(data), chunk):
        out.extend(parser.feed(data[i : i + chunk]))
    return out


@pytest.mark.parametrize("chunk", [1, 16, 128, 4096])
def test_requests_parse_the_same_whatever_the_chunking(chunk: int) -> None:
    out = parse_all(REQUEST * 3, chunk)
    assert len(out) == 3
    req = out[0]
    assert isinstance(req, PolicyRequest)
    assert req.protocol_state is ProtocolState.RCPT
    assert req.client_address == ipaddress.ip_address("2001:db8::25")
    assert req.sender_domain == "example.org"
    assert req.size == 12345
    assert req.instance == "7d0.6553e1e8.4bd64.0"
    assert req.extra == {"x_future_attribute": "kept"}
    assert out[1] == out[0] == out[2]


def test_unknown_client_address_is_none_not_an_error() -> None:
    (req,) = parse_all(
        encode_request({"client_address": "unknown", "protocol_state": "RCPT"}), 4096
    )
    assert isinstance(req, PolicyRequest)
    assert req.client_address is None
    assert req.client_address_raw == "unknown"


def test_oversized_line_is_one_error_and_the_next_request_parses() -> None:
    data = b"recipient=" + b"x" * (1024 * 1024) + b"\n\n" + REQUEST
    out = parse_all(data, 4096, max_line=4096)
    assert isinstance(out[0], LineTooLong)
    assert isinstance(out[1], PolicyRequest)


def test_too_many_attributes_is_one_error() -> None:
    data = b"".join(b"a%d=1\n" % i for i in range(10_000)) + b"\n" + REQUEST
    out = parse_all(data, 4096, max_attributes=100)
    assert [type(o) for o in out] == [TooManyAttributes, PolicyRequest]


def test_binary_garbage_is_reported_and_parsing_resyncs() -> None:
    out = parse_all(b"\xff\xfe\x00=\x01\n\n" + REQUEST, 7)
    assert isinstance(out[0], BadEncoding)
    assert isinstance(out[1], PolicyRequest)


def test_line_without_equals_is_malformed() -> None:
    out = parse_all(b"hello\n\n", 4096)
    assert isinstance(out[0], MalformedLine)


def test_parser_reports_a_half_read_request_as_pending() -> None:
    parser = RequestParser()
    assert list(parser.feed(b"request=smtpd_access_policy\nsender=a")) == []
    assert parser.pending


def test_action_lines() -> None:
    assert Decision(Verb.DEFER, reply=Reply(450, "4.7.1", "wait")).action_line() == "450 4.7.1 wait"
    assert (
        Decision(Verb.DEFER_IF_PERMIT, reply=Reply(450, "4.7.1", "grey")).action_line()
        == "DEFER_IF_PERMIT 4.7.1 grey"
    )
    assert Decision(Verb.PREPEND, header="X-A: b").action_line() == "PREPEND X-A: b"
    assert Decision(Verb.DUNNO).action_line() == "DUNNO"


def test_format_action_cannot_break_framing() -> None:
    assert format_action("REJECT a\nb\r\n") == b"action=REJECT a b  \n\n"


def test_crlf_requests_parse_like_lf_ones() -> None:
    # CRLF goes through the line-by-line path, LF through the whole-request one.
    (lf,) = parse_all(REQUEST, 4096)
    (crlf,) = parse_all(REQUEST.replace(b"\n", b"\r\n"), 4096)
    assert crlf == lf


def test_a_bad_line_anywhere_in_a_request_is_named() -> None:
    bad = REQUEST.replace(b"helo_name=", b"helo name=")
    (error,) = parse_all(bad, 4096)
    assert isinstance(error, MalformedLine)
    assert str(error) == "attribute line 4 is not name=value"
