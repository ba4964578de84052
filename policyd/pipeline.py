"""The ordered table of policy checks, and how their answers combine.

Postfix asks once per SMTP stage (usually RCPT, once per recipient). Checks
run in `policyd.order`; the first decisive answer (REJECT, DEFER, HOLD, OK,
...) wins and ends the pipeline (Postfix SMTPD_ACCESS_README: first match
wins). A check in `mode: warn` never decides: its would-be answer is logged
and turned into a PREPENDed warning header. With no decisive answer the
first PREPEND (if any) is returned, else DUNNO, so later Postfix
restrictions still run.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from policyd.check import Builder, BuiltCheck, CheckContext
from policyd.decision import DUNNO, Decision, Verb
from policyd.protocol import PolicyRequest
from policyd.registry import specs
from postwarden import metrics
from postwarden.config.errors import ConfigProblem
from postwarden.config.schema import Mode, Settings

log = logging.getLogger("postwarden.policyd")


def builders() -> dict[str, Builder]:
    """Name -> builder, for every check this version serves (from the registry)."""
    return {name: spec.build for name, spec in specs().items()}


def build_pipeline(settings: Settings, problems: list[ConfigProblem]) -> list[BuiltCheck]:
    """The checks of `policyd.order`, built; problems go to `problems`."""
    table = builders()
    checks = []
    for i, name in enumerate(settings.policyd.order):
        build = table.get(name)
        if build is None:  # a settings block without its check module
            why = f"check {name!r} is not part of this version"
            problems.append(settings.locations.problem(f"policyd.order[{i}]", why))
            continue
        built = build(settings, problems)
        if built is not None:
            checks.append(built)
    return checks


@dataclass(frozen=True)
class Outcome:
    """The pipeline's answer plus what each check said, for the log line."""

    decision: Decision
    trail: tuple[tuple[str, str], ...] = ()


class PendingHeaders:
    """Headers a message still owes, keyed by Postfix's `instance`.

    A policy reply carries one action, so one PREPEND per request. When
    several checks want a header, or a decisive answer for one recipient
    (say a greylist DEFER) displaces a Received-SPF header, the rest wait
    here and go out with the next non-decisive reply for the same message.
    Bounded: the oldest messages are forgotten first.
    """

    def __init__(self, limit: int = 10000) -> None:
        self.limit = limit
        self._by_instance: OrderedDict[str, list[Decision]] = OrderedDict()

    def take(self, instance: str) -> list[Decision]:
        return self._by_instance.pop(instance, []) if instance else []

    def keep(self, instance: str, headers: list[Decision]) -> None:
        if not instance or not headers:
            return
        self._by_instance[instance] = headers
        self._by_instance.move_to_end(instance)
        while len(self._by_instance) > self.limit:
            self._by_instance.popitem(last=False)


def _pending(ctx: CheckContext) -> PendingHeaders:
    pending = ctx.state.get("pipeline.pending_headers")
    if not isinstance(pending, PendingHeaders):
        pending = PendingHeaders()
        ctx.state["pipeline.pending_headers"] = pending
    return pending


async def evaluate(checks: Sequence[BuiltCheck], req: PolicyRequest, ctx: CheckContext) -> Outcome:
    """Run the checks that apply to this stage; first decisive answer wins."""
    headers: list[Decision] = []
    trail: list[tuple[str, str]] = []
    pending = _pending(ctx)
    for check in checks:
        if req.protocol_state not in check.states:
            continue
        started = time.perf_counter()
        decision = await check.run(req, ctx)
        metrics.CHECK_LATENCY.labels(check.name).observe(time.perf_counter() - started)
        if decision is None or decision.verb is Verb.DUNNO:
            continue
        if not decision.check:
            decision = replace(decision, check=check.name)
        if check.mode is Mode.WARN and decision.verb.decisive:
            would = decision.action_line()
            trail.append((check.name, f"warn:{decision.verb.value}"))
            header = f"{ctx.settings.policyd.warn_header}: {check.name} would {would}"
            headers.append(
                Decision(
                    Verb.PREPEND,
                    header=header,
                    check=check.name,
                    reason=f"warn mode: {decision.reason}",
                )
            )
            continue
        trail.append((check.name, decision.verb.value))
        if decision.verb.decisive:
            pending.keep(req.instance, pending.take(req.instance) + headers)
            return Outcome(decision, tuple(trail))
        if decision.verb is Verb.PREPEND:
            headers.append(decision)
    owed = pending.take(req.instance) + headers
    if not owed:
        return Outcome(DUNNO, tuple(trail))
    pending.keep(req.instance, owed[1:])
    return Outcome(owed[0], tuple(trail))
