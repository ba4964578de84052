"""Regex rules from YAML (`milters.spam.rules`): one symbol per rule.

Matched against decoded text (RFC 2047 headers unfolded; body parts decoded
from QP/base64, HTML reduced to text) with RE2, the linear-time engine the
headers milter uses, so no rule can take exponential time on crafted input.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import re2

from milters.context import ServiceContext
from milters.spam.checks.api import Check, CheckContext, CheckSpec, SymbolHit
from milters.spam.view import MessageView
from postwarden.config.sections.spam import SpamMilterSettings


@dataclass(frozen=True)
class _Rule:
    symbol: str
    header: str
    pattern: object  # re2._Regexp


def build(ctx: ServiceContext, settings: SpamMilterSettings) -> Check | None:
    rules: list[_Rule] = []
    for n, r in enumerate(settings.rules):
        opts = re2.Options()
        opts.log_errors = False
        opts.case_sensitive = r.case_sensitive
        try:
            pattern = re2.compile(r.match, opts)
        except re2.error as exc:  # validated at load; a second guard costs nothing
            ctx.problem("", 0, f"milters.spam.rules[{n}].match", str(exc))
            continue
        rules.append(_Rule(r.symbol, r.header.lower(), pattern))
    if not rules:
        return None

    def regex_rules(view: MessageView, cctx: CheckContext) -> Iterator[SymbolHit]:
        """Each rule whose pattern is found in its header's decoded values or the text."""
        for rule in rules:
            subjects = view.headers.get(rule.header, []) if rule.header else [view.text]
            for text in subjects:
                m = rule.pattern.search(text)  # type: ignore[attr-defined]
                if m is not None:
                    yield SymbolHit(rule.symbol, (m.group(0)[:40],))
                    break

    return regex_rules


CHECK = CheckSpec(name="regex_rules", build=build, symbols={})
