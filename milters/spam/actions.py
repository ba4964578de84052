"""From a decision to a Verdict: headers, subject, reply, greylisting.

Headers (names configurable, `milters.spam.headers`): on every scanned
message `X-Spam-Score: 7.30` and `X-Spamd-Result: default: False [7.30 / 6.00];
SYMBOL(score){options}; ...` (Rspamd's layout: action flag, score / first
threshold, then every symbol, strongest first); when the message is tagged
also `X-Spam: Yes` and `X-Spam-Flag: YES` (maildrop/Apis). Incoming copies
of all four are deleted first, so a sender cannot pre-mark mail as clean.

Greylisting (NethServer's greylist threshold) shares the policy daemon's
triplets and Lua script (postwarden/store/lua/greylist_check.lua) with the
`policyd.greylist` timings: a triplet that already passed greylisting (at
RCPT or at an earlier DATA) passes; a new one is refused with 451 4.7.1 and
passes on a retry after `delay`. Every recipient's triplet must pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from milters.context import MessageContext
from milters.message import Action, Envelope, HeaderEdit, HeaderOp, Symbol
from milters.spam.greylisting import greylist_pass
from postwarden import replies
from postwarden.config.sections.spam import HeaderNames

OPTIONS_WIDTH = 200  # characters of options per symbol: header lines stay short (RFC 5322 2.1.1)


def format_symbol(s: Symbol) -> str:
    """`NAME(score){opt1,opt2}`; options are printable ASCII (8-bit and
    control characters become '?') and cut to OPTIONS_WIDTH."""
    if not s.options:
        return f"{s.name}({s.score:.2f})"
    text = ",".join(s.options[:10]).replace(";", ",").replace("{", "(").replace("}", ")")
    text = "".join(c if " " <= c <= "~" else "?" for c in text)[:OPTIONS_WIDTH]
    return f"{s.name}({s.score:.2f}){{{text}}}"


def result_header(action: Action, score: float, required: float | None,
                  symbols: Sequence[Symbol]) -> str:  # fmt: skip
    """`default: False [1.20 / 6.00]; action=accept; SYM(1.20){opt}; ...`, folded."""
    flag = "True" if action not in (Action.ACCEPT,) else "False"
    req = f"{required:.2f}" if required is not None else "-"
    parts = [f"default: {flag} [{score:.2f} / {req}]", f"action={action.value}"]
    parts += [format_symbol(s) for s in symbols]
    return ";\r\n\t".join(parts)


def strip_incoming(msg_headers: Sequence[tuple[str, str]], names: HeaderNames) -> list[HeaderEdit]:
    """DELETE edits for every incoming copy of our headers, last first (so the
    indices stay valid whichever way the MTA renumbers)."""
    ours = {n.lower() for n in (names.spam, names.flag, names.score, names.result)}
    counts: dict[str, tuple[str, int]] = {}
    for name, _ in msg_headers:
        low = name.lower()
        if low in ours:
            counts[low] = (name, counts.get(low, (name, 0))[1] + 1)
    edits = []
    for name, n in counts.values():
        edits += [HeaderEdit(HeaderOp.DELETE, name, index=i) for i in range(n, 0, -1)]
    return edits


@dataclass(frozen=True, slots=True)
class Tagging:
    names: HeaderNames
    subject_prefix: str

    def edits(self, action: Action, tags: frozenset[Action], score: float,
              required: float | None, symbols: Sequence[Symbol], subject: str | None,
              ) -> list[HeaderEdit]:  # fmt: skip
        n = self.names
        edits = [HeaderEdit(HeaderOp.ADD, n.score, f"{score:.2f}")]
        edits.append(
            HeaderEdit(HeaderOp.ADD, n.result, result_header(action, score, required, symbols))
        )
        if tags:
            edits.append(HeaderEdit(HeaderOp.ADD, n.spam, "Yes"))
            edits.append(HeaderEdit(HeaderOp.ADD, n.flag, "YES"))
        if Action.REWRITE_SUBJECT in tags and self.subject_prefix:
            if subject is None:
                edits.append(HeaderEdit(HeaderOp.ADD, "Subject", self.subject_prefix.strip()))
            elif not subject.startswith(self.subject_prefix):
                edits.append(HeaderEdit(HeaderOp.CHANGE, "Subject", self.subject_prefix + subject))
        return edits


def reject_reply(score: float) -> replies.Reply:
    return replies.SPAM_REJECT.with_text(f"Message rejected as spam (score {score:.2f})")


def greylist(env: Envelope, ctx: MessageContext) -> tuple[bool, int]:
    """(passed, seconds to wait) for every recipient's triplet."""
    wait = 0
    for rcpt in env.recipients or ("",):
        ok, secs = greylist_pass(env, rcpt, ctx)
        if not ok:
            wait = max(wait, math.ceil(secs))
    return wait == 0, wait
