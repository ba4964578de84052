"""The one path from a message to what Postfix does with it.

Both front ends call this module: `milters.adapter` (one milter per process,
under Postfix) through `Runner.run`, and `postwarden scan` (every enabled
milter in one process) through `scan`. Everything that decides the outcome
lives here, so the two cannot disagree:

- the per-message time budget (`budget`, `on_timeout`): the engine runs on a
  worker thread and the caller waits at most the budget, so a slow rule can
  never outlast Postfix's `milter_content_timeout` and let
  `milter_default_action` decide (ARCHITECTURE.md principle 7);
- `on_error`: Redis or DNS away, or a bug, gives the configured fallback,
  counted and logged once per interval, never an exception to libmilter;
- `mode: warn`: nothing a milter on trial decides may lose or alter mail;
- the body cap (`max_body_size`) for `scan` (the adapter caps while receiving);
- combining milters as Postfix does: the first reject, tempfail or discard
  ends the message; later milters see the header edits of earlier ones
  (Postfix re-reads the queue file for each milter; MILTER_README).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from milters.context import MessageContext, ServiceContext
from milters.engine import Engine
from milters.message import Action, Envelope, Header, HeaderEdit, HeaderOp, Message, Verdict
from postwarden import logs, metrics
from postwarden.budget import Budget, BudgetExceeded
from postwarden.config.schema import MilterSettings, Mode, OnError
from postwarden.errors import ResolverUnavailable, StoreUnavailable
from postwarden.replies import BUDGET_EXCEEDED, SERVICE_UNAVAILABLE

log = logging.getLogger("postwarden.milter")

WARN_HEADER = "X-Postwarden-Warn"
# Postfix hides its own Received: header from smtpd milters but counts it in
# an insert index (measured with Postfix 3.7: insheader(0) lands above it;
# chgheader occurrence numbers do not count it). So "above the milter's
# header i" is insert index i + 1, and insert index n lands at position
# n - 1 of the headers a milter sees.
HIDDEN_TOP_HEADERS = 1
# After the deadline, how long a cooperative engine gets to raise
# BudgetExceeded itself, so the log names the slow step (a rule, a zone).
NAMING_GRACE = 0.05
# Worker threads per milter process; more than libmilter's concurrent sessions
# would only queue. Abandoned (overrun) evaluations hold a worker until their
# next budget check, so the pool also bounds what a slow message can take.
WORKERS = 32


@dataclass(frozen=True)
class Stage:
    """One milter ready to run: engine and its settings, swapped together on reload."""

    name: str
    engine: Engine
    settings: MilterSettings


@dataclass(frozen=True)
class StageResult:
    """What one milter did to one message.

    `verdict` is what Postfix sees (after warn mode, on_error, on_timeout);
    `engine_verdict` is what the engine itself returned (None when it failed).
    `outcome` is `ok`, `error` or `timeout`.
    """

    name: str
    verdict: Verdict
    engine_verdict: Verdict | None = None
    outcome: str = "ok"
    error: str = ""
    seconds: float = 0.0


class Runner:
    """Runs stages for one process: a worker pool and the service context."""

    def __init__(self, service: ServiceContext, workers: int = WORKERS) -> None:
        self.service = service
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="engine"
        )
        self.errors = logs.RateLimitedLog(log, interval=60.0)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run(
        self,
        stage: Stage,
        msg: Message,
        env: Envelope,
        *,
        shared: dict[str, object] | None = None,
    ) -> StageResult:
        """Decide one message with one milter, within its budget. Never raises."""
        s = stage.settings
        budget = Budget(float(s.budget))
        ctx = MessageContext(
            self.service,
            budget,
            queue_id=env.queue_id,
            message_id=msg.message_id,
            shared=shared if shared is not None else {},
        )
        # The worker thread logs with the caller's queue ID and Message-ID.
        call = contextvars.copy_context().run
        try:
            future = self._pool.submit(call, stage.engine.evaluate, msg, env, ctx)
        except RuntimeError as exc:  # pool shut down (process stopping)
            return self.failed(stage, exc, budget)
        try:
            verdict = future.result(timeout=budget.remaining() + NAMING_GRACE)
        except (concurrent.futures.TimeoutError, BudgetExceeded) as exc:
            future.cancel()
            return self._timed_out(stage, exc, budget)
        except Exception as exc:
            return self.failed(stage, exc, budget)
        seconds = budget.seconds - budget.remaining()
        seen = warn_only(stage.name, verdict) if s.mode is Mode.WARN else verdict
        return StageResult(stage.name, seen, verdict, "ok", "", seconds)

    def _timed_out(self, stage: Stage, exc: BaseException, budget: Budget) -> StageResult:
        where = exc.where if isinstance(exc, BudgetExceeded) and exc.where else "engine"
        metrics.MILTER_ERRORS.labels(stage.name, "timeout").inc()
        self.service.stats.add(f"milter.{stage.name}.error.timeout")
        on = stage.settings.on_timeout
        log.warning(
            "milter %s: time budget of %.1fs exceeded in %s; on_timeout=%s",
            stage.name,
            budget.seconds,
            where,
            on.value,
        )
        reason = f"time budget {budget.seconds:g}s exceeded in {where}; on_timeout={on.value}"
        if on is OnError.TEMPFAIL:
            verdict = Verdict(Action.TEMPFAIL, reason=reason, reply=BUDGET_EXCEEDED)
        else:
            verdict = Verdict(Action.ACCEPT, reason=reason)
        return StageResult(stage.name, verdict, None, "timeout", reason, budget.seconds)

    def failed(self, stage: Stage, exc: BaseException, budget: Budget | None = None) -> StageResult:
        """The on_error outcome for a failure (also one recorded before end of data)."""
        budget = budget or Budget(float(stage.settings.budget))
        kind = failure_kind(exc)
        metrics.MILTER_ERRORS.labels(stage.name, kind).inc()
        self.service.stats.add(f"milter.{stage.name}.error.{kind}")
        log.debug("milter %s failed", stage.name, exc_info=exc)
        on = stage.settings.on_error
        self.errors.warning(kind, "milter %s: %s: %s; on_error=%s", stage.name, kind, exc, on.value)
        reason = f"{kind}: {type(exc).__name__}: {exc}; on_error={on.value}"
        if on is OnError.TEMPFAIL:
            verdict = Verdict(Action.TEMPFAIL, reason=reason, reply=SERVICE_UNAVAILABLE)
        else:
            verdict = Verdict(Action.ACCEPT, reason=reason)
        seconds = budget.seconds - budget.remaining()
        return StageResult(stage.name, verdict, None, "error", reason, seconds)


def failure_kind(exc: BaseException) -> str:
    if isinstance(exc, StoreUnavailable):
        return "store"
    if isinstance(exc, ResolverUnavailable):
        return "dns"
    return "bug"


def warn_only(name: str, verdict: Verdict) -> Verdict:
    """mode: warn — nothing a milter on trial does may lose or alter mail.

    Added headers stay (they only add information); a final action, a body
    rewrite, a changed or deleted header and recipient changes are dropped
    and named in one X-Postwarden-Warn header instead.
    """
    additive = tuple(e for e in verdict.header_edits if e.op in (HeaderOp.ADD, HeaderOp.INSERT))
    withheld: list[str] = []
    if verdict.action not in (Action.ACCEPT, Action.ADD_HEADER, Action.REWRITE_SUBJECT):
        withheld.append(verdict.action.value)
    if len(additive) != len(verdict.header_edits):
        withheld.append("change headers")
    if verdict.new_body is not None:
        withheld.append("rewrite the body")
    if verdict.add_recipients or verdict.remove_recipients:
        withheld.append("change recipients")
    if not withheld:
        return verdict
    text = f"{name} would {', '.join(withheld)}"
    if verdict.reason:
        text += f": {verdict.reason}"
    return Verdict(
        action=Action.ADD_HEADER,
        reason=f"warn mode: {verdict.reason}",
        header_edits=(*additive, HeaderEdit(HeaderOp.ADD, WARN_HEADER, text)),
        symbols=verdict.symbols,
        score=verdict.score,
        required_score=verdict.required_score,
        details=verdict.details,
    )


def combine(verdicts: Sequence[Verdict]) -> Action:
    """Postfix stops at the first milter that rejects, tempfails or discards;
    otherwise the strongest action wins (quarantine over add_header)."""
    action = Action.ACCEPT
    for v in verdicts:
        if v.action.is_final:
            return v.action
        if v.action.severity > action.severity:
            action = v.action
    return action


def apply_edits(msg: Message, verdict: Verdict) -> Message:
    """The message as the next milter sees it after this verdict's edits
    (header edits, body replacement), as Postfix's cleanup applies them."""
    headers = list(msg.headers)
    for e in verdict.header_edits:
        value = e.value
        if e.op is HeaderOp.ADD:
            headers.append(Header(e.name, value))
        elif e.op is HeaderOp.INSERT:
            at = e.index - HIDDEN_TOP_HEADERS
            headers.insert(max(0, min(at, len(headers))), Header(e.name, value))
        else:
            low = e.name.lower()
            seen = 0
            for i, h in enumerate(headers):
                if h.name.lower() == low:
                    seen += 1
                    if seen == e.index:
                        if e.op is HeaderOp.DELETE or not value:
                            del headers[i]
                        else:
                            headers[i] = Header(h.name, value)
                        break
            else:
                if e.op is HeaderOp.CHANGE and value:
                    headers.append(Header(e.name, value))
    body = msg.body if verdict.new_body is None else verdict.new_body
    size = msg.body_size if verdict.new_body is None else len(verdict.new_body)
    truncated = msg.truncated if verdict.new_body is None else False
    return Message(tuple(headers), body, size, truncated)


@dataclass
class PipelineResult:
    """Every milter's result for one message and the combined outcome."""

    file: str
    action: Action
    results: list[StageResult] = field(default_factory=list)

    @property
    def score(self) -> float:
        for r in reversed(self.results):
            if r.verdict.score is not None:
                return r.verdict.score
        return 0.0

    @property
    def required_score(self) -> float | None:
        for r in reversed(self.results):
            if r.verdict.required_score is not None:
                return r.verdict.required_score
        return None


def scan(
    runner: Runner, stages: Sequence[Stage], raw: bytes, env: Envelope, file: str = ""
) -> PipelineResult:
    """Every stage on one message, as Postfix would run the milters in order."""
    full = Message.from_bytes(raw)
    result = PipelineResult(file, Action.ACCEPT)
    shared: dict[str, object] = {}
    with logs.context(queue=env.queue_id, msgid=full.message_id):
        for stage in stages:
            view = _capped(full, int(stage.settings.max_body_size))
            r = runner.run(stage, view, env, shared=shared)
            result.results.append(r)
            if r.verdict.action.is_final:
                break
            full = apply_edits(full, r.verdict)
    result.action = combine([r.verdict for r in result.results])
    return result


def _capped(msg: Message, limit: int) -> Message:
    if len(msg.body) <= limit:
        return msg
    return Message(msg.headers, msg.body[:limit], msg.body_size, True)
