"""End to end: Postfix -> `postwarden milter spam` -> sink, every action.

The client connects from 127.0.0.1, so `trusted_networks` is emptied to make
it an inbound sender (XCLIENT sets other addresses where a test needs one).
A regex rule gives a known score: Subject "trigger" scores 10.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from milters.spam.checks.gtube import GTUBE
from tests.fixtures.dnsserver import DnsServer
from tests.harness.postfix import PostfixInstance, Xclient, make_message
from tests.harness.services import ServiceConfig, ServiceProcess, postwarden_argv
from tests.harness.sink import SmtpSink

pytestmark = pytest.mark.integration

PostfixFactory = Callable[..., PostfixInstance]
ConfigFactory = Callable[..., ServiceConfig]
ServiceFactory = Callable[..., ServiceProcess]

NO_ACTIONS = {k: None for k in ("greylist", "add_header", "rewrite_subject", "quarantine",
                                "reject", "discard")}  # fmt: skip
RULE = {"symbol": "TEST_TRIGGER", "header": "Subject", "match": "trigger", "score": 10}


@pytest.fixture
def spam_postfix(
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
) -> Callable[..., PostfixInstance]:
    def make(thresholds: dict[str, Any], **spam: Any) -> PostfixInstance:
        block = {"rules": [RULE], "dnsbl": {"enabled": False},
                 "thresholds": {**NO_ACTIONS, **thresholds}, **spam}  # fmt: skip
        overrides: dict[str, Any] = {"trusted_networks": [], "milters": {"spam": block}}
        for top in ("dns", "policyd"):
            if top in block:
                overrides[top] = block.pop(top)
        config = postwarden_config(milters=("spam",), overrides=overrides)
        postwarden_service(config, "milter", "spam")
        return postfix_factory(smtpd_milters=[config.socket("spam")])

    return make


def send(postfix: PostfixInstance, subject: str, **kw: Any) -> Any:
    data = make_message(subject=subject, extra_headers=kw.pop("headers", None))
    return postfix.send("alice@example.org", kw.pop("rcpts", ["bob@example.net"]), data, **kw)


def test_add_header_tags_at_the_sink_and_forged_headers_are_gone(
    spam_postfix: Callable[..., PostfixInstance], sink: SmtpSink
) -> None:
    postfix = spam_postfix({"add_header": 5})
    forged = {"X-Spam-Flag": "NO", "X-Spam-Score": "-50", "X-Spam": "No"}
    result = send(postfix, "trigger", headers=forged)
    assert result.accepted, result.replies
    [got] = sink.wait_for(1)
    assert got.headers("X-Spam") == ["Yes"]
    assert got.headers("X-Spam-Flag") == ["YES"]
    [score] = got.headers("X-Spam-Score")
    assert float(score) >= 10
    [res] = got.headers("X-Spamd-Result")
    assert "TEST_TRIGGER(10.00)" in res and "action=add_header" in res


def test_clean_mail_gets_score_and_result_but_no_flag(
    spam_postfix: Callable[..., PostfixInstance], sink: SmtpSink
) -> None:
    postfix = spam_postfix({"add_header": 5})
    assert send(postfix, "hello").accepted
    [got] = sink.wait_for(1)
    assert got.header("X-Spam") is None
    assert got.header("X-Spam-Score") is not None
    assert "action=accept" in (got.header("X-Spamd-Result") or "")


def test_rewrite_subject_prefixes_the_subject_at_the_sink(
    spam_postfix: Callable[..., PostfixInstance], sink: SmtpSink
) -> None:
    postfix = spam_postfix({"rewrite_subject": 5})
    assert send(postfix, "trigger me").accepted
    [got] = sink.wait_for(1)
    assert got.header("Subject") == "[SPAM] trigger me"


def test_reject_answers_550_5_7_1_with_the_score_at_end_of_data(
    spam_postfix: Callable[..., PostfixInstance], sink: SmtpSink
) -> None:
    postfix = spam_postfix({"reject": 5})
    result = send(postfix, "trigger")
    assert result.code("data") == 550
    assert "5.7.1" in result.text("data") and "score" in result.text("data")
    assert sink.count == 0


def test_gtube_is_rejected_with_shipped_defaults(
    postfix_factory: PostfixFactory, postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory, sink: SmtpSink,
) -> None:  # fmt: skip
    config = postwarden_config(
        milters=("spam",),
        overrides={"trusted_networks": [], "milters": {"spam": {"dnsbl": {"enabled": False}}}},
    )
    postwarden_service(config, "milter", "spam")
    postfix = postfix_factory(smtpd_milters=[config.socket("spam")])
    data = make_message(subject="gtube", body=GTUBE.decode() + "\r\n")
    result = postfix.send("alice@example.org", ["bob@example.net"], data)
    assert result.code("data") == 550
    assert sink.count == 0


def test_greylist_answers_4xx_then_a_retry_is_delivered(
    spam_postfix: Callable[..., PostfixInstance], sink: SmtpSink
) -> None:
    postfix = spam_postfix({"greylist": 5}, policyd={"greylist": {"delay": "1s"}})
    first = send(postfix, "trigger")
    assert first.code("data") == 451
    assert "4.7.1" in first.text("data")
    # The client retries (as an MTA does) until the 1s delay has passed:
    # polling, the test asserts no timing.
    for _ in range(300):
        time.sleep(0.1)
        retry = send(postfix, "trigger")
        if retry.accepted:
            break
        assert retry.code("data") == 451
    assert retry.accepted, retry.replies
    [got] = sink.wait_for(1)
    assert "GREYLIST_PASSED" in (got.header("X-Spamd-Result") or "")


def test_quarantine_puts_the_message_on_hold(
    spam_postfix: Callable[..., PostfixInstance], sink: SmtpSink
) -> None:
    postfix = spam_postfix({"quarantine": 5})
    result = send(postfix, "trigger")
    assert result.accepted, result.replies
    assert postfix.wait_for_hold(1) == [result.queue_id]
    assert sink.count == 0


def test_discard_accepts_and_delivers_nothing(
    spam_postfix: Callable[..., PostfixInstance], sink: SmtpSink
) -> None:
    postfix = spam_postfix({"discard": 5})
    result = send(postfix, "trigger")
    assert result.accepted, result.replies
    postfix.wait_for_log("discard")
    assert send(postfix, "after").accepted
    [got] = sink.wait_for(1)
    assert got.header("Subject") == "after"


def test_two_recipients_under_different_profiles_are_tagged_not_refused(
    spam_postfix: Callable[..., PostfixInstance], sink: SmtpSink
) -> None:
    postfix = spam_postfix(
        {"reject": 50},
        profiles={"radical": {"recipients": ["strict.example"],
                              "thresholds": {"add_header": 2, "reject": 5}}},
    )  # fmt: skip
    mixed = send(postfix, "trigger", rcpts=["a@strict.example", "b@lenient.example"])
    assert mixed.accepted, mixed.replies
    got = sink.wait_for(1)[0]
    assert got.header("X-Spam") == "Yes"
    strict = send(postfix, "trigger", rcpts=["a@strict.example"])
    assert strict.code("data") == 550


def test_outbound_threshold_for_authenticated_client(
    spam_postfix: Callable[..., PostfixInstance],
) -> None:
    postfix = spam_postfix({"reject": 50}, outbound={"reject": 5})
    inbound = send(postfix, "trigger")
    assert inbound.accepted
    login = send(postfix, "trigger", xclient=Xclient(login="alice"))
    assert login.code("data") == 550


def test_forwarding_recipient_gets_the_stricter_threshold(
    spam_postfix: Callable[..., PostfixInstance],
) -> None:
    postfix = spam_postfix({"reject": 50}, forwarding_addresses=["fwd@example.net"],
                           forwarding={"reject": 5})  # fmt: skip
    assert send(postfix, "trigger", rcpts=["stay@example.net"]).accepted
    assert send(postfix, "trigger", rcpts=["fwd@example.net"]).code("data") == 550


def test_dnsbl_listed_client_is_rejected_through_postfix(
    spam_postfix: Callable[..., PostfixInstance], sink: SmtpSink
) -> None:
    zone = {"5.113.0.203.bl.test": [("A", "127.0.0.2")]}
    with DnsServer(zone) as server:
        postfix = spam_postfix(
            {"reject": 5},
            dns={"nameservers": [server.nameserver], "timeout": "1s"},
            dnsbl={"enabled": True, "timeout": "2s", "zones": [
                {"zone": "bl.test", "kind": "ip", "symbol": "RBL_TEST", "score": 6}]},
        )  # fmt: skip
        listed = send(postfix, "hello", xclient=Xclient(addr="203.0.113.5"))
        clean = send(postfix, "hello", xclient=Xclient(addr="203.0.113.6"))
    assert listed.code("data") == 550
    assert clean.accepted, clean.replies


def test_milter_sees_the_received_spf_header_the_policy_daemon_prepends(
    postfix_factory: PostfixFactory, postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory, sink: SmtpSink,
) -> None:  # fmt: skip
    # Given policyd's SPF check (PREPEND Received-SPF at RCPT) and the spam milter
    zone = {"softfail.example": [("TXT", "v=spf1 ip4:192.0.2.0/24 ~all")]}
    with DnsServer(zone) as server:
        config = postwarden_config(
            milters=("spam",),
            checks=("spf",),
            overrides={
                "trusted_networks": [],
                "dns": {"nameservers": [server.nameserver], "timeout": "2s"},
                "policyd": {"spf": {"receiver": "mx.test.invalid", "query_timeout": "1s"}},
                "milters": {"spam": {"dnsbl": {"enabled": False}}},
            },
        )
        postwarden_service(config, "policyd")
        postwarden_service(config, "milter", "spam")
        postfix = postfix_factory(
            policy_services=[config.socket("policyd")], smtpd_milters=[config.socket("spam")]
        )
        data = make_message(subject="spf", mail_from="alice@softfail.example")
        client = Xclient(addr="198.51.100.7", helo="mail.softfail.example")
        result = postfix.send("alice@softfail.example", ["bob@example.net"], data, xclient=client)
    assert result.accepted, result.replies
    [got] = sink.wait_for(1)
    # Then the milter saw the header (smtpd's PREPEND reaches milters) and scored it
    assert got.header("Received-SPF") is not None
    assert "R_SPF_SOFTFAIL" in (got.header("X-Spamd-Result") or "")


def test_milter_sees_authentication_results_an_earlier_milter_added(
    tmp_path: Path, postfix_factory: PostfixFactory, postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory, sink: SmtpSink,
) -> None:  # fmt: skip
    # Given an earlier milter (headers, PREPEND) writing our Authentication-Results,
    # as the dkim milter does, and the spam milter after it in smtpd_milters
    table = tmp_path / "header_checks"
    table.write_text(
        "/^Subject: signed/ PREPEND Authentication-Results: mx.test.invalid; "
        "dkim=pass header.d=example.org; dmarc=pass header.from=example.org\n"
    )
    config = postwarden_config(
        milters=("headers", "spam"),
        overrides={
            "trusted_networks": [],
            "milters": {
                "headers": {"header_checks": [str(table)]},
                "spam": {"dnsbl": {"enabled": False}, "authserv_id": "mx.test.invalid"},
            },
        },
    )
    postwarden_service(config, "milter", "headers")
    postwarden_service(config, "milter", "spam")
    postfix = postfix_factory(smtpd_milters=[config.socket("headers"), config.socket("spam")])
    assert postfix.send("a@example.org", ["b@example.net"], make_message(subject="signed")).accepted
    [got] = sink.wait_for(1)
    # Then the spam milter scored the verdicts the earlier milter wrote
    result = got.header("X-Spamd-Result") or ""
    assert "R_DKIM_ALLOW" in result and "DMARC_POLICY_ALLOW" in result


def test_stat_shows_scanned_and_the_share_of_each_action(
    postfix_factory: PostfixFactory, postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory, sink: SmtpSink,
) -> None:  # fmt: skip
    # Given three messages through the milter: two rejected, one accepted
    block = {
        "rules": [RULE],
        "dnsbl": {"enabled": False},
        "thresholds": {**NO_ACTIONS, "reject": 5},
    }
    config = postwarden_config(
        milters=("spam",), overrides={"trusted_networks": [], "milters": {"spam": block}}
    )
    service = postwarden_service(config, "milter", "spam")
    postfix = postfix_factory(smtpd_milters=[config.socket("spam")])
    assert send(postfix, "trigger").code("data") == 550
    assert send(postfix, "trigger again").code("data") == 550
    assert send(postfix, "hello").accepted
    # Postfix first (its smtpd processes may hold milter connections), then
    # the milter, which flushes its counters on the way out
    postfix.stop()
    assert service.stop() == 0
    # When an admin runs `postwarden stat`
    out = subprocess.run(
        [*postwarden_argv(), "stat", "-c", str(config.path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    # Then it shows the scanned count and each action's count and share
    assert "milter spam: 3 messages scanned" in out
    assert "Messages with action reject: 2, 66.67%" in out
    assert "Messages with action accept: 1, 33.33%" in out
    assert "Messages with action discard: 0, 0.00%" in out


def test_spam_milter_scores_the_dkim_milters_authentication_results(
    postfix_factory: PostfixFactory, postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory, sink: SmtpSink,
) -> None:  # fmt: skip
    # Given the dkim milter (verifies, writes A-R with its authserv-id) before
    # the spam milter, which takes that id from the dkim settings
    config = postwarden_config(
        milters=("dkim", "spam"),
        overrides={
            "trusted_networks": [],
            "milters": {
                "dkim": {"authserv_id": "mx.test.invalid", "sign": False, "dmarc": False,
                         "arc": False},
                "spam": {"dnsbl": {"enabled": False}},
            },
        },
    )  # fmt: skip
    postwarden_service(config, "milter", "dkim")
    postwarden_service(config, "milter", "spam")
    postfix = postfix_factory(smtpd_milters=[config.socket("dkim"), config.socket("spam")])
    # When an unsigned message arrives (and a forged A-R claims our id)
    forged = {"Authentication-Results": "mx.test.invalid; dkim=pass header.d=bank.example"}
    data = make_message(subject="unsigned", extra_headers=forged)
    assert postfix.send("a@example.org", ["b@example.net"], data).accepted
    [got] = sink.wait_for(1)
    # Then the spam milter saw the dkim milter's verdict, not the forged one
    result = got.header("X-Spamd-Result") or ""
    assert "R_DKIM_NA" in result
    assert "R_DKIM_ALLOW" not in result


def test_autolearn_under_postfix_learns_what_a_junk_move_can_relearn(
    spam_postfix: Callable[..., PostfixInstance], sink: SmtpSink,
    postwarden_config: ConfigFactory,
) -> None:  # fmt: skip
    # Given autolearn on, with the test rule alone (10) enough to learn spam
    postfix = spam_postfix(
        {"add_header": 5}, bayes={"autolearn": {"enabled": True, "spam_score": 10}}
    )
    assert send(postfix, "trigger").accepted
    [got] = sink.wait_for(1)
    # Then the milter says it learned the message, and Bayes counts it
    assert "BAYES_AUTOLEARN_SPAM" in (got.header("X-Spamd-Result") or "")
    config = postwarden_config(milters=("spam",))
    stat = subprocess.run(
        [*postwarden_argv(), "stat", "-c", str(config.path), "--json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(stat)["bayes_learned_spam"] == 1
    # When the user moves the delivered copy out of Junk (learn ham)
    out = subprocess.run(
        [*postwarden_argv(), "learn", "ham", "-c", str(config.path), "--json", "-"],
        input=got.raw, capture_output=True, check=True,
    ).stdout  # fmt: skip
    # Then it is the same message: its tokens move to ham
    assert json.loads(out)["relearned"] == 1
