"""What a policy check is: its context, its built form, and how it declares itself.

Each `policyd/checks/<name>.py` declares `CHECK = CheckSpec(...)` with its
name (the YAML key of its block under `policyd:`), its builder and its
default position; `policyd.registry` finds them. The checks import this
module, never `policyd.pipeline`, so the pipeline can use the registry
without an import cycle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from policyd.decision import Decision
from policyd.protocol import PolicyRequest, ProtocolState
from postwarden.clock import Clock
from postwarden.config.errors import ConfigProblem
from postwarden.config.schema import Mode, Settings
from postwarden.stats import StatBuffer


@dataclass
class CheckContext:
    """What a check may use besides the request: no globals, all passed in.

    `store` is a `postwarden.store.client.AsyncStore` (typed loosely so pure
    checks can be tested with narrower stand-ins of the same shape). Checks
    that need DNS build their resolver from `settings.dns` at build time.
    """

    settings: Settings
    store: object
    clock: Clock
    # Per-process scratch space keyed by check name (e.g. per-instance caches).
    state: dict[str, object] = field(default_factory=dict)
    # Counters for `postwarden stat` (e.g. "greylist.deferred"); flushed in bulk.
    stats: StatBuffer = field(default_factory=StatBuffer)


CheckFn = Callable[[PolicyRequest, CheckContext], Awaitable[Decision | None]]

RCPT_STATES = frozenset({ProtocolState.RCPT})


@dataclass(frozen=True)
class BuiltCheck:
    """A check ready to run: its compiled settings live in `run`'s closure."""

    name: str
    run: CheckFn
    mode: Mode = Mode.ENFORCE
    states: frozenset[ProtocolState] = RCPT_STATES


# `build(settings, problems) -> BuiltCheck | None`: None when disabled;
# problems it can survive (a bad whitelist line) are appended with severity
# "warning", fatal ones with severity "error", placed with
# `settings.locations.problem(key, ...)` at the config line they concern.
Builder = Callable[[Settings, list[ConfigProblem]], BuiltCheck | None]


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One policy check as the rest of the suite sees it.

    `name` is its block's key under `policyd:` (a `CheckSettings` field);
    `position` is where it sits in the default `policyd.order` (lower runs
    first; a qa test keeps the two in step).
    """

    name: str
    build: Builder
    position: int
    description: str
