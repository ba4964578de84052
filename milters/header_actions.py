"""What a matched header_checks/body_checks result does, as Postfix cleanup(8) does it.

Per line (header_checks(5) "TABLE SEARCH ORDER"): the first rule that
matches decides, then the next line is inspected. Across lines, cleanup's
`cleanup_act()` (Postfix 3.7, cleanup_message.c) keeps one state per message:

* REJECT [text]: the reply is `550 <dsn> text` (dsn defaults to 5.7.1; a text
  that starts with a 4.x.x code makes it a temporary `451`); inspection of
  every later header *and body line* stops.
* DISCARD: claim delivery, drop the message; inspection stops.
* REDIRECT user@domain: deliver to that address only; inspection stops. A
  later line can no longer REJECT.
* PASS: inspection stops; the message is accepted as is.
* HOLD: the message goes to the hold queue (milter `quarantine`), inspection
  *continues*, so a later REJECT or DISCARD still wins; only the first HOLD
  is logged.
* WARN, INFO: log and continue. FILTER transport:dest: the last one wins
  (postwarden cannot reroute through a milter: it logs it and, when
  `filter_header` is set, adds that header for a later router).
* BCC user@domain: add a recipient; continue.
* PREPEND "Name: value": insert a header just above the matched one; REPLACE
  "Name: value": swap the header; IGNORE / STRIP: delete it. All continue.
* DUNNO, OK: as if nothing matched.
* Anything else is "unknown command": Postfix logs a warning and the line
  passes untouched. That includes `REJECT` followed by a non-breaking space
  (U+00A0) instead of a space: Postfix splits the action word on ASCII space
  and tab only, so `REJECT\\u00a0text` is one unknown word.

A final action (REJECT/DISCARD) wins over edits: the milter reply drops
them, as cleanup drops the message.

Checked against real Postfix 3.7 with the same table in `header_checks` and
in the milter (tests/integration/test_headers_e2e.py): HOLD then REJECT is
rejected, DISCARD then REJECT is discarded, HOLD then DISCARD is discarded
(not held), REDIRECT then REJECT is redirected, HOLD then REDIRECT is held;
the client sees the same reply text for REJECT 5.x.x and 4.x.x.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from postwarden.replies import Reply

_ISSPACE = " \t\n\v\f\r"
_DSN = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=$|[ \t\n\v\f\r])[ \t\n\v\f\r]*")
_HEADER_LABEL = re.compile(r"^[!-9;-~]+[ \t]*:")
DEFAULT_REJECT_TEXT = "message content rejected"  # cleanup_stat_detail(CLEANUP_STAT_CONT)


class Verb(StrEnum):
    REJECT = "REJECT"
    DISCARD = "DISCARD"
    HOLD = "HOLD"
    WARN = "WARN"
    INFO = "INFO"
    PREPEND = "PREPEND"
    REPLACE = "REPLACE"
    IGNORE = "IGNORE"
    STRIP = "STRIP"
    DUNNO = "DUNNO"
    OK = "OK"
    REDIRECT = "REDIRECT"
    BCC = "BCC"
    FILTER = "FILTER"
    PASS = "PASS"
    UNKNOWN = "UNKNOWN"


class Context(StrEnum):
    HEADER = "header"
    BODY = "body"


@dataclass(frozen=True, slots=True)
class RuleAction:
    """A result string read the way cleanup_act() reads it.

    `problem` says why Postfix would do nothing with it (logged as a warning
    at run time by Postfix; reported at load time by postwarden).
    """

    verb: Verb
    text: str
    raw: str
    problem: str = ""


def parse_action(value: str, context: Context) -> RuleAction:
    """Split on the first ASCII space/tab (strcspn(value, " \\t")) like cleanup_act()."""
    cut = len(value)
    for i, ch in enumerate(value):
        if ch in " \t":
            cut = i
            break
    word = value[:cut]
    text = value[cut:].lstrip(_ISSPACE)
    try:
        verb = Verb(word.upper())
    except ValueError:
        verb = Verb.UNKNOWN
    if verb is Verb.UNKNOWN:
        return RuleAction(verb, text, value, _unknown_reason(word))
    problem = ""
    if verb in (Verb.PREPEND, Verb.REPLACE):
        if not text:
            problem = f"{verb.value} without text does nothing"
        elif context is Context.HEADER and not _HEADER_LABEL.match(text):
            problem = f'{verb.value} text "{text[:40]}" must start with a header name and ":"'
    elif verb in (Verb.REDIRECT, Verb.BCC) and "@" not in text:
        problem = f'{verb.value} needs user@domain, got "{text[:40]}"'
    elif verb is Verb.FILTER and ":" not in text:
        problem = f'FILTER needs transport:destination, got "{text[:40]}"'
    return RuleAction(verb, text, value, problem)


def _unknown_reason(word: str) -> str:
    if "\u00a0" in word:
        head = word.split("\u00a0", 1)[0]
        return (
            f'non-breaking space (U+00A0) after "{head}": Postfix splits the action on plain '
            f'spaces and tabs only, so it sees the unknown action "{word[:30]}..." and lets '
            "the message through"
        )
    if re.fullmatch(r"[245]\d\d", word):
        return (
            f'"{word}" is not a header_checks action (that is access(5) syntax); Postfix logs '
            '"unknown command" and lets the message through; write "REJECT 5.7.1 text"'
        )
    return f'unknown action "{word[:30]}": Postfix logs "unknown command" and lets it through'


def reject_reply(text: str) -> Reply:
    """dsn_prepend("5.7.1", text), then the code smtpd answers with (550 or 451)."""
    body = text or DEFAULT_REJECT_TEXT
    m = _DSN.match(body)
    if m:
        cls, sub, det = m.groups()
        rest = body[m.end() :]
    else:
        cls, sub, det, rest = "5", "7", "1", body
    if cls not in ("4", "5"):
        cls = "4"  # cleanup: "bad DSN action ... need 4.x.x or 5.x.x" -> 4
    code = 550 if cls == "5" else 451
    return Reply(code, f"{cls}.{sub}.{det}", rest)


class LineOutcome(StrEnum):
    KEEP = "keep"
    DROP = "drop"
    REPLACE = "replace"


@dataclass
class Decision:
    """One rule that fired, for the log line and `scan` details."""

    rule: str
    verb: str
    form: str
    where: str
    line: str
    text: str = ""
    note: str = ""
    mode: str = "enforce"

    def as_dict(self) -> dict[str, str]:
        out = {
            "rule": self.rule,
            "action": self.verb,
            "form": self.form,
            "where": self.where,
            "matched": self.line[:200],
        }
        if self.text:
            out["text"] = self.text
        if self.note:
            out["note"] = self.note
        if self.mode != "enforce":
            out["mode"] = self.mode
        return out


@dataclass
class CleanupState:
    """cleanup's per-message flags, as cleanup_act() updates them."""

    filtering: bool = True
    reject: Reply | None = None
    discard: bool = False
    hold: str | None = None
    redirect: str | None = None
    filter: str | None = None
    bcc: list[str] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    final: Decision | None = None

    def act(self, action: RuleAction, context: Context) -> tuple[LineOutcome, str]:
        """Apply one matched result; returns what happens to the line itself."""
        verb = action.verb
        if action.problem and verb is not Verb.UNKNOWN:
            return LineOutcome.KEEP, ""
        if verb is Verb.REJECT:
            self.reject = reject_reply(action.text)
            self.filtering = False
        elif verb is Verb.DISCARD:
            self.discard = True
            self.filtering = False
        elif verb is Verb.PASS:
            self.filtering = False
        elif verb is Verb.HOLD:
            if self.hold is None and not self.discard:
                self.hold = action.text or "held by header_checks"
        elif verb is Verb.REDIRECT:
            self.redirect = action.text
            self.filtering = False
        elif verb is Verb.FILTER:
            self.filter = action.text
        elif verb is Verb.BCC:
            if action.text not in self.bcc:
                self.bcc.append(action.text)
        elif verb in (Verb.IGNORE, Verb.STRIP):
            return LineOutcome.DROP, ""
        elif verb is Verb.REPLACE:
            return LineOutcome.REPLACE, action.text
        return LineOutcome.KEEP, ""
