"""The fallback regex pool: one child per message, each match within the message's budget."""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator

import pytest

from milters.header_regex_worker import FallbackWorker
from postwarden.budget import Budget, BudgetExceeded

# A back-reference RE2 cannot run; (a+)+b on a run of a's without the b
# backtracks for far longer than any test waits.
SLOW = rb"(a)\1(a+)+b"
HOSTILE = b"a" * 40 + b"!"


@pytest.fixture
def worker() -> Iterator[FallbackWorker]:
    w = FallbackWorker(budget=30.0, processes=2)
    yield w
    w.close()


def test_search_outside_a_message_finds_spans(worker: FallbackWorker) -> None:
    assert worker.search(rb"(b+)\1", 0, b"abbbbc") == (1, 5, 1, 3)
    assert worker.search(rb"(x)\1", 0, b"abc") is None


def test_a_match_ends_with_the_message_budget_not_fallback_timeout(
    worker: FallbackWorker,
) -> None:
    # fallback_timeout is 30s; the message has (almost) nothing left, so the
    # match is stopped by the message's budget and says so.
    with worker.session(Budget(0.2)), pytest.raises(BudgetExceeded) as caught:
        worker.search(SLOW, 0, HOSTILE)
    assert "fallback regex" in caught.value.where
    assert worker.timeouts == 0  # not counted as a fallback_timeout miss


@pytest.mark.expect_log("WARNING", "ran out of its")
def test_fallback_timeout_below_the_budget_counts_as_no_match() -> None:
    w = FallbackWorker(budget=0.05)
    try:
        with w.session(Budget(30.0)):
            assert w.search(SLOW, 0, HOSTILE) is None
            # The killed child is replaced for the next search of the message.
            assert w.search(rb"(a)\1", 0, b"xaay") == (1, 3, 1, 2)
        assert w.timeouts == 1
    finally:
        w.close()


def test_each_message_holds_its_own_child(worker: FallbackWorker) -> None:
    holding = threading.Event()
    release = threading.Event()
    seen: list[tuple[int, ...] | None] = []

    def first_message() -> None:
        with worker.session(Budget(30.0)):
            seen.append(worker.search(rb"(a)\1", 0, b"aa"))
            holding.set()
            release.wait(30)

    t = threading.Thread(target=first_message)
    t.start()
    try:
        assert holding.wait(30)
        # While the first message still holds its child, a second one gets
        # another child instead of waiting behind it.
        with worker.session(Budget(30.0)):
            assert worker.search(rb"(b)\1", 0, b"xbb") == (1, 3, 1, 2)
            assert worker.children == 2
    finally:
        release.set()
        t.join(30)
    assert seen == [(0, 2, 0, 1)]
    # Both children went back to the pool and are reused.
    with worker.session(Budget(30.0)):
        assert worker.search(rb"(c)\1", 0, b"cc") is not None
    assert worker.children == 2


def test_a_full_pool_makes_a_message_wait_only_within_its_budget() -> None:
    w = FallbackWorker(budget=30.0, processes=1)
    holding = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with w.session(Budget(30.0)):
            w.search(rb"(a)\1", 0, b"aa")
            holding.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert holding.wait(30)
        with w.session(Budget(0.0)), pytest.raises(BudgetExceeded, match="free worker"):
            w.search(rb"(a)\1", 0, b"aa")
    finally:
        release.set()
        t.join(30)
        w.close()


def test_the_worker_matches_like_python_re(worker: FallbackWorker) -> None:
    for pattern, subject in [(rb"(?<=a)b", b"ab"), (rb"(\w+) \1", b"hey hey"), (rb"x(?!y)", b"xy")]:
        m = re.search(pattern, subject)
        expected = (
            None if m is None else tuple(x for g in range(m.re.groups + 1) for x in m.span(g))
        )
        assert worker.search(pattern, 0, subject) == expected


@pytest.mark.expect_log("WARNING", "fallback regex worker failed")
def test_a_worker_that_cannot_start_counts_as_no_match(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    w = FallbackWorker(budget=5.0)
    with w.session(Budget(30.0)):
        assert w.search(rb"(a)\1", 0, b"aa") is None
    assert w.children == 0
