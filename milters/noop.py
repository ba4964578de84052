"""Diagnostic milter: accepts every message and stamps one header.

It exists to check the wiring (Postfix reaches the socket, headers come back)
and to measure what the adapter itself costs per message. It reads nothing
but the queue ID, so it asks Postfix for no headers and no body.
"""

from __future__ import annotations

from milters.engine import Needs
from milters.message import Envelope, HeaderEdit, HeaderOp, Message, Verdict
from postwarden.config.errors import ConfigProblem
from postwarden.config.schema import Settings

HEADER = "X-Postwarden-Noop"


class NoopEngine:
    name = "noop"
    needs = Needs(headers=False, body=False, add_headers=True)

    def evaluate(self, msg: Message, env: Envelope) -> Verdict:
        return Verdict(
            header_edits=(HeaderEdit(HeaderOp.ADD, HEADER, env.queue_id or "unknown"),),
            reason="noop",
        )


def build(settings: Settings, problems: list[ConfigProblem]) -> NoopEngine | None:
    return NoopEngine()
