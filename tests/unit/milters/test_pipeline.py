"""The one path Postfix and `scan` share: budget, on_error, warn mode, combining."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pytest
import yaml

from milters import pipeline, registry
from milters.context import MessageContext, ServiceContext
from milters.engine import Needs
from milters.message import Action, Envelope, HeaderEdit, HeaderOp, Message, Verdict
from milters.pipeline import Runner, Stage
from postwarden.budget import BudgetExceeded
from postwarden.config import load_config_text
from postwarden.config.schema import MilterSettings, Mode, OnError, Settings
from postwarden.config.units import Duration, Size
from postwarden.errors import StoreUnavailable
from postwarden.replies import BUDGET_EXCEEDED, SERVICE_UNAVAILABLE
from tests.conftest import REPO

RAW = b"Subject: hello\r\nMessage-ID: <m1@example.org>\r\n\r\nbody line\r\n"
ENV = Envelope(mail_from="a@example.org", recipients=("b@example.net",), queue_id="4QID")


@dataclass
class Scripted:
    """An engine that returns a set verdict, raises, or blocks until released."""

    verdict: Verdict = field(default_factory=Verdict)
    error: Exception | None = None
    block: threading.Event | None = None
    cooperative: bool = False
    name: str = "scripted"
    needs: Needs = field(default_factory=Needs)
    seen: list[Message] = field(default_factory=list)

    def evaluate(self, msg: Message, env: Envelope, ctx: MessageContext) -> Verdict:
        self.seen.append(msg)
        if self.block is not None:
            if self.cooperative:
                while not self.block.wait(0.01):
                    ctx.budget.check("scripted loop")
            else:
                self.block.wait(30)
        if self.error is not None:
            raise self.error
        return self.verdict


@pytest.fixture
def runner() -> Iterator[Runner]:
    r = Runner(ServiceContext(Settings()))
    yield r
    r.close()


def stage(engine: Scripted, **settings: object) -> Stage:
    return Stage(engine.name, engine, replace(MilterSettings(), **settings))  # type: ignore[arg-type]


def run(runner: Runner, engine: Scripted, **settings: object) -> pipeline.StageResult:
    return runner.run(stage(engine, **settings), Message.from_bytes(RAW), ENV)


@pytest.mark.expect_log("WARNING", "time budget")
def test_budget_overrun_tempfails_by_default_without_waiting_for_the_engine(
    runner: Runner,
) -> None:
    release = threading.Event()
    engine = Scripted(Verdict(Action.REJECT), block=release)
    result = run(runner, engine, budget=Duration(0.2))
    release.set()
    assert result.outcome == "timeout"
    assert result.verdict.action is Action.TEMPFAIL
    assert result.verdict.reply == BUDGET_EXCEEDED


@pytest.mark.expect_log("WARNING", "time budget")
def test_budget_overrun_can_accept_when_the_admin_says_so(runner: Runner) -> None:
    release = threading.Event()
    result = run(runner, Scripted(block=release), budget=Duration(0.2), on_timeout=OnError.ACCEPT)
    release.set()
    assert result.outcome == "timeout"
    assert result.verdict.action is Action.ACCEPT


@pytest.mark.expect_log("WARNING", "scripted loop")
def test_a_cooperative_engine_names_the_step_that_ran_out(runner: Runner) -> None:
    engine = Scripted(block=threading.Event(), cooperative=True)
    result = run(runner, engine, budget=Duration(0.2))
    assert result.outcome == "timeout"
    assert "exceeded in scripted loop" in result.verdict.reason


@pytest.mark.expect_log("WARNING", "store")
def test_store_failure_gets_on_error_tempfail_with_a_local_fault_reply(runner: Runner) -> None:
    engine = Scripted(error=StoreUnavailable("redis down"))
    result = run(runner, engine, on_error=OnError.TEMPFAIL)
    assert result.outcome == "error"
    assert result.verdict.action is Action.TEMPFAIL
    assert result.verdict.reply == SERVICE_UNAVAILABLE
    assert result.verdict.reason.startswith("store:")


@pytest.mark.expect_log("WARNING", "bug")
def test_a_bug_with_on_error_accept_lets_the_message_through_unchanged(runner: Runner) -> None:
    result = run(runner, Scripted(error=ZeroDivisionError("oops")))
    assert result.verdict.action is Action.ACCEPT
    assert result.verdict.header_edits == ()
    assert result.engine_verdict is None


def test_warn_mode_turns_a_reject_into_a_warning_header(runner: Runner) -> None:
    engine = Scripted(Verdict(Action.REJECT, reason="rule 3"))
    result = run(runner, engine, mode=Mode.WARN)
    assert result.engine_verdict is not None
    assert result.engine_verdict.action is Action.REJECT
    assert result.verdict.action is Action.ADD_HEADER
    assert result.verdict.header_edits[-1].name == "X-Postwarden-Warn"
    assert "would reject: rule 3" in result.verdict.header_edits[-1].value


def test_scan_stops_at_the_first_final_action_and_later_milters_see_earlier_edits(
    runner: Runner,
) -> None:
    first = Scripted(
        Verdict(
            Action.ADD_HEADER,
            header_edits=(
                HeaderEdit(HeaderOp.ADD, "X-First", "1"),
                HeaderEdit(HeaderOp.DELETE, "Subject"),
            ),
        ),
        name="first",
    )
    second = Scripted(Verdict(Action.REJECT), name="second")
    third = Scripted(name="third")
    stages = [stage(first), stage(second), stage(third)]
    result = pipeline.scan(runner, stages, RAW, ENV, "m.eml")
    assert result.action is Action.REJECT
    assert [r.name for r in result.results] == ["first", "second"]
    assert third.seen == []
    seen = second.seen[0]
    assert seen.get("X-First") == "1"
    assert seen.get("Subject") == ""


def test_scan_caps_the_body_per_milter_as_the_adapter_does(runner: Runner) -> None:
    engine = Scripted()
    pipeline.scan(runner, [stage(engine, max_body_size=Size(4))], RAW, ENV)
    msg = engine.seen[0]
    assert msg.body == b"body"
    assert msg.truncated and msg.body_size == len(b"body line\r\n")


def test_strongest_non_final_action_wins_when_nobody_rejects() -> None:
    verdicts = [Verdict(Action.ADD_HEADER), Verdict(Action.QUARANTINE), Verdict()]
    assert pipeline.combine(verdicts) is Action.QUARANTINE


def test_budget_check_raises_once_the_deadline_passes() -> None:
    ctx = MessageContext.offline(budget=0.0)
    with pytest.raises(BudgetExceeded, match="in step"):
        ctx.budget.check("step")


def test_every_registered_milter_has_a_settings_block_and_a_documented_one() -> None:
    settings = Settings().milters.by_name()
    text = (REPO / "deploy" / "postwarden.yaml").read_text(encoding="utf-8")
    shipped = yaml.safe_load(text)["milters"]
    for name in registry.names():
        assert name in settings, f"milters.{name} has no settings field"
        assert name in shipped, f"deploy/postwarden.yaml has no milters.{name} block"


def test_registry_orders_milters_by_position() -> None:
    specs = list(registry.specs().values())
    assert [s.position for s in specs] == sorted(s.position for s in specs)
    assert specs[0].name == "headers"


def test_noop_builds_only_when_enabled() -> None:
    spec = registry.specs()["noop"]
    assert spec.build(ServiceContext(Settings())) is None
    on = load_config_text("milters: {noop: {enabled: true}}")
    assert spec.build(ServiceContext(on)) is not None


def test_an_insert_index_counts_postfix_hidden_received_header() -> None:
    # headers' PREPEND above the milter's header i is insert index i + 1
    # (Postfix's own Received: is hidden from milters but counted), so the
    # next milter sees it right above that header, as under Postfix.
    msg = Message.from_bytes(b"A: 1\r\nB: 2\r\nC: 3\r\n\r\n")
    edits = (
        HeaderEdit(HeaderOp.INSERT, "X-Above-C", "x", 2 + pipeline.HIDDEN_TOP_HEADERS),
        HeaderEdit(HeaderOp.INSERT, "X-Top", "y", 0),
    )
    seen = pipeline.apply_edits(msg, Verdict(Action.ADD_HEADER, header_edits=edits))
    assert [h.name for h in seen.headers] == ["X-Top", "A", "B", "X-Above-C", "C"]
