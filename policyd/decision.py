"""What a policy check answers, and how it becomes Postfix's `action=` line.

Verbs are Postfix access(5) actions as SMTPD_POLICY_README allows them in a
policy reply. A check returns `None` (no opinion, i.e. DUNNO) or a Decision;
the pipeline picks the first decisive one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from postwarden.replies import Reply


class Verb(StrEnum):
    DUNNO = "DUNNO"
    OK = "OK"
    REJECT = "REJECT"  # with a Reply: "550 5.7.1 text"
    DEFER = "DEFER"  # with a Reply: "450 4.7.1 text"
    DEFER_IF_PERMIT = "DEFER_IF_PERMIT"
    DEFER_IF_REJECT = "DEFER_IF_REJECT"
    HOLD = "HOLD"
    DISCARD = "DISCARD"
    PREPEND = "PREPEND"
    WARN = "WARN"

    @property
    def decisive(self) -> bool:
        """Whether this answer ends the pipeline (PREPEND/WARN/DUNNO do not)."""
        return self not in (Verb.DUNNO, Verb.PREPEND, Verb.WARN)


@dataclass(frozen=True, slots=True)
class Decision:
    """One check's answer.

    `reply` carries code, enhanced code and text for REJECT/DEFER (and the
    enhanced code + text for DEFER_IF_PERMIT/DEFER_IF_REJECT). `header` is a
    full `Name: value` line for PREPEND. `reason` is for the log line only.
    `prepend` lets a decisive answer still ask for a header when the pipeline
    ends without a decisive answer elsewhere (non-decisive checks use it).
    """

    verb: Verb
    reply: Reply | None = None
    header: str = ""
    text: str = ""
    reason: str = ""
    check: str = ""

    def action_line(self) -> str:
        """The value after `action=` that Postfix reads (SMTPD_POLICY_README)."""
        v = self.verb
        if v in (Verb.REJECT, Verb.DEFER):
            if self.reply is not None:
                return f"{self.reply.code} {self.reply.enhanced} {self.reply.text}"
            return f"{v.value} {self.text}".rstrip()
        if v in (Verb.DEFER_IF_PERMIT, Verb.DEFER_IF_REJECT):
            if self.reply is not None:
                return f"{v.value} {self.reply.enhanced} {self.reply.text}"
            return f"{v.value} {self.text}".rstrip()
        if v is Verb.PREPEND:
            return f"PREPEND {self.header}"
        if v in (Verb.HOLD, Verb.DISCARD, Verb.WARN, Verb.OK):
            return f"{v.value} {self.text}".rstrip()
        return "DUNNO"


DUNNO = Decision(Verb.DUNNO)
