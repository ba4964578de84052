"""The types a spam check is made of (see milters/spam/checks/__init__.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from milters.message import Envelope

if TYPE_CHECKING:
    from milters.context import MessageContext, ServiceContext
    from milters.spam.view import MessageView
    from postwarden.config.sections.spam import SpamMilterSettings


@dataclass(frozen=True, slots=True)
class SymbolDef:
    """A symbol's shipped default: score and one-line description.

    Admins override either one by one under `milters.spam.symbols.NAME`.
    """

    score: float
    description: str


@dataclass(frozen=True, slots=True)
class SymbolHit:
    """One symbol a check found.

    `name` must be one of the check's `symbols`. The symbol's score is its
    configured score times `weight` (Rspamd's dynamic weight: Bayes can say
    0.6 for "60 % sure"; DNSBL return codes map to different symbols instead).
    `options` are shown as `NAME(score){opt1,opt2}` (the list, the URL ...).
    """

    name: str
    options: tuple[str, ...] = ()
    weight: float = 1.0


@dataclass
class CheckContext:
    """What a check gets besides the message view.

    `message` gives the time budget, Redis (`message.store`, raises
    StoreUnavailable), DNS (`message.resolver`), clock and stats counters;
    `outbound` is True for authenticated or trusted-network senders;
    `facts` lets a check leave something for later checks in the same scan
    (e.g. authentication results parsed once) -- per message, never shared.
    """

    env: Envelope
    message: MessageContext
    settings: SpamMilterSettings
    outbound: bool = False
    facts: dict[str, object] = field(default_factory=dict)


Check = Callable[["MessageView", "CheckContext"], Iterable[SymbolHit]]
"""A built check: a callable `(view, ctx) -> Iterable[SymbolHit]` (may yield none).

It may call `ctx.message.budget.check(where)` between slow steps and may
raise StoreUnavailable (the engine records STORE_UNAVAILABLE{check} and goes
on); any other exception is a bug: the engine logs it, records
CHECK_ERROR{check} and goes on with the other checks.
"""

CheckBuilder = Callable[["ServiceContext", "SpamMilterSettings"], "Check | None"]


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One row of the check table.

    `build` runs once per process (compile rules, read files; report
    problems with `ctx.problem(...)`) and returns the check, or None when
    it is switched off. `symbols` are the defaults of every symbol the check
    can emit. `network` checks (DNS, Redis) run after the local ones, with
    what is left of the budget.
    """

    name: str
    build: CheckBuilder
    symbols: Mapping[str, SymbolDef]
    network: bool = False
