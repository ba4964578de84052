"""End to end: Postfix -> `postwarden milter attachments` -> sink.

The client sees a 5xx at end of DATA naming the file for reject; the sink
receives the message with the part replaced (and valid MIME) for strip; the
message lands in Postfix's hold queue for quarantine.
"""

from __future__ import annotations

import email
import email.policy
import shutil
import signal
from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures.attachments import EICAR, Attachment, mime_message, minimal_pe, zip_of
from tests.harness.clamd import ClamdInstance
from tests.harness.ports import shared_tempdir
from tests.harness.postfix import PostfixInstance
from tests.harness.services import ServiceConfig, ServiceProcess
from tests.harness.sink import SmtpSink

pytestmark = pytest.mark.integration

PostfixFactory = Callable[..., PostfixInstance]
ConfigFactory = Callable[..., ServiceConfig]
ServiceFactory = Callable[..., ServiceProcess]


def _postfix(
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
    **attachments: Any,
) -> PostfixInstance:
    config = postwarden_config(
        milters=("attachments",), overrides={"milters": {"attachments": attachments}}
    )
    postwarden_service(config, "milter", "attachments")
    return postfix_factory(smtpd_milters=[config.socket("attachments")])


def test_exe_in_a_zip_is_rejected_at_end_of_data_naming_the_file(
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
    sink: SmtpSink,
) -> None:
    postfix = _postfix(postfix_factory, postwarden_config, postwarden_service)
    data = mime_message([Attachment("invoice.zip", zip_of({"invoice.pdf.exe": minimal_pe()}))])
    result = postfix.send("alice@example.org", "bob@example.net", data)
    assert result.code("data") == 550
    assert 'Attachment "invoice.pdf.exe" refused: executables' in result.text("data")
    assert "5.7.1" in result.text("data")
    # A clean message still goes through the same milter.
    clean = postfix.send("alice@example.org", "bob@example.net", mime_message([]))
    assert clean.accepted, clean.replies
    [received] = sink.wait_for(1)
    assert received.header("X-Postwarden-Attachments") is None


def test_strip_delivers_the_message_with_the_part_replaced(
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
    sink: SmtpSink,
) -> None:
    postfix = _postfix(
        postfix_factory,
        postwarden_config,
        postwarden_service,
        classes={"executables": "strip"},
    )
    data = mime_message(
        [
            Attachment("report.pdf", minimal_pe(), "application/pdf"),
            Attachment("notes.txt", b"keep me\r\n", "text/plain"),
        ]
    )
    result = postfix.send("alice@example.org", "bob@example.net", data)
    assert result.accepted, result.replies
    [received] = sink.wait_for(1)
    parsed = email.message_from_bytes(received.raw, policy=email.policy.default)
    assert parsed.is_multipart() and not parsed.defects
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain"] * 3
    assert 'removed the attachment "report.pdf"' in parts[1].get_content()
    assert parts[2].get_filename() == "notes.txt"
    assert parts[2].get_content().strip() == "keep me"
    header = received.header("X-Postwarden-Attachments")
    assert header is not None and "executables=strip" in header


def test_quarantine_puts_the_message_in_the_hold_queue(
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
    sink: SmtpSink,
) -> None:
    postfix = _postfix(
        postfix_factory,
        postwarden_config,
        postwarden_service,
        classes={"executables": "quarantine"},
    )
    data = mime_message([Attachment("setup.exe", minimal_pe())])
    result = postfix.send("alice@example.org", "bob@example.net", data)
    assert result.accepted, result.replies
    held = postfix.wait_for_hold(1)
    assert held == [result.queue_id]
    assert sink.count == 0


def test_eicar_found_by_a_private_clamd_is_rejected_at_end_of_data(
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
    sink: SmtpSink,
) -> None:
    base = shared_tempdir("pw-clamd-")
    try:
        with ClamdInstance(base) as clamd:
            postfix = _postfix(
                postfix_factory,
                postwarden_config,
                postwarden_service,
                clamav={"enabled": True, "socket": f"unix:{clamd.socket}"},
            )
            data = mime_message([Attachment("readme.txt", EICAR, "text/plain")])
            result = postfix.send("alice@example.org", "bob@example.net", data)
            assert result.code("data") == 550
            assert 'Virus found in "readme.txt": Eicar-Test' in result.text("data")
            clean = postfix.send("alice@example.org", "bob@example.net", mime_message([]))
            assert clean.accepted, clean.replies
            sink.wait_for(1)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_reload_that_newly_strips_is_refused_until_a_restart(
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
) -> None:
    # Given the milter started with executables rejected (no body changes
    # agreed with Postfix)
    config = postwarden_config(milters=("attachments",))
    service = postwarden_service(config, "milter", "attachments")
    postfix = postfix_factory(smtpd_milters=[config.socket("attachments")])
    # When the config newly strips them and the milter gets SIGHUP
    config.rewrite({"milters": {"attachments": {"classes": {"executables": "strip"}}}})
    mark = len(service.log_text())
    service.send_signal(signal.SIGHUP)
    line = service.wait_for_log("reload refused", start=mark)
    # Then it says why and what to do, and keeps rejecting: a strip Postfix
    # would refuse must not turn into delivering the file
    assert "change_body" in line and "restart" in line
    data = mime_message([Attachment("setup.exe", minimal_pe())])
    assert postfix.send("alice@example.org", "bob@example.net", data).code("data") == 550
    assert service.alive()
