"""Diagnostic milter: accepts every message and stamps one header.

It exists to check the wiring (Postfix reaches the socket, headers come back)
and to measure what the adapter itself costs per message. It reads nothing
but the queue ID, so it asks Postfix for no headers and no body.
"""

from __future__ import annotations

from milters.context import MessageContext, ServiceContext
from milters.engine import MilterSpec, Needs
from milters.message import Envelope, HeaderEdit, HeaderOp, Message, Verdict

HEADER = "X-Postwarden-Noop"


class NoopEngine:
    name = "noop"
    needs = Needs(headers=False, body=False, add_headers=True)

    def evaluate(self, msg: Message, env: Envelope, ctx: MessageContext) -> Verdict:
        return Verdict(
            header_edits=(HeaderEdit(HeaderOp.ADD, HEADER, env.queue_id or "unknown"),),
            reason="noop",
        )


def build(ctx: ServiceContext) -> NoopEngine | None:
    return NoopEngine() if ctx.settings.milters.noop.enabled else None


MILTER = MilterSpec(
    name="noop",
    build=build,
    position=90,
    description="diagnostic: accepts everything and stamps X-Postwarden-Noop",
)
