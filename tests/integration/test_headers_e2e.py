"""End to end: Postfix -> `postwarden milter headers` -> sink, one table file.

The same table is also given to Postfix's own `header_checks`, so the
client-visible reply of the milter can be compared with what Postfix itself
answers (header_checks(5)).
"""

from __future__ import annotations

import base64
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.postfix import PostfixInstance, make_message
from tests.harness.services import ServiceConfig, ServiceProcess
from tests.harness.sink import SmtpSink

pytestmark = pytest.mark.integration

PostfixFactory = Callable[..., PostfixInstance]
ConfigFactory = Callable[..., ServiceConfig]
ServiceFactory = Callable[..., ServiceProcess]

TABLE = [
    "/^Subject: reject me/       REJECT 5.7.1 Rejected by the header rule",
    "/^Subject: later please/    REJECT 4.7.1 Come back later",
    "/^Subject: discard me/      DISCARD",
    "/^Subject: hold me/         HOLD held for review",
    "/^X-Tag: (.*)/              PREPEND X-Tagged: seen $1",
    "/^X-Drop:/                  IGNORE",
]


@pytest.fixture
def milter_postfix(
    tmp_path: Path,
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
) -> PostfixInstance:
    table = tmp_path / "header_checks"
    table.write_text("\n".join(TABLE) + "\n")
    config = postwarden_config(
        milters=("headers",),
        overrides={"milters": {"headers": {"header_checks": [str(table)]}}},
    )
    postwarden_service(config, "milter", "headers")
    return postfix_factory(smtpd_milters=[config.socket("headers")])


def send(postfix: PostfixInstance, subject: str, **extra: str) -> object:
    data = make_message(subject=subject, extra_headers=extra or None)
    return postfix.send("alice@example.org", "bob@example.net", data)


def test_reject_rule_gives_the_client_the_same_5xx_and_text_as_postfix(
    milter_postfix: PostfixInstance, postfix_factory: PostfixFactory, sink: SmtpSink
) -> None:
    # Given the table in the milter, and the same table in Postfix itself
    native = postfix_factory(header_checks=TABLE)
    # When a message matching the REJECT line is sent to each
    ours = milter_postfix.send(
        "alice@example.org", "bob@example.net", make_message(subject="reject me")
    )
    theirs = native.send("alice@example.org", "bob@example.net", make_message(subject="reject me"))
    # Then the client sees the rule's code and text, as Postfix would send it
    assert ours.code("data") == theirs.code("data") == 550
    assert "5.7.1 Rejected by the header rule" in ours.text("data")
    assert ours.text("data") == theirs.text("data")
    assert sink.count == 0


def test_reject_with_4xx_text_tempfails_like_postfix(
    milter_postfix: PostfixInstance, postfix_factory: PostfixFactory
) -> None:
    native = postfix_factory(header_checks=TABLE)
    ours = milter_postfix.send(
        "alice@example.org", "bob@example.net", make_message(subject="later please")
    )
    theirs = native.send(
        "alice@example.org", "bob@example.net", make_message(subject="later please")
    )
    assert ours.code("data") == theirs.code("data")
    assert ours.code("data") is not None and 400 <= ours.code("data") < 500  # type: ignore[operator]
    assert "4.7.1 Come back later" in ours.text("data")


def test_encoded_subject_is_rejected_by_the_milter_but_not_by_postfix(
    milter_postfix: PostfixInstance, postfix_factory: PostfixFactory
) -> None:
    # The intended difference: the milter also matches the decoded header.
    encoded = "=?utf-8?B?" + base64.b64encode(b"reject me").decode() + "?="
    native = postfix_factory(header_checks=TABLE)
    ours = milter_postfix.send(
        "alice@example.org", "bob@example.net", make_message(subject=encoded)
    )
    theirs = native.send("alice@example.org", "bob@example.net", make_message(subject=encoded))
    assert ours.code("data") == 550
    assert theirs.code("data") == 250


def test_prepend_adds_a_header_and_ignore_removes_one(
    milter_postfix: PostfixInstance, sink: SmtpSink
) -> None:
    data = make_message(subject="edit me", extra_headers={"X-Tag": "blue", "X-Drop": "secret"})
    result = milter_postfix.send("alice@example.org", "bob@example.net", data)
    assert result.accepted, result.replies
    [received] = sink.wait_for(1)
    assert received.header("X-Tagged") == "seen blue"
    assert received.header("X-Drop") is None
    assert received.header("X-Tag") == "blue"
    # PREPEND puts the new header right above the one that matched.
    lines = received.header_block.decode().split("\r\n")
    names = [line.split(":", 1)[0] for line in lines if line and line[0] not in " \t"]
    assert names.index("X-Tagged") + 1 == names.index("X-Tag")


def test_discard_leaves_the_sink_empty_while_the_client_sees_success(
    milter_postfix: PostfixInstance, sink: SmtpSink
) -> None:
    result = milter_postfix.send(
        "alice@example.org", "bob@example.net", make_message(subject="discard me")
    )
    assert result.accepted, result.replies
    milter_postfix.wait_for_log("discard")
    # A follow-up message proves delivery works and the discarded one never came.
    milter_postfix.send("alice@example.org", "bob@example.net", make_message(subject="after"))
    [received] = sink.wait_for(1)
    assert received.header("Subject") == "after"


def test_hold_puts_the_message_in_the_hold_queue(
    milter_postfix: PostfixInstance, sink: SmtpSink
) -> None:
    result = milter_postfix.send(
        "alice@example.org", "bob@example.net", make_message(subject="hold me")
    )
    assert result.accepted, result.replies
    held = milter_postfix.wait_for_hold(1)
    assert held == [result.queue_id]
    assert sink.count == 0


def test_sighup_reloads_the_table_without_restarting_the_milter(
    tmp_path: Path,
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
) -> None:
    # Given the milter serving a table that does not know "new rule"
    table = tmp_path / "reloadable"
    table.write_text("/^Subject: old rule/ REJECT old\n")
    config = postwarden_config(
        milters=("headers",),
        overrides={"milters": {"headers": {"header_checks": [str(table)]}}},
    )
    service = postwarden_service(config, "milter", "headers")
    postfix = postfix_factory(smtpd_milters=[config.socket("headers")])
    first = postfix.send("a@example.org", "b@example.net", make_message(subject="new rule"))
    assert first.accepted, first.replies
    # When the table gains a rule and the milter gets SIGHUP
    table.write_text("/^Subject: new rule/ REJECT 5.7.1 added by reload\n")
    mark = len(service.log_text())
    service.send_signal(signal.SIGHUP)
    service.wait_for_log("reloaded", start=mark)
    # Then the same process applies it
    second = postfix.send("a@example.org", "b@example.net", make_message(subject="new rule"))
    assert second.code("data") == 550
    assert "added by reload" in second.text("data")
    assert service.alive()


def test_body_checks_replace_and_decoded_body_match_through_postfix(
    tmp_path: Path,
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
    sink: SmtpSink,
) -> None:
    body_table = tmp_path / "body_checks"
    body_table.write_text(
        "/^old footer/ REPLACE new footer\n/big casino/ REJECT 5.7.1 no casinos\n"
    )
    config = postwarden_config(
        milters=("headers",),
        overrides={"milters": {"headers": {"body_checks": [str(body_table)]}}},
    )
    postwarden_service(config, "milter", "headers")
    postfix = postfix_factory(smtpd_milters=[config.socket("headers")])
    # A raw body line is rewritten in place (milter replacebody)
    edited = postfix.send(
        "a@example.org", "b@example.net", make_message(subject="s", body="hi\r\nold footer\r\n")
    )
    assert edited.accepted, edited.replies
    [received] = sink.wait_for(1)
    assert received.body == b"hi\r\nnew footer\r\n"
    # A base64 body is matched decoded, which Postfix's body_checks cannot do
    encoded = base64.b64encode(b"win at the big casino").decode() + "\r\n"
    data = make_message(
        subject="b64", body=encoded, extra_headers={"Content-Transfer-Encoding": "base64"}
    )
    rejected = postfix.send("a@example.org", "b@example.net", data)
    assert rejected.code("data") == 550
    assert "no casinos" in rejected.text("data")


SEED = Path(__file__).resolve().parents[3] / "shared" / "rules" / "header_checks.seed-spammers"


def test_seed_rules_let_mail_through_in_postfix_and_in_the_milter(
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
    sink: SmtpSink,
) -> None:
    # The seed file's REJECT lines have U+00A0 between REJECT and the text:
    # Postfix reads "REJECT\u00a0\u00a0..." as an unknown action, logs it and
    # delivers. The milter reaches the same verdict (and said so at start).
    lines = SEED.read_text(encoding="utf-8").splitlines()
    native = postfix_factory(header_checks=lines)
    config = postwarden_config(
        milters=("headers",),
        overrides={"milters": {"headers": {"header_checks": [str(SEED)]}}},
    )
    service = postwarden_service(config, "milter", "headers")
    ours = postfix_factory(smtpd_milters=[config.socket("headers")])
    data = make_message(subject="seminar", extra_headers={"Reply-To": "x@seminaria.gr"})
    theirs_result = native.send("a@example.org", "b@example.net", data)
    ours_result = ours.send("a@example.org", "b@example.net", data)
    assert theirs_result.accepted and ours_result.accepted
    native.wait_for_log("unknown command")
    sink.wait_for(2)
    service.wait_for_log("seed-spammers:14")


CROSS_LINE = [
    "/^Subject:.*hold/   HOLD",
    "/^X-Reject:/        REJECT 5.7.1 x-reject",
    "/^X-Discard:/       DISCARD",
    "/^X-Redirect:/      REDIRECT trap@example.net",
]


@pytest.mark.parametrize(
    ("subject", "extra"),
    [
        ("hold then reject", {"X-Reject": "1"}),
        ("plain discard then reject", {"X-Discard": "1", "X-Reject": "1"}),
        ("hold then discard", {"X-Discard": "1"}),
        ("plain redirect then reject", {"X-Redirect": "1", "X-Reject": "1"}),
        ("hold then redirect", {"X-Redirect": "1"}),
    ],
    ids=["hold+reject", "discard+reject", "hold+discard", "redirect+reject", "hold+redirect"],
)
def test_several_matching_lines_end_like_postfix_cleanup(
    tmp_path: Path,
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
    sink: SmtpSink,
    subject: str,
    extra: dict[str, str],
) -> None:
    # Given the same table in Postfix's header_checks and in the milter
    table = tmp_path / "cross"
    table.write_text("\n".join(CROSS_LINE) + "\n")
    config = postwarden_config(
        milters=("headers",),
        overrides={"milters": {"headers": {"header_checks": [str(table)]}}},
    )
    postwarden_service(config, "milter", "headers")
    native = postfix_factory(header_checks=CROSS_LINE)
    ours = postfix_factory(smtpd_milters=[config.socket("headers")])
    data = make_message(subject=subject, extra_headers=extra)
    # When one message whose lines hit several rules goes to each
    outcomes = []
    for postfix in (native, ours):
        sink.clear()
        result = postfix.send("a@example.org", "b@example.net", data)
        held = postfix.hold_queue() if result.accepted else []
        if result.accepted and not held and "discard" not in subject:
            delivered = sink.wait_for(1)[0].rcpt_tos
        else:
            delivered = ()
        outcomes.append((result.code("data"), result.text("data")[:40], len(held), delivered))
    # Then the client reply, the hold queue and the delivery are the same
    (theirs, mine) = outcomes
    assert mine[0] == theirs[0]
    if theirs[0] != 250:
        assert mine[1] == theirs[1]
    assert mine[2:] == theirs[2:]
