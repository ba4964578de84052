"""Slow header rules through real Postfix (issue 10, finding 2).

A crafted message makes every one of its 150 headers hit a rule only the
fallback regex engine can run (a back-reference) and backtrack until
`fallback_timeout` (10s each), before a header that a REJECT rule matches.
Postfix is set up as the README tells admins (`milter_default_action =
accept`) with a content timeout far shorter than the crafted message's total
matching time, so a milter without a per-message budget would let Postfix's
timeout accept it. The budget (5s) gives it the explicit `on_timeout` outcome
instead: its first slow match already ends with the budget, not 10s later.
A normal message sent while the slow one is being matched gets a fallback
worker of its own and its normal outcome; behind one shared worker it would
wait out the slow match and run out of its own budget.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.postfix import PostfixInstance, SmtpResult, make_message
from tests.harness.services import ServiceConfig, ServiceProcess, postwarden_argv
from tests.harness.sink import SmtpSink

PostfixFactory = Callable[..., PostfixInstance]
ConfigFactory = Callable[..., ServiceConfig]
ServiceFactory = Callable[..., ServiceProcess]

TABLE = [
    # (a)\1 needs the fallback; (a+)+b backtracks on a run of a's with no b.
    r"/^X-Pad: (a)\1(a+)+b/        REJECT 5.7.1 never reached",
    "/^Subject: reject me/        REJECT 5.7.1 Rejected by the header rule",
]
SLOW_HEADERS = 150
BUDGET = "5s"
FALLBACK_TIMEOUT = "10s"  # per match: twice the whole message's budget
# Far shorter than 150 x fallback_timeout, longer than the budget.
CONTENT_TIMEOUT = "20s"


def fallback_children(pid: int) -> list[int]:
    """Pids of the milter's fallback regex worker processes."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"header_regex_worker" in cmdline:
                found.append(int(child))
    return found


def wait_for_fallback_child(milter: ServiceProcess) -> None:
    deadline = time.monotonic() + 60
    while not fallback_children(milter.pid):
        assert milter.alive() and time.monotonic() < deadline, milter.log_text()[-2000:]
        time.sleep(0.02)


def crafted_message() -> bytes:
    lines = [f"X-Pad: {'a' * 40}!" for _ in range(SLOW_HEADERS)]
    lines += [
        "From: <mallory@example.org>",
        "To: <bob@example.net>",
        "Subject: reject me",
        "Message-ID: <crafted@example.org>",
    ]
    return ("\r\n".join(lines) + "\r\n\r\nbody\r\n").encode()


@pytest.fixture
def headers_milter(
    tmp_path: Path, postwarden_config: ConfigFactory, postwarden_service: ServiceFactory
) -> tuple[ServiceConfig, ServiceProcess]:
    table = tmp_path / "header_checks"
    table.write_text("\n".join(TABLE) + "\n")
    config = postwarden_config(
        milters=("headers",),
        overrides={
            "milters": {
                "headers": {
                    "header_checks": [str(table)],
                    "budget": BUDGET,
                    "fallback_timeout": FALLBACK_TIMEOUT,
                    "on_timeout": "tempfail",
                }
            }
        },
    )
    return config, postwarden_service(config, "milter", "headers")


def test_slow_rules_cannot_outlast_the_budget_and_others_are_still_served(
    headers_milter: tuple[ServiceConfig, ServiceProcess],
    postfix_factory: PostfixFactory,
    sink: SmtpSink,
) -> None:
    config, milter = headers_milter
    postfix = postfix_factory(
        smtpd_milters=[config.socket("headers")],
        milter_default_action="accept",
        main_cf={"milter_content_timeout": CONTENT_TIMEOUT},
    )
    crafted: list[SmtpResult] = []
    sender = threading.Thread(
        target=lambda: crafted.append(
            postfix.send("mallory@example.org", "bob@example.net", crafted_message())
        )
    )
    sender.start()
    try:
        # The crafted message is being matched once a fallback worker runs.
        wait_for_fallback_child(milter)
        # Meanwhile a normal message, whose headers also go through the
        # fallback rule (and a reject rule: it must still fire).
        pads = {f"X-Pad-{n}": "b" for n in range(30)}
        normal = postfix.send(
            "alice@example.org",
            "bob@example.net",
            make_message(subject="hello", extra_headers={"X-Pad": "aab", **pads}),
        )
        rejected = postfix.send(
            "alice@example.org", "bob@example.net", make_message(subject="reject me")
        )
    finally:
        sender.join(120)
    assert normal.accepted, normal.replies
    assert rejected.code("data") == 550, rejected.replies
    [result] = crafted
    # Not delivered: the budget's explicit outcome, not Postfix's timeout.
    assert result.code("data") == 451, result.replies
    assert "not checked in time" in result.text("data")
    [received] = sink.wait_for(1)
    assert received.header("Subject") == "hello"
    line = milter.wait_for_log("time budget of 5.0s exceeded")
    assert "fallback regex" in line
    assert "milter_content_timeout" not in postfix.log_text()
    assert sink.count == 1


def test_config_check_refuses_a_budget_postfix_would_outwait(tmp_path: Path) -> None:
    config = tmp_path / "postwarden.yaml"
    config.write_text("milters:\n  headers:\n    enabled: true\n    budget: 290s\n")
    done = subprocess.run(
        [*postwarden_argv(), "config", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert f"{config}:4" in out
    assert "milters.headers.budget" in out
