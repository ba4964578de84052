"""The pymilter adapter, driven by pymilter's own TestCtx (no Postfix).

TestCtx re-serialises messages, so these tests assert on replies, recorded
header changes and return codes, never on exact bytes.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import Milter
import pytest
from Milter import testctx

from milters import adapter
from milters.context import MessageContext, ServiceContext
from milters.engine import Engine, Needs
from milters.message import (
    Action,
    Envelope,
    HeaderEdit,
    HeaderOp,
    Message,
    Verdict,
)
from milters.pipeline import Runner, Stage
from postwarden.config.schema import MilterSettings, OnError, Settings
from postwarden.config.sections.common import Mode
from postwarden.config.units import Size
from postwarden.errors import StoreUnavailable
from postwarden.replies import Reply

RAW = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"\r\n" + b"body line\r\n" * 100
)


# Every "no reply" protocol bit. TestCtx treats NOREPLY as a failure, so the
# recording context plays an MTA that does not offer them (libmilter then
# expects CONTINUE, which @noreply callbacks return); negotiation itself is
# checked separately with everything offered.
NR_BITS = (
    Milter.P_NR_CONN
    | Milter.P_NR_HELO
    | Milter.P_NR_MAIL
    | Milter.P_NR_RCPT
    | Milter.P_NR_DATA
    | Milter.P_NR_UNKN
    | Milter.P_NR_EOH
    | Milter.P_NR_BODY
    | Milter.P_NR_HDR
)
ALL_PROTOCOL = 0x1FFFFF


class RecordingCtx(testctx.TestCtx):  # type: ignore[misc]
    """TestCtx that records quarantine and header edits instead of failing."""

    __test__ = False

    def __init__(self, offered: int = ALL_PROTOCOL & ~NR_BITS) -> None:
        super().__init__()
        self.offered = offered
        self.quarantined: str | None = None
        self.added: list[tuple[str, str, int]] = []
        self.changed: list[tuple[str, int, str]] = []

    def _negotiate(self) -> int:
        self._body = None
        self._bodyreplaced = False
        self._priv = None
        self._opts = [Milter.CURR_ACTS, self.offered, 0, 0]
        self._stage = -1
        rc = Milter.negotiate_callback(self, self._opts)
        self._protocol = self._opts[1]
        return int(rc)

    def quarantine(self, reason: str) -> None:
        self.quarantined = reason

    def addheader(self, name: str, value: str, idx: int) -> None:
        self.added.append((name, value, idx))
        super().addheader(name, value, idx)

    def chgheader(self, name: str, idx: int, value: str) -> None:
        self.changed.append((name, idx, value))
        super().chgheader(name, idx, value)


@dataclass
class ScriptedEngine:
    """An engine that returns a set verdict and remembers what it was given."""

    verdict: Verdict = field(default_factory=Verdict)
    error: Exception | None = None
    name: str = "scripted"
    needs: Needs = field(default_factory=lambda: Needs(change_headers=True, quarantine=True))
    seen: list[tuple[Message, Envelope]] = field(default_factory=list)

    def evaluate(self, msg: Message, env: Envelope, ctx: MessageContext) -> Verdict:
        self.seen.append((msg, env))
        if self.error is not None:
            raise self.error
        return self.verdict


def slot_for(name: str, engine: Engine, settings: MilterSettings) -> adapter.StageSlot:
    return adapter.StageSlot(Stage(name, engine, settings), Runner(ServiceContext(Settings())))


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedEngine]:
    eng = ScriptedEngine()
    yield eng


def feed(
    engine: ScriptedEngine, monkeypatch: pytest.MonkeyPatch, settings: MilterSettings | None = None
) -> tuple[int, RecordingCtx]:
    cls = adapter.adapter_class(engine.needs)
    cls.slot = slot_for("scripted", engine, settings or MilterSettings())
    monkeypatch.setattr(Milter, "factory", cls)
    ctx = RecordingCtx()
    ctx._setsymval("i", "4F2XQ1")
    ctx._setsymval("{auth_authen}", "alice")
    assert ctx._connect(host="mail.example.org", helo="mail.example.org", ip="192.0.2.7") == (
        Milter.CONTINUE
    )
    rc = ctx._feedFile(io.BytesIO(RAW), "alice@example.org", "bob@example.net", "carol@example.net")
    return rc, ctx


def test_engine_sees_envelope_headers_and_body(
    engine: ScriptedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, _ = feed(engine, monkeypatch)
    assert rc == Milter.ACCEPT
    msg, env = engine.seen[0]
    assert env.mail_from == "alice@example.org"
    assert env.recipients == ("bob@example.net", "carol@example.net")
    assert env.queue_id == "4F2XQ1"
    assert env.auth_user == "alice"
    assert str(env.client_address) == "192.0.2.7"
    assert env.helo == "mail.example.org"
    assert msg.get("Subject") == "hello"
    assert msg.message_id == "<m1@example.org>"
    assert msg.body.count(b"body line") == 100


def test_body_beyond_max_is_counted_not_kept(
    engine: ScriptedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed(engine, monkeypatch, MilterSettings(max_body_size=Size(50)))
    msg, _ = engine.seen[0]
    assert len(msg.body) == 50
    assert msg.body_size >= 1000
    assert msg.truncated


def test_reject_sets_the_reply(engine: ScriptedEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    engine.verdict = Verdict(Action.REJECT, reply=Reply(554, "5.7.1", "100% spam"))
    rc, ctx = feed(engine, monkeypatch)
    assert rc == Milter.REJECT
    assert ctx._reply == ("554", "5.7.1", "100%% spam")


def test_tempfail_and_discard(engine: ScriptedEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    engine.verdict = Verdict(Action.TEMPFAIL, reply=Reply(451, "4.7.1", "later"))
    assert feed(engine, monkeypatch)[0] == Milter.TEMPFAIL
    engine.verdict = Verdict(Action.DISCARD)
    assert feed(engine, monkeypatch)[0] == Milter.DISCARD


def test_header_edits_and_quarantine_are_applied(
    engine: ScriptedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.verdict = Verdict(
        Action.QUARANTINE,
        reason="held for review",
        header_edits=(
            HeaderEdit(HeaderOp.ADD, "X-Added", "1"),
            HeaderEdit(HeaderOp.INSERT, "X-Top", "2", index=0),
            HeaderEdit(HeaderOp.CHANGE, "Subject", "[held] hello", index=1),
            HeaderEdit(HeaderOp.DELETE, "To", index=1),
        ),
    )
    rc, ctx = feed(engine, monkeypatch)
    assert rc == Milter.ACCEPT
    assert ctx.quarantined == "held for review"
    assert ctx.added == [("X-Added", "1", -1), ("X-Top", "2", 0)]
    assert ctx.changed == [("Subject", 1, "[held] hello"), ("To", 1, "")]


def test_warn_mode_turns_reject_into_a_header(
    engine: ScriptedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.verdict = Verdict(Action.REJECT, reason="bad rule", reply=Reply(550, "5.7.1", "x"))
    rc, ctx = feed(engine, monkeypatch, MilterSettings(mode=Mode.WARN))
    assert rc == Milter.ACCEPT
    assert ctx.added == [("X-Postwarden-Warn", "scripted would reject: bad rule", -1)]


@pytest.mark.expect_log("WARNING", "milter scripted: store")
def test_store_failure_gets_on_error_accept(
    engine: ScriptedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.error = StoreUnavailable("redis unavailable: connection refused")
    rc, ctx = feed(engine, monkeypatch, MilterSettings(on_error=OnError.ACCEPT))
    assert rc == Milter.ACCEPT
    assert ctx._reply is None


@pytest.mark.expect_log("WARNING", "milter scripted: bug")
def test_engine_bug_gets_on_error_tempfail(
    engine: ScriptedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.error = ZeroDivisionError("oops")
    rc, ctx = feed(engine, monkeypatch, MilterSettings(on_error=OnError.TEMPFAIL))
    assert rc == Milter.TEMPFAIL
    assert ctx._reply == ("451", "4.3.0", "Temporary local problem, please try again later")


def negotiated(needs: Needs, monkeypatch: pytest.MonkeyPatch, answer_data: bool = False) -> int:
    cls = adapter.adapter_class(needs, answer_data=answer_data)
    cls.slot = slot_for("x", ScriptedEngine(), MilterSettings())
    monkeypatch.setattr(Milter, "factory", cls)
    ctx = RecordingCtx(offered=ALL_PROTOCOL)
    ctx._negotiate()
    return int(ctx._protocol)


def test_only_needed_callbacks_are_negotiated(monkeypatch: pytest.MonkeyPatch) -> None:
    quiet = negotiated(Needs(headers=False, body=False), monkeypatch)
    full = negotiated(Needs(), monkeypatch)
    # Postfix skips sending what the engine does not read...
    assert quiet & Milter.P_NOHDRS and quiet & Milter.P_NOBODY and quiet & Milter.P_NOEOH
    assert not full & Milter.P_NOHDRS and not full & Milter.P_NOBODY
    # ...never waits for a reply before end-of-message...
    for bit in (
        Milter.P_NR_CONN,
        Milter.P_NR_HELO,
        Milter.P_NR_MAIL,
        Milter.P_NR_RCPT,
        Milter.P_NR_HDR,
        Milter.P_NR_EOH,
        Milter.P_NR_BODY,
    ):
        assert full & bit
    # ...and does not send DATA or unknown commands at all.
    assert full & Milter.P_NODATA and full & Milter.P_NOUNKNOWN
    # Over TCP, DATA is sent and answered, once per message: the reply carries
    # the ACK that Postfix's Nagle waits for (adapter docstring).
    for needs in (Needs(headers=False, body=False), Needs()):
        tcp = negotiated(needs, monkeypatch, answer_data=True)
        assert not tcp & Milter.P_NODATA and not tcp & Milter.P_NR_DATA
        assert tcp & Milter.P_NR_RCPT and tcp & Milter.P_NOUNKNOWN


def test_noop_engine_stamps_the_queue_id(monkeypatch: pytest.MonkeyPatch) -> None:
    from milters.noop import NoopEngine

    engine = NoopEngine()
    settings = replace(Settings().milters.noop, enabled=True)
    cls = adapter.adapter_class(engine.needs)
    cls.slot = slot_for("noop", engine, settings)
    monkeypatch.setattr(Milter, "factory", cls)
    ctx = RecordingCtx()
    ctx._setsymval("i", "ABC123")
    ctx._connect()
    assert ctx._feedFile(io.BytesIO(RAW), "a@b.example", "c@d.example") == Milter.ACCEPT
    assert ctx.added == [("X-Postwarden-Noop", "ABC123", -1)]


def test_body_and_recipient_changes_are_applied(
    engine: ScriptedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.needs = Needs(change_body=True, change_recipients=True)
    engine.verdict = Verdict(
        new_body=b"replaced\r\n",
        add_recipients=("archive@example.net",),
        remove_recipients=("carol@example.net",),
    )
    rc, ctx = feed(engine, monkeypatch)
    assert rc == Milter.ACCEPT
    assert ctx._bodyreplaced
    assert ctx._addrcpt == [("<archive@example.net>", None)]
    assert ctx._delrcpt == ["<carol@example.net>"]


def test_action_flags_follow_needs() -> None:
    assert adapter.action_flags(Needs(add_headers=True)) == Milter.ADDHDRS
    flags = adapter.action_flags(Needs(change_headers=True, quarantine=True))
    assert flags & Milter.CHGHDRS and flags & Milter.QUARANTINE
    assert not flags & Milter.CHGBODY


def test_warn_mode_withholds_body_and_header_changes_but_keeps_added_headers(
    engine: ScriptedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.needs = Needs(change_headers=True, change_body=True)
    engine.verdict = Verdict(
        Action.ADD_HEADER,
        reason="rule x",
        new_body=b"rewritten\r\n",
        header_edits=(
            HeaderEdit(HeaderOp.ADD, "X-Info", "1"),
            HeaderEdit(HeaderOp.DELETE, "Subject", index=1),
        ),
    )
    rc, ctx = feed(engine, monkeypatch, MilterSettings(mode=Mode.WARN))
    assert rc == Milter.ACCEPT
    assert not ctx._bodyreplaced
    assert ctx.changed == []
    assert ctx.added == [
        ("X-Info", "1", -1),
        ("X-Postwarden-Warn", "scripted would change headers, rewrite the body: rule x", -1),
    ]
