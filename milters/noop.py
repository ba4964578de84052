"""Diagnostic milter: accepts every message and stamps one header.

It exists to check the wiring (Postfix reaches the socket, headers come back,
a symbol reaches the metrics) and to measure what the adapter itself costs
per message. It reads nothing but the queue ID, so it asks Postfix for no
headers and no body.
"""

from __future__ import annotations

from milters.context import MessageContext, ServiceContext
from milters.engine import MilterSpec, Needs
from milters.message import Envelope, HeaderEdit, HeaderOp, Message, Symbol, Verdict

HEADER = "X-Postwarden-Noop"
# Scores nothing; shows in `scan` output and postwarden_milter_symbols_total.
SYMBOL = Symbol("NOOP_SEEN", 0.0, "the noop milter saw this message")


class NoopEngine:
    name = "noop"
    needs = Needs(headers=False, body=False, add_headers=True)

    def evaluate(self, msg: Message, env: Envelope, ctx: MessageContext) -> Verdict:
        return Verdict(
            header_edits=(HeaderEdit(HeaderOp.ADD, HEADER, env.queue_id or "unknown"),),
            reason="noop",
            symbols=(SYMBOL,),
        )


def build(ctx: ServiceContext) -> NoopEngine | None:
    return NoopEngine() if ctx.settings.milters.noop.enabled else None


MILTER = MilterSpec(
    name="noop",
    build=build,
    position=90,
    description="diagnostic: accepts everything and stamps X-Postwarden-Noop",
)
