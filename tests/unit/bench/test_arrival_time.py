"""The corpus replays judge each message's Date against when it arrived."""

from __future__ import annotations

import calendar

from bench.spam import CORPUS_TIME, arrival_time


def utc(*when: int) -> float:
    return float(calendar.timegm((*when, 0, 0, 0)))


HEAD = b"From: a@example.org\nDate: Mon, 9 Dec 2002 10:00:00 +0000\nSubject: hi\n"


def test_arrival_is_the_first_received_stamp_with_its_zone() -> None:
    raw = (
        b"From a@example.org  Thu Sep 26 16:43:26 2002\n"
        b"Received: from mx (mx [10.0.0.1]) by box; Tue, 10 Dec 2002 12:00:00 +0200\n"
        b"Received: from far (far [10.0.0.2]) by mx; Mon, 2 Sep 2002 09:00:00 +0000\n"
        + HEAD
        + b"\nbody\n"
    )
    assert arrival_time(raw) == utc(2002, 12, 10, 10, 0, 0)


def test_arrival_falls_back_to_delivery_date_read_as_utc() -> None:
    raw = b"Delivery-Date: Thu Sep  5 23:42:38 2002\n" + HEAD + b"\nbody\n"
    assert arrival_time(raw) == utc(2002, 9, 5, 23, 42, 38)


def test_arrival_falls_back_to_the_mbox_from_line() -> None:
    raw = b"From a@example.org  Fri Aug 23 11:03:13 2002\n" + HEAD + b"\nbody\n"
    assert arrival_time(raw) == utc(2002, 8, 23, 11, 3, 13)


def test_arrival_without_any_stamp_is_the_corpus_time() -> None:
    raw = b"Received: from x by y; not a date\n" + HEAD + b"\nbody\n"
    assert arrival_time(raw) == CORPUS_TIME
