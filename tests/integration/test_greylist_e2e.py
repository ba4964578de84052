"""Greylisting through a real Postfix and `postwarden policyd`.

The delay is shortened to one second in the config; the retry is polled
(bounded number of attempts), never timed: the test asserts outcomes only.
XCLIENT ADDR sets the client address Postfix hands to the policy service
(XCLIENT_README), so the client is a stranger, not the loopback peer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.postfix import PostfixInstance, SmtpResult, Xclient
from tests.harness.services import ServiceConfig, ServiceProcess
from tests.harness.sink import SmtpSink

pytestmark = pytest.mark.integration

GREYLIST = {"policyd": {"greylist": {"enabled": True, "delay": "1s"}}}
STRANGER = Xclient(addr="198.51.100.30", helo="mail.stranger.test")
# Poll for the delay to pass: at most this many retries, this far apart.
ATTEMPTS = 60
PAUSE = 0.25


def start(
    postwarden_config: Callable[..., ServiceConfig],
    postwarden_service: Callable[..., ServiceProcess],
    postfix_factory: Callable[..., PostfixInstance],
    **postfix_options: object,
) -> tuple[PostfixInstance, str]:
    config = postwarden_config(checks=("greylist",), overrides=GREYLIST)
    postwarden_service(config, "policyd")
    policy = config.socket("policyd")
    postfix_options.setdefault("policy_services", [policy])
    return postfix_factory(**postfix_options), policy


def retry_until_accepted(postfix: PostfixInstance, rcpt: str) -> tuple[SmtpResult, int]:
    """Retry like an MTA would, until accepted or out of attempts."""
    result = postfix.send("news@stranger.test", [rcpt], xclient=STRANGER)
    for attempt in range(1, ATTEMPTS + 1):
        if result.accepted or result.rcpt_codes().get(rcpt) != 450:
            return result, attempt
        time.sleep(PAUSE)  # a polling interval, not a wait for a known time
        result = postfix.send("news@stranger.test", [rcpt], xclient=STRANGER)
    return result, ATTEMPTS


def test_first_attempt_gets_450_and_a_retry_after_the_delay_is_delivered(
    postwarden_config: Callable[..., ServiceConfig],
    postwarden_service: Callable[..., ServiceProcess],
    postfix_factory: Callable[..., PostfixInstance],
    sink: SmtpSink,
) -> None:
    postfix, _ = start(postwarden_config, postwarden_service, postfix_factory)

    # Given a client never seen before, its first attempt is deferred at RCPT
    first = postfix.send("news@stranger.test", ["bob@example.net"], xclient=STRANGER)
    assert first.rcpt_codes() == {"bob@example.net": 450}, first.replies
    text = first.text("rcpt:bob@example.net")
    assert "4.7.1" in text and "Greylisted" in text
    assert sink.count == 0

    # When it retries after the delay, the message is delivered
    result, _ = retry_until_accepted(postfix, "bob@example.net")
    assert result.accepted, result.replies
    (message,) = sink.wait_for(1)
    # with a header saying how long it waited
    header = message.header("X-Greylist")
    assert header is not None and header.startswith("delayed ")
    assert "by postwarden" in header

    # And the known triplet passes at once from now on, without a header
    again = postfix.send("news@stranger.test", ["bob@example.net"], xclient=STRANGER)
    assert again.accepted, again.replies
    messages = sink.wait_for(2)
    assert messages[1].header("X-Greylist") is None


def test_defer_if_permit_lets_a_later_reject_answer_first(
    postwarden_config: Callable[..., ServiceConfig],
    postwarden_service: Callable[..., ServiceProcess],
    postfix_factory: Callable[..., PostfixInstance],
) -> None:
    config = postwarden_config(checks=("greylist",), overrides=GREYLIST)
    postwarden_service(config, "policyd")
    policy = config.socket("policyd")
    # A later restriction rejects this recipient (unknown user, say): with
    # DEFER_IF_PERMIT the sender learns that now, not after greylisting.
    postfix = postfix_factory(
        main_cf={
            "smtpd_recipient_restrictions": (
                f"check_policy_service {policy}, check_recipient_access static:REJECT"
            )
        }
    )
    result = postfix.send("news@stranger.test", ["nobody@example.net"], xclient=STRANGER)
    assert result.rcpt_codes() == {"nobody@example.net": 554}, result.replies


def test_authenticated_clients_are_not_greylisted(
    postwarden_config: Callable[..., ServiceConfig],
    postwarden_service: Callable[..., ServiceProcess],
    postfix_factory: Callable[..., PostfixInstance],
    sink: SmtpSink,
) -> None:
    postfix, _ = start(postwarden_config, postwarden_service, postfix_factory)
    login = Xclient(addr="198.51.100.31", login="alice")
    result = postfix.send("alice@example.org", ["bob@example.net"], xclient=login)
    assert result.accepted, result.replies
    sink.wait_for(1)


def test_two_mx_hosts_with_their_own_policyd_share_greylisting_through_redis(
    postwarden_config: Callable[..., ServiceConfig],
    postwarden_service: Callable[..., ServiceProcess],
    postfix_factory: Callable[..., PostfixInstance],
    socket_dir: Path,
    sink: SmtpSink,
) -> None:
    # Two policyd processes (one per MX host) on the one Redis; the second
    # also loads a whitelist file with a broken line, reported at start.
    whitelist = socket_dir / "whitelist_clients"
    whitelist.write_text("mx.partner.test\n/broken(/\n")
    configs = [
        postwarden_config(checks=("greylist",), overrides=GREYLIST, name="a.yaml"),
        postwarden_config(
            checks=("greylist",),
            name="b.yaml",
            overrides={
                "policyd": {
                    "socket": f"unix:{socket_dir / 'policyd-b.sock'}",
                    "greylist": {
                        **GREYLIST["policyd"]["greylist"],
                        "whitelist_clients_files": [str(whitelist)],
                    },
                }
            },
        ),
    ]
    services = [postwarden_service(c, "policyd") for c in configs]
    assert f"{whitelist}:2: warning: " in services[1].log_text()
    mx_a = postfix_factory(policy_services=[configs[0].socket("policyd")])
    mx_b = postfix_factory(policy_services=[configs[1].socket("policyd")])

    # The first attempt reaches MX A and is greylisted there
    first = mx_a.send("news@stranger.test", ["bob@example.net"], xclient=STRANGER)
    assert first.rcpt_codes() == {"bob@example.net": 450}, first.replies
    # MX B knows the triplet: too early is still 450, after the delay it passes
    result, _ = retry_until_accepted(mx_b, "bob@example.net")
    assert result.accepted, result.replies
    sink.wait_for(1)
