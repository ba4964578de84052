"""How check answers combine into the one reply Postfix reads."""

from __future__ import annotations

import asyncio

from policyd.check import BuiltCheck, CheckContext
from policyd.decision import Decision, Verb
from policyd.pipeline import evaluate
from policyd.protocol import PolicyRequest, ProtocolState
from postwarden.clock import ManualClock
from postwarden.config.schema import Settings
from postwarden.replies import Reply


def header(name: str) -> BuiltCheck:
    async def run(req: PolicyRequest, ctx: CheckContext) -> Decision | None:
        return Decision(Verb.PREPEND, header=f"X-{name}: yes")

    return BuiltCheck(name, run)


def defer_first_recipient() -> BuiltCheck:
    async def run(req: PolicyRequest, ctx: CheckContext) -> Decision | None:
        if req.recipient.startswith("first"):
            return Decision(Verb.DEFER, reply=Reply(450, "4.7.1", "later"))
        return None

    return BuiltCheck("grey", run)


def rcpt(recipient: str, instance: str = "i1") -> PolicyRequest:
    return PolicyRequest(protocol_state=ProtocolState.RCPT, recipient=recipient, instance=instance)


def answers(checks: list[BuiltCheck], requests: list[PolicyRequest]) -> list[str]:
    ctx = CheckContext(settings=Settings(), store=None, clock=ManualClock())

    async def go() -> list[str]:
        return [(await evaluate(checks, r, ctx)).decision.action_line() for r in requests]

    return asyncio.run(go())


def test_second_header_goes_out_with_the_next_recipient_of_the_same_message() -> None:
    out = answers([header("A"), header("B")], [rcpt("r1@x"), rcpt("r2@x"), rcpt("r3@x")])
    # Each request re-asks for both; the owed B is delivered before the new A.
    assert out[0] == "PREPEND X-A: yes"
    assert out[1] == "PREPEND X-B: yes"


def test_a_header_displaced_by_a_decisive_answer_is_not_lost() -> None:
    once = {"done": False}

    async def spf_like(req: PolicyRequest, ctx: CheckContext) -> Decision | None:
        if once["done"]:
            return None  # like SPF: one header per message
        once["done"] = True
        return Decision(Verb.PREPEND, header="Received-SPF: pass")

    checks = [BuiltCheck("spf", spf_like), defer_first_recipient()]
    out = answers(checks, [rcpt("first@x"), rcpt("second@x")])
    assert out == ["450 4.7.1 later", "PREPEND Received-SPF: pass"]


def test_owed_headers_stay_with_their_own_message() -> None:
    out = answers([header("A"), header("B")], [rcpt("r1@x", "i1"), rcpt("r1@y", "i2")])
    assert out == ["PREPEND X-A: yes", "PREPEND X-A: yes"]
