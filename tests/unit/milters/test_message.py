"""Splitting raw messages into the model engines see."""

from __future__ import annotations

from milters.message import Action, Message


def test_headers_keep_folding_and_body_keeps_bytes() -> None:
    raw = b"Subject: a\r\n  folded\r\nX-8bit: caf\xe9\r\n\r\nbody\r\n"
    msg = Message.from_bytes(raw)
    assert [h.name for h in msg.headers] == ["Subject", "X-8bit"]
    assert msg.get("subject") == "a\r\n  folded"
    assert msg.body == b"body\r\n"
    # 8-bit bytes survive the round trip instead of raising.
    assert msg.header_bytes().endswith(b"X-8bit: caf\xe9\r\n")


def test_mbox_from_line_is_dropped_and_lf_accepted() -> None:
    msg = Message.from_bytes(b"From alice@example.org Mon Jan  1 00:00:00 2024\nTo: b\n\nhi\n")
    assert msg.get("To") == "b"
    assert msg.body == b"hi\n"


def test_a_line_that_is_not_a_header_starts_the_body() -> None:
    msg = Message.from_bytes(b"To: b\nthis is not a header\nmore\n")
    assert msg.get_all("To") == ["b"]
    assert msg.body == b"this is not a header\nmore\n"


def test_truncation_is_recorded() -> None:
    msg = Message.from_bytes(b"To: b\n\n" + b"x" * 100, max_body_size=10)
    assert msg.body == b"x" * 10
    assert msg.body_size == 100
    assert msg.truncated


def test_many_and_huge_headers_parse() -> None:
    raw = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)) + b"X-Big: " + b"a" * 1_000_000
    msg = Message.from_bytes(raw + b"\r\n\r\nbody")
    assert len(msg.headers) == 10_001
    assert len(msg.get("X-Big")) == 1_000_000
    assert msg.parsed["X-H5"] == "v"


def test_action_severity_orders_outcomes() -> None:
    assert Action.REJECT.severity > Action.QUARANTINE.severity > Action.ADD_HEADER.severity
    assert Action.DISCARD.is_final and not Action.QUARANTINE.is_final
