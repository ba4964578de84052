"""The attachments engine with a real private clamd (tests/harness/clamd.py)
and a signature database built in the test (EICAR as .hdb and .ndb)."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from milters.attachments import AttachmentsEngine
from milters.context import MessageContext, ServiceContext
from milters.message import Action, Envelope, Message, Verdict
from milters.pipeline import Runner, Stage
from postwarden.config.load import load_config_text
from postwarden.config.schema import Settings
from tests.fixtures.attachments import EICAR, Attachment, mime_message, zip_of
from tests.harness.clamd import ClamdInstance
from tests.harness.ports import shared_tempdir

ENV = Envelope(mail_from="alice@example.org", recipients=("bob@example.net",), queue_id="4CLAM")


@pytest.fixture(scope="module")
def clamd() -> Iterator[ClamdInstance]:
    base = shared_tempdir("pw-clamd-")
    with ClamdInstance(base) as instance:
        yield instance
    shutil.rmtree(base, ignore_errors=True)


def configured(socket_path: str, **attachments: Any) -> Settings:
    block: dict[str, Any] = {"clamav": {"enabled": True, "socket": f"unix:{socket_path}"}}
    block.update(attachments)
    return load_config_text(yaml.safe_dump({"milters": {"attachments": block}}))


def run(raw: bytes, settings: Settings) -> Verdict:
    engine = AttachmentsEngine(settings.milters.attachments)
    return engine.evaluate(Message.from_bytes(raw), ENV, MessageContext.offline(settings))


def test_eicar_in_a_base64_part_is_rejected_naming_file_and_signature(
    clamd: ClamdInstance,
) -> None:
    v = run(mime_message([Attachment("eicar.dat", EICAR)]), configured(str(clamd.socket)))
    assert v.action is Action.REJECT
    assert v.reply is not None and (v.reply.code, v.reply.enhanced) == (550, "5.7.1")
    assert v.reply.text == 'Virus found in "eicar.dat": Eicar-Test-Body.UNOFFICIAL'


def test_eicar_inside_a_zip_is_found_by_clamd(clamd: ClamdInstance) -> None:
    data = zip_of({"readme.txt": b"hello " + EICAR})
    v = run(mime_message([Attachment("pack.zip", data)]), configured(str(clamd.socket)))
    assert v.action is Action.REJECT
    assert v.reply is not None and "Eicar-Test" in v.reply.text


def test_whole_message_scan_finds_eicar_too(clamd: ClamdInstance) -> None:
    raw = mime_message([Attachment("eicar.txt", EICAR, "text/plain", encoding="7bit")])
    clamav = {"enabled": True, "socket": f"unix:{clamd.socket}", "scan": "message"}
    s = configured(str(clamd.socket), clamav=clamav)
    v = run(raw, s)
    assert v.action is Action.REJECT


def test_virus_action_quarantine_holds_instead(clamd: ClamdInstance) -> None:
    s = configured(
        str(clamd.socket),
        clamav={"enabled": True, "socket": f"unix:{clamd.socket}", "action": "quarantine"},
    )
    v = run(mime_message([Attachment("eicar.dat", EICAR)]), s)
    assert v.action is Action.QUARANTINE


def test_clean_message_passes_clamd(clamd: ClamdInstance) -> None:
    raw = mime_message([Attachment("notes.txt", b"nothing to see", "text/plain")])
    v = run(raw, configured(str(clamd.socket)))
    assert v.action is Action.ACCEPT
    assert "clamd" not in v.details


@pytest.mark.expect_log("WARNING", "clamd unavailable")
def test_clamd_down_gives_on_error_accept_with_a_note(tmp_path: Path) -> None:
    v = run(mime_message([Attachment("a.bin", b"data")]), configured(str(tmp_path / "no.sock")))
    assert v.action is Action.ACCEPT
    assert "unavailable" in str(v.details["clamd"])


@pytest.mark.expect_log("WARNING", "clamd unavailable")
def test_clamd_down_gives_on_error_tempfail(tmp_path: Path) -> None:
    s = configured(str(tmp_path / "no.sock"), on_error="tempfail")
    v = run(mime_message([Attachment("a.bin", b"data")]), s)
    assert v.action is Action.TEMPFAIL
    assert v.reply is not None and v.reply.code == 451


@pytest.mark.expect_log("WARNING", "clamd unavailable")
def test_silent_clamd_ends_in_on_error_within_the_budget(tmp_path: Path) -> None:
    # A socket that accepts connections (backlog) but never answers.
    path = tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(str(path))
        silent.listen(8)
        s = configured(
            str(path),
            on_error="tempfail",
            budget="2s",
            clamav={"enabled": True, "socket": f"unix:{path}", "timeout": "30s"},
        )
        service = ServiceContext(s)
        runner = Runner(service)
        stage = Stage(
            "attachments", AttachmentsEngine(s.milters.attachments), s.milters.attachments
        )
        raw = mime_message([Attachment("a.bin", b"data")])
        result = runner.run(stage, Message.from_bytes(raw), ENV)
        runner.close()
    # Either clamd's capped timeout (on_error) or the budget (on_timeout)
    # ends it; both are tempfail here, neither waits for the 30s timeout.
    assert result.verdict.action is Action.TEMPFAIL
