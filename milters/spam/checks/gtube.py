"""GTUBE: the Generic Test for Unsolicited Bulk Email.

SpamAssassin's published test string; SpamAssassin and Rspamd both treat a
message that contains it as spam, so an admin can test the whole path
(thresholds, actions, headers, Postfix reply) without real spam.
"""

from __future__ import annotations

from collections.abc import Iterable

from milters.context import ServiceContext
from milters.spam.checks.api import Check, CheckContext, CheckSpec, SymbolDef, SymbolHit
from milters.spam.view import MessageView
from postwarden.config.sections.spam import SpamMilterSettings

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def gtube(view: MessageView, ctx: CheckContext) -> Iterable[SymbolHit]:
    """The raw body contains the GTUBE string (looked for undecoded, as SpamAssassin does)."""
    if GTUBE in view.body:
        yield SymbolHit("GTUBE")


def build(ctx: ServiceContext, settings: SpamMilterSettings) -> Check:
    return gtube


CHECK = CheckSpec(
    name="gtube",
    build=build,
    symbols={"GTUBE": SymbolDef(1000.0, "contains the GTUBE test string")},
)
