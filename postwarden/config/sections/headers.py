"""`milters.headers`: Postfix header_checks/body_checks files and YAML rules.

Table files are read unchanged (regexp_table(5); pcre_table(5) for files
ending in `.pcre` or when `table_type: pcre`). The four table lists mirror
Postfix's parameters of the same names (header_checks(5)); like Postfix,
`mime_header_checks` and `nested_header_checks` default to `header_checks`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

import re2

from postwarden.config.errors import FieldProblem, Finding
from postwarden.config.fields import setting
from postwarden.config.sections.common import MilterSettings, Mode
from postwarden.config.units import Duration, FilePath, Size

# The actions cleanup(8) knows (header_checks(5) "ACTIONS").
RULE_ACTIONS = (
    "REJECT",
    "DISCARD",
    "HOLD",
    "WARN",
    "INFO",
    "PREPEND",
    "REPLACE",
    "IGNORE",
    "STRIP",
    "DUNNO",
    "OK",
    "REDIRECT",
    "BCC",
    "FILTER",
    "PASS",
)


class TableType(StrEnum):
    REGEXP = "regexp"
    PCRE = "pcre"


class Scope(StrEnum):
    """Which mail a YAML rule looks at.

    inbound: the client neither authenticated nor sits in trusted_networks;
    outbound: it did one of the two; authenticated: SASL login only.
    """

    ANY = "any"
    INBOUND = "inbound"
    OUTBOUND = "outbound"
    AUTHENTICATED = "authenticated"


class Form(StrEnum):
    """Which form of a header/body line a YAML rule is tested against."""

    RAW = "raw"
    DECODED = "decoded"
    BOTH = "both"


@dataclass(frozen=True, slots=True)
class HeaderRule:
    """One rule written in YAML instead of a Postfix table line."""

    name: str = setting("", doc="shown in logs instead of rules[N]")
    header: str = setting("", doc='header name ("*" = every header, matched as "Name: value")')
    body: bool = setting(False, doc="match body lines instead of a header")
    match: str = setting("", doc="RE2 regular expression, searched anywhere in the value")
    case_sensitive: bool = setting(False)
    action: str = setting("WARN", doc="a header_checks(5) action: REJECT, HOLD, PREPEND, ...")
    text: str = setting("", doc="the action's text (reply, header, address)")
    form: Form = setting(Form.BOTH)
    scope: Scope = setting(Scope.ANY)
    senders: tuple[str, ...] = setting(factory=tuple, doc="RE2 patterns on MAIL FROM; any")
    recipients: tuple[str, ...] = setting(factory=tuple, doc="RE2 patterns on RCPT TO; any")
    mode: Mode = setting(Mode.ENFORCE)

    def validate_node(self) -> list[Finding]:
        problems: list[Finding] = []
        if bool(self.header) == self.body:
            where = "body" if self.body else "header"
            problems.append(FieldProblem(where, 'give either header: NAME (or "*") or body: true'))
        if self.header and self.header != "*" and not re.fullmatch(r"[!-9;-~]+", self.header):
            problems.append(FieldProblem("header", f"{self.header!r} is not a header name"))
        if not self.match:
            problems.append(FieldProblem("match", "a regular expression is required"))
        verb = self.action.strip().split(None, 1)[0].upper() if self.action.strip() else ""
        if verb not in RULE_ACTIONS:
            problems.append(
                FieldProblem("action", f"{self.action!r} is not one of {', '.join(RULE_ACTIONS)}")
            )
        if verb in ("PREPEND", "REPLACE") and self.header and ":" not in self.text:
            problems.append(FieldProblem("text", f"{verb} needs text like 'X-Name: value'"))
        if verb in ("REDIRECT", "BCC") and "@" not in self.text:
            problems.append(
                FieldProblem("text", f"{verb} needs an address like user@example.com in text")
            )
        patterns = [("match", self.match)]
        patterns += [(f"senders[{i}]", p) for i, p in enumerate(self.senders)]
        patterns += [(f"recipients[{i}]", p) for i, p in enumerate(self.recipients)]
        for label, pattern in patterns:
            if pattern and (why := re2_problem(pattern)):
                problems.append(
                    FieldProblem(label, f"{pattern!r} is not a valid RE2 pattern: {why}")
                )
        return problems


def re2_problem(pattern: str) -> str:
    opts = re2.Options()
    opts.log_errors = False
    try:
        re2.compile(pattern, opts)
    except re2.error as exc:
        return str(exc.args[0] if exc.args else exc).strip("b'\"")
    return ""


@dataclass(frozen=True, slots=True)
class HeadersMilterSettings(MilterSettings):
    header_checks: tuple[FilePath, ...] = setting(factory=tuple)
    mime_header_checks: tuple[FilePath, ...] | None = setting(None, doc="none = header_checks")
    nested_header_checks: tuple[FilePath, ...] | None = setting(None, doc="none = header_checks")
    body_checks: tuple[FilePath, ...] = setting(factory=tuple)
    table_type: TableType = setting(TableType.REGEXP, doc="syntax of files not ending .pcre")
    rules: tuple[HeaderRule, ...] = setting(factory=tuple)
    strict: bool = setting(False, doc="refuse to start on a table line Postfix would skip")
    decoded_matching: bool = setting(True, doc="also match RFC 2047-decoded, unfolded headers")
    decoded_body: bool = setting(True, doc="also match decoded text parts (QP/base64, HTML)")
    header_size_limit: Size = setting(Size(102400), min=1024, doc="Postfix header_size_limit")
    line_length_limit: int = setting(2048, min=80, doc="Postfix line_length_limit")
    body_checks_size_limit: Size = setting(Size(51200), min=0, doc="per body part, as Postfix")
    fallback_timeout: Duration = setting(Duration(0.25), min=0.01, max=10)
    filter_header: str = setting("", doc="FILTER: add this header with the target; empty = log")
    warn_header: str = setting("X-Postwarden-Warn", doc="header a mode: warn rule adds")
