"""The shape every milter engine has, and how a milter declares itself.

An engine is built once per process from a `ServiceContext` (settings, clock,
Redis and DNS opened on first use, a sink for build-time problems) and then
called once per message with plain data and a `MessageContext` (the time
budget, the queue ID). It never imports pymilter: `milters.pipeline` calls it
the same way under Postfix (through `milters.adapter`) and in `postwarden
scan`, so the two cannot disagree.

Each milter module declares `MILTER = MilterSpec(...)`; `milters.registry`
finds them. Adding a milter is its module, its settings section (one field
in `MiltersSettings`) and its block in `deploy/postwarden.yaml`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol

from milters.message import Envelope, Message, Verdict

if TYPE_CHECKING:
    from milters.context import MessageContext, ServiceContext


@dataclass(frozen=True, slots=True)
class Needs:
    """What the engine reads and may do; the adapter negotiates only these
    with Postfix (skipped callbacks save a round trip each).

    `headers`/`body`: whether the message content must be sent at all.
    `change_headers`, `change_body`, `change_recipients`, `quarantine`: the
    modification actions the engine may request (SMFIF_* flags).
    """

    headers: bool = True
    body: bool = True
    add_headers: bool = True
    change_headers: bool = False
    change_body: bool = False
    change_recipients: bool = False
    quarantine: bool = False

    def missing(self, wanted: Needs) -> list[str]:
        """What `wanted` asks for beyond these (negotiated) needs: content
        Postfix does not send or actions it would refuse. Both are fixed
        when the milter connects to Postfix, so only a restart adds them."""
        return [
            f.name for f in fields(self) if getattr(wanted, f.name) and not getattr(self, f.name)
        ]


class Engine(Protocol):
    name: str
    needs: Needs

    def evaluate(self, msg: Message, env: Envelope, ctx: MessageContext) -> Verdict:
        """Decide about one message; may raise (the pipeline applies on_error)
        and should call `ctx.budget.check()` between slow steps."""
        ...


# `build(ctx)` returns None when the milter is disabled; problems it survives
# (a bad rule line) go to `ctx.problem(..., severity="warning")`, fatal ones
# with severity "error" (the service then refuses to start).
Builder = Callable[["ServiceContext"], "Engine | None"]


@dataclass(frozen=True, slots=True)
class MilterSpec:
    """One milter as the rest of the suite sees it.

    `position` orders `smtpd_milters` (what `postfix-config` prints and the
    order `scan` runs them in): lower runs first. `uses_store`/`uses_dns` say
    what the service needs at run time (shown by `config check`; a milter
    that uses Redis waits for it at start).
    """

    name: str
    build: Builder
    position: int
    description: str
    uses_store: bool = False
    uses_dns: bool = False
