"""Self-tests of the real-Postfix harness; they need no postwarden service.

If these fail, every end-to-end test would fail for reasons unrelated to
postwarden, so they pin down what the harness promises: relaying to the sink
unchanged, replies reported without exceptions, XCLIENT reaching policy
services, Postfix's own HOLD landing in the hold queue, and several
instances side by side.
"""

from __future__ import annotations

import os
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.postfix import PostfixInstance, Xclient, make_message
from tests.harness.sink import SmtpSink

pytestmark = pytest.mark.integration

PostfixFactory = Callable[..., PostfixInstance]


class _PolicyHandler(socketserver.StreamRequestHandler):
    """Postfix SMTPD policy protocol (SMTPD_POLICY_README): name=value lines,
    an empty line ends a request; answer `action=...` and an empty line."""

    server: _PolicyServer

    def handle(self) -> None:
        attrs: dict[str, str] = {}
        for raw in self.rfile:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line:
                name, _, value = line.partition("=")
                attrs[name] = value
                continue
            self.server.record(attrs)
            self.wfile.write(f"action={self.server.action}\n\n".encode())
            self.wfile.flush()
            attrs = {}


class _PolicyServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, action: str) -> None:
        self.action = action
        self.requests: list[dict[str, str]] = []
        self._lock = threading.Lock()
        super().__init__(str(path), _PolicyHandler)
        os.chmod(path, 0o666)  # smtpd runs as user postfix

    def record(self, attrs: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(attrs)


@pytest.fixture
def policy_responder(socket_dir: Path) -> Iterator[_PolicyServer]:
    server = _PolicyServer(socket_dir / "test-policy.sock", action="DUNNO")
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_relayed_message_reaches_sink_with_body_unchanged(
    postfix_factory: PostfixFactory, sink: SmtpSink
) -> None:
    # Given a body with dot-stuffing candidates, a mbox-like From line,
    # trailing blanks and 8-bit text
    body = (
        "first line\r\n"
        ".a line that starts with a dot\r\n"
        "..two dots\r\n"
        "From the start of a line\r\n"
        "trailing blanks   \r\n"
        "caf\u00e9 na\u00efve\r\n"
        "\r\n"
        "last line\r\n"
    )
    data = make_message(subject="byte for byte", body=body)
    postfix = postfix_factory()

    # When it goes through Postfix
    result = postfix.send("alice@example.org", ["bob@example.net", "carol@example.com"], data)

    # Then Postfix queued it and the sink got the same body and envelope
    assert result.accepted, result.replies
    assert result.queue_id
    [received] = sink.wait_for(1)
    assert received.body == body.encode("utf-8")
    assert received.mail_from == "alice@example.org"
    assert sorted(received.rcpt_tos) == ["bob@example.net", "carol@example.com"]
    assert received.header("Subject") == "byte for byte"
    # Postfix's own trace header names the queue ID the client was told.
    assert result.queue_id in (received.header("Received") or "")


def test_send_reports_recipient_rejection_without_raising(
    postfix_factory: PostfixFactory, sink: SmtpSink
) -> None:
    postfix = postfix_factory(recipient_restrictions=["reject"])

    result = postfix.send("alice@example.org", "bob@example.net")

    assert result.code("mail") == 250
    assert result.rcpt_codes() == {"bob@example.net": 554}
    assert "5.7.1" in result.text("rcpt:bob@example.net")
    assert not result.accepted
    assert "data" not in result.replies
    assert sink.count == 0


def test_xclient_login_reaches_policy_service_as_sasl_username(
    postfix_factory: PostfixFactory, policy_responder: _PolicyServer, sink: SmtpSink
) -> None:
    socket = f"unix:{policy_responder.server_address}"
    postfix = postfix_factory(policy_services=[socket])

    result = postfix.send(
        "alice@example.org",
        "bob@example.net",
        xclient=Xclient(addr="192.0.2.25", helo="laptop.example.org", login="alice"),
    )

    assert result.code("xclient") == 220
    assert result.accepted, result.replies
    [request] = [r for r in policy_responder.requests if r.get("protocol_state") == "RCPT"]
    assert request["sasl_username"] == "alice"
    assert request["client_address"] == "192.0.2.25"
    assert request["helo_name"] == "laptop.example.org"
    assert request["recipient"] == "bob@example.net"
    [received] = sink.wait_for(1)
    assert received.mail_from == "alice@example.org"


def test_policy_service_reject_text_reaches_client(
    postfix_factory: PostfixFactory, policy_responder: _PolicyServer
) -> None:
    policy_responder.action = "REJECT 5.7.1 go away"
    postfix = postfix_factory(policy_services=[f"unix:{policy_responder.server_address}"])

    result = postfix.send("alice@example.org", "bob@example.net")

    assert result.rcpt_codes() == {"bob@example.net": 554}
    assert "go away" in result.text("rcpt:bob@example.net")


def test_header_checks_hold_puts_message_in_hold_queue(
    postfix_factory: PostfixFactory, sink: SmtpSink
) -> None:
    postfix = postfix_factory(header_checks=["/^Subject: quarantine me/ HOLD held by test"])

    held = postfix.send(data=make_message(subject="quarantine me"))
    passed = postfix.send(data=make_message(subject="let me through"))

    assert held.accepted and passed.accepted
    assert postfix.wait_for_hold(1) == [held.queue_id]
    [received] = sink.wait_for(1)
    assert received.header("Subject") == "let me through"
    assert held.queue_id is not None
    assert held.queue_id in postfix.wait_for_log("hold: header Subject: quarantine me")


def test_two_instances_run_side_by_side(postfix_factory: PostfixFactory, sink: SmtpSink) -> None:
    first = postfix_factory()
    second = postfix_factory()

    assert first.port != second.port
    assert first.send(data=make_message(subject="one")).accepted
    assert second.send(data=make_message(subject="two")).accepted

    subjects = sorted(m.header("Subject") or "" for m in sink.wait_for(2))
    assert subjects == ["one", "two"]
    assert first.syslog_name in first.log_text()
    assert second.syslog_name not in first.log_text()


def test_sink_failure_defers_then_flush_delivers(
    postfix_factory: PostfixFactory, sink: SmtpSink
) -> None:
    # Given the sink answers the first delivery attempt with 451
    sink.fail_next(1)
    postfix = postfix_factory()

    # When a message is sent, Postfix defers it
    result = postfix.send(data=make_message(subject="retry me"))
    assert result.accepted
    sink.wait_for_refusals(1)
    postfix.wait_for_log("status=deferred")

    # Then a flush delivers it
    postfix.flush()
    [received] = sink.wait_for(1)
    assert received.header("Subject") == "retry me"


def test_end_of_data_policy_service_sees_end_of_message_state(
    postfix_factory: PostfixFactory, policy_responder: _PolicyServer, sink: SmtpSink
) -> None:
    socket = f"unix:{policy_responder.server_address}"
    postfix = postfix_factory(end_of_data_policy_services=[socket])

    result = postfix.send("alice@example.org", ["bob@example.net", "carol@example.net"])

    assert result.accepted, result.replies
    states = [r["protocol_state"] for r in policy_responder.requests]
    assert states == ["END-OF-MESSAGE"]
    assert policy_responder.requests[0]["recipient_count"] == "2"
    sink.wait_for(1)


def test_set_main_applies_new_settings_on_the_same_port(
    postfix_factory: PostfixFactory, sink: SmtpSink
) -> None:
    postfix = postfix_factory()
    port = postfix.port
    assert postfix.send().accepted

    postfix.set_main(smtpd_recipient_restrictions="reject")

    assert postfix.port == port
    assert postfix.send().rcpt_codes() == {"rcpt@example.net": 554}


def test_reload_is_logged_by_master(postfix_factory: PostfixFactory) -> None:
    postfix = postfix_factory()

    postfix.set_main(restart=False, smtpd_banner="$myhostname ESMTP reloaded")

    assert "reload -- version" in postfix.log_text()
    assert postfix.running()
