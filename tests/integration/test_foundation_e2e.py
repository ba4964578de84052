"""End to end: Postfix -> postwarden milter + policy daemon -> sink.

The services run from the shipped entry point (`postwarden milter noop -c
FILE`, `postwarden policyd -c FILE`) as subprocesses; Postfix 3.7 reaches
them over unix sockets as user `postfix`, exactly as in production
(MILTER_README "smtpd_milters", SMTPD_POLICY_README "check_policy_service").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from milters.noop import HEADER as NOOP_HEADER
from postwarden.store.embedded import EmbeddedRedis
from tests.harness.postfix import PostfixInstance, Xclient
from tests.harness.services import ServiceConfig, ServiceProcess
from tests.harness.sink import SmtpSink

pytestmark = pytest.mark.integration

PostfixFactory = Callable[..., PostfixInstance]
ConfigFactory = Callable[..., ServiceConfig]
ServiceFactory = Callable[..., ServiceProcess]


def test_message_through_noop_milter_and_policyd_reaches_sink_with_header(
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
    sink: SmtpSink,
) -> None:
    # Given the noop milter and the policy daemon, wired into Postfix
    config = postwarden_config(milters=("noop",))
    postwarden_service(config, "milter", "noop")
    postwarden_service(config, "policyd")
    postfix = postfix_factory(
        smtpd_milters=[config.socket("noop")],
        policy_services=[config.socket("policyd")],
    )

    # When a message is sent
    result = postfix.send("alice@example.org", "bob@example.net")

    # Then it is accepted and relayed with the milter's header, whose value
    # is the queue ID Postfix gave the client (macro `i`)
    assert result.accepted, result.replies
    [received] = sink.wait_for(1)
    assert received.header(NOOP_HEADER) == result.queue_id
    assert received.mail_from == "alice@example.org"


def test_policy_reject_rule_text_is_seen_by_smtp_client(
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
    sink: SmtpSink,
) -> None:
    # Given an access rule that rejects one recipient
    config = postwarden_config(
        overrides={
            "policyd": {
                "access": {
                    "rules": [{"recipient": "blocked@example.net", "action": "REJECT no thanks"}]
                }
            }
        }
    )
    postwarden_service(config, "policyd")
    postfix = postfix_factory(policy_services=[config.socket("policyd")])

    # When a message goes to that recipient and one other
    result = postfix.send("alice@example.org", ["blocked@example.net", "bob@example.net"])

    # Then the client sees the rule's text on that RCPT only, and the
    # message still reaches the other recipient
    codes = result.rcpt_codes()
    assert codes["blocked@example.net"] // 100 == 5
    assert "no thanks" in result.text("rcpt:blocked@example.net")
    assert codes["bob@example.net"] == 250
    assert result.accepted
    [received] = sink.wait_for(1)
    assert received.rcpt_tos == ("bob@example.net",)


@pytest.fixture
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, so it can be stopped without hurting others."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("own-redis"), persist=False)
    server.start()
    yield server
    server.stop()


def test_redis_outage_uses_fallback_and_services_recover_without_restart(
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
    sink: SmtpSink,
    private_redis: EmbeddedRedis,
) -> None:
    # Given both services on a Redis this test may stop, policyd running a
    # check that needs Redis (greylisting, answering a plain 450) with
    # on_error: accept, and clients that look remote (XCLIENT) so they are
    # not skipped as trusted networks
    config = postwarden_config(
        redis_socket=private_redis.socket,
        milters=("noop",),
        checks=("greylist",),
        overrides={"policyd": {"on_error": "accept", "greylist": {"action": "defer"}}},
    )
    milter = postwarden_service(config, "milter", "noop")
    policyd = postwarden_service(config, "policyd")
    postfix = postfix_factory(
        smtpd_milters=[config.socket("noop")],
        policy_services=[config.socket("policyd")],
    )
    remote = Xclient(addr="192.0.2.10", helo="mx.example.org")

    # Sanity: with Redis up, a new triplet is greylisted at RCPT
    first = postfix.send("alice@example.org", "bob@example.net", xclient=remote)
    assert first.rcpt_codes() == {"bob@example.net": 450}, first.replies

    # When Redis goes away while the services run
    private_redis.stop()
    assert not _answers(private_redis.socket)
    log_mark = len(policyd.log_text())
    degraded = postfix.send("carol@example.org", "dave@example.net", xclient=remote)

    # Then policyd answers with the on_error fallback (accept: no
    # greylisting), says so in its log, and the milter still stamps its
    # header; neither process died
    assert degraded.accepted, degraded.replies
    [received] = sink.wait_for(1)
    assert received.header(NOOP_HEADER) == degraded.queue_id
    policyd.wait_for_log("fallback", start=log_mark)
    assert milter.alive() and policyd.alive()

    # When Redis comes back on the same socket
    private_redis.start()
    recovered = postfix.send("erin@example.org", "frank@example.net", xclient=remote)

    # Then greylisting works again at once, with no service restart
    assert recovered.rcpt_codes() == {"frank@example.net": 450}, recovered.replies
    assert policyd.alive() and milter.alive()


def _answers(socket: str) -> bool:
    client = redis.Redis(unix_socket_path=socket, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def test_services_stop_cleanly_on_sigterm_after_serving_postfix(
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
    sink: SmtpSink,
) -> None:
    # Given both services have served Postfix (whose smtpd keeps the policy
    # connection open for reuse, SMTPD_POLICY_README "smtpd_policy_service_reuse")
    config = postwarden_config(milters=("noop",))
    milter = postwarden_service(config, "milter", "noop")
    policyd = postwarden_service(config, "policyd")
    postfix = postfix_factory(
        smtpd_milters=[config.socket("noop")],
        policy_services=[config.socket("policyd")],
    )
    assert postfix.send("alice@example.org", "bob@example.net").accepted
    sink.wait_for(1)

    # When they get SIGTERM (what `postwarden run` and systemd send)
    codes = {"milter": milter.stop(), "policyd": policyd.stop()}

    # Then they exit 0 without a traceback or an ERROR line
    assert codes == {"milter": 0, "policyd": 0}
    for service in (milter, policyd):
        text = service.log_text()
        assert "Traceback" not in text, text
        assert " ERROR " not in text, text
