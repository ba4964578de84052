"""Rate limits and sender/login match through a real Postfix and `postwarden policyd`.

Postfix's XCLIENT LOGIN= sets the session's SASL login (XCLIENT_README), which
smtpd passes to the policy service as `sasl_username`, the attribute the
per-user limit keys on.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from postwarden.store.embedded import EmbeddedRedis
from postwarden.store.keys import Keys
from tests.harness.postfix import PostfixInstance, Xclient, make_message
from tests.harness.services import ServiceConfig, ServiceProcess
from tests.harness.sink import SmtpSink

pytestmark = pytest.mark.integration

RULES = {
    "policyd": {
        "sender_login": {"enabled": True, "map": {"alice": ["alice@example.org"]}},
        "ratelimit": {
            "enabled": True,
            "rules": [
                {
                    "name": "per_user",
                    "key": "sasl_username",
                    "applies_to": "authenticated",
                    "windows": [{"limit": 5, "per": "1m"}],
                },
                {
                    "name": "volume",
                    "key": "client_address",
                    "count": "bytes",
                    "applies_to": "unauthenticated",
                    "windows": [{"limit": 1500, "per": "1h"}],
                },
            ],
        },
    }
}


def start(
    postwarden_config: Callable[..., ServiceConfig],
    postwarden_service: Callable[..., ServiceProcess],
    postfix_factory: Callable[..., PostfixInstance],
) -> PostfixInstance:
    config = postwarden_config(checks=("sender_login", "ratelimit"), overrides=RULES)
    postwarden_service(config, "policyd")
    policy = config.socket("policyd")
    return postfix_factory(policy_services=[policy], end_of_data_policy_services=[policy])


def test_sixth_message_of_a_sasl_user_in_a_minute_gets_450_naming_the_limit(
    postwarden_config: Callable[..., ServiceConfig],
    postwarden_service: Callable[..., ServiceProcess],
    postfix_factory: Callable[..., PostfixInstance],
    sink: SmtpSink,
    redis_server: EmbeddedRedis,
) -> None:
    postfix = start(postwarden_config, postwarden_service, postfix_factory)
    login = Xclient(addr="198.51.100.20", login="alice")

    # Given five messages from SASL user alice, each to two recipients
    for _ in range(5):
        result = postfix.send(
            "alice@example.org", ["a@example.net", "b@example.net"], xclient=login
        )
        assert result.accepted, result.replies
    sink.wait_for(5)

    # Then policyd counted them per sasl_username, once per message
    client = redis.Redis(unix_socket_path=redis_server.socket)
    key = Keys("pwit:").ratelimit("sasl_username:alice", "per_user", "60000")
    assert client.zcard(key) == 5
    client.close()

    # When the sixth comes, its recipients are deferred with the limit named
    result = postfix.send("alice@example.org", ["a@example.net"], xclient=login)
    assert result.rcpt_codes() == {"a@example.net": 450}
    text = result.text("rcpt:a@example.net")
    assert "4.7.1" in text and "5 messages per 1m" in text and "per_user" in text
    # and another login is not affected
    other = postfix.send("bob@example.org", ["a@example.net"], xclient=Xclient(login="bob"))
    assert other.rcpt_codes() == {"a@example.net": 553}  # bob owns no address


def test_sender_login_mismatch_is_refused_with_553(
    postwarden_config: Callable[..., ServiceConfig],
    postwarden_service: Callable[..., ServiceProcess],
    postfix_factory: Callable[..., PostfixInstance],
    sink: SmtpSink,
) -> None:
    postfix = start(postwarden_config, postwarden_service, postfix_factory)
    login = Xclient(addr="198.51.100.21", login="alice")

    refused = postfix.send("boss@example.org", ["a@example.net"], xclient=login)
    assert refused.rcpt_codes() == {"a@example.net": 553}
    text = refused.text("rcpt:a@example.net")
    assert "5.7.1" in text and "<boss@example.org> not owned by login alice" in text

    # the owned address goes through, and unauthenticated mail is not checked
    assert postfix.send("alice@example.org", ["a@example.net"], xclient=login).accepted
    assert postfix.send("boss@example.org", ["a@example.net"]).accepted
    sink.wait_for(2)


def test_bytes_are_counted_at_end_of_data_and_refused_there(
    postwarden_config: Callable[..., ServiceConfig],
    postwarden_service: Callable[..., ServiceProcess],
    postfix_factory: Callable[..., PostfixInstance],
    sink: SmtpSink,
) -> None:
    postfix = start(postwarden_config, postwarden_service, postfix_factory)
    client = Xclient(addr="203.0.113.5")
    body = "x" * 600 + "\r\n"

    # ~850 bytes each against 1500 bytes an hour: the first fits, the second does not
    first = postfix.send(
        "s@example.org", ["a@example.net"], make_message(body=body), xclient=client
    )
    assert first.accepted, first.replies
    second = postfix.send(
        "s@example.org", ["a@example.net"], make_message(body=body), xclient=client
    )
    # RCPT was accepted (bytes are not known there); END-OF-MESSAGE was deferred
    assert second.rcpt_codes() == {"a@example.net": 250}
    assert second.code("data") == 450
    assert "bytes per 1h" in second.text("data") and "volume" in second.text("data")
    sink.wait_for(1)
    assert sink.count == 1
