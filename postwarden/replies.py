"""Every SMTP reply postwarden sends, in one catalogue.

A reply is a basic code (RFC 5321 section 4.2) plus an enhanced status code
(RFC 3463); the classes must agree (4xx with 4.x.x, 5xx with 5.x.x), and a qa
test checks each entry. Engines and checks take replies from here, optionally
with their own text, so an admin reading a bounce can grep the source for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def printable(text: str, limit: int = 300) -> str:
    """Text fit for a reply or header: printable ASCII, one line, bounded.

    Parts of replies come from the client (addresses, HELO) or the sender's
    DNS (SPF explanations); a control character or newline there must not
    reach Postfix, which ends a policy reply at the first newline
    (SMTPD_POLICY_README).
    """
    if not (text.isascii() and text.isprintable()):
        text = _UNPRINTABLE.sub(" ", text)
    return text.strip()[:limit]


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str
    text: str

    def __post_init__(self) -> None:
        if not 400 <= self.code <= 599:
            raise ValueError(f"reply code {self.code} is not a 4xx/5xx code")
        if not _ENHANCED.match(self.enhanced) or self.enhanced[0] != str(self.code)[0]:
            raise ValueError(f"enhanced code {self.enhanced!r} does not match {self.code}")

    @property
    def temporary(self) -> bool:
        return self.code < 500

    def with_text(self, text: str) -> Reply:
        return replace(self, text=text)

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


# Generic policy outcomes.
REJECT = Reply(550, "5.7.1", "Message rejected by policy")
TEMPFAIL = Reply(451, "4.7.1", "Try again later")
# on_error: tempfail — a local fault, not the client's (RFC 3463 4.3.0/4.3.5).
SERVICE_UNAVAILABLE = Reply(451, "4.3.0", "Temporary local problem, please try again later")
# A milter's time budget ran out (on_timeout: tempfail): local and temporary.
BUDGET_EXCEEDED = Reply(451, "4.3.0", "Message not checked in time, please try again later")
# Message content.
CONTENT_REJECTED = Reply(554, "5.7.1", "Message content rejected")
# Attachments: 5.7.1 "delivery not authorized, message refused" (RFC 3463);
# the milter puts the file name and the class (or the virus) in the text.
ATTACHMENT_REJECTED = Reply(550, "5.7.1", "Message refused: attachment not allowed")
VIRUS_REJECTED = Reply(550, "5.7.1", "Message refused: virus found")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
# SPF (RFC 7372 registers 5.7.23 for SPF validation failure; 4.4.3 is a DNS fault).
SPF_FAIL = Reply(550, "5.7.23", "SPF validation failed")
SPF_TEMPERROR = Reply(451, "4.4.3", "SPF temporary error, please try again later")
SPF_PERMERROR = Reply(550, "5.7.24", "SPF validation error")
SPF_FAIL_DEFER = Reply(450, "4.7.23", "SPF validation failed, please try again later")
SPF_PERMERROR_DEFER = Reply(451, "4.7.24", "SPF validation error, please try again later")
# DMARC (RFC 7489 section 6.6.3): "5.7.1" as OpenDMARC rejects; the text
# names the policy so the sender's admin knows what to fix.
DMARC_REJECT = Reply(550, "5.7.1", "Email rejected per DMARC policy")
# Greylisting: 4.7.1 "delivery not authorized" temporary, as postgrey answers.
GREYLISTED = Reply(450, "4.7.1", "Greylisted, please try again later")
# Rate limits.
RATE_LIMITED = Reply(450, "4.7.1", "Rate limit exceeded, please try again later")
RATE_LIMITED_PERMANENT = Reply(550, "5.7.1", "Rate limit exceeded")
# Sender/login mismatch: 5.7.1 "not authorized"; 553 as Postfix's
# reject_sender_login_mismatch answers.
SENDER_LOGIN_MISMATCH = Reply(553, "5.7.1", "Sender address not owned by login")

CATALOGUE: dict[str, Reply] = {
    name: value for name, value in globals().items() if isinstance(value, Reply)
}
