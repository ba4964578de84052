"""The spam milter: scores a message from many checks and acts by threshold.

engine.py (symbols, score, the decision), checks/ (one module per check, one
table), view.py (the message parsed once), dnsbl.py (DNS list lookups),
actions.py (headers, subject, replies, greylisting), lists.py (allow/block),
profiles.py (threshold sets per recipient, the mixed-recipient rule).
"""

from __future__ import annotations

from milters.context import ServiceContext
from milters.engine import Engine, MilterSpec


def build(ctx: ServiceContext) -> Engine | None:
    from milters.spam.engine import build as build_engine

    return build_engine(ctx)


MILTER = MilterSpec(
    name="spam",
    build=build,
    position=40,
    description="scores the message from many checks and acts by threshold",
    uses_store=True,
    uses_dns=True,
)
