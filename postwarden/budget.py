"""A time budget per message or request (ARCHITECTURE.md principle 7).

Every decision must end before Postfix's own timeout would decide for us
(`milter_content_timeout`, `smtpd_policy_service_timeout`): with
`milter_default_action = accept` that would let a crafted message through.
A `Budget` is a monotonic deadline. Slow paths ask `remaining()` for their
own timeouts (a DNS query, a clamd scan) and call `check()` between steps, so
work abandoned by the pipeline stops soon after the deadline instead of
burning CPU in the background.
"""

from __future__ import annotations

import time


class BudgetExceeded(Exception):
    """The per-message (or per-request) time budget ran out.

    `where` names the step that noticed (a rule, a DNS zone), so the log line
    says what was slow.
    """

    def __init__(self, where: str = "") -> None:
        super().__init__(f"time budget exceeded{f' in {where}' if where else ''}")
        self.where = where


class Budget:
    """A deadline on the monotonic clock; cheap to query from any thread."""

    __slots__ = ("deadline", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    @classmethod
    def unlimited(cls) -> Budget:
        return cls(float("inf"))

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.deadline - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def check(self, where: str = "") -> None:
        """Raise BudgetExceeded when the deadline has passed."""
        if time.monotonic() >= self.deadline:
            raise BudgetExceeded(where)

    def cap(self, timeout: float) -> float:
        """`timeout`, shortened to what is left of the budget."""
        return min(timeout, self.remaining())
