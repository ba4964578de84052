"""Autolearn: teach Bayes the spam milter's clearest verdicts.

SpamAssassin's bayes_auto_learn, with its two safeguards: the score that
decides leaves the Bayes symbols out (Bayes must not teach itself what it
already believes), and a message learned before, by a user's Junk move or
`postwarden learn`, keeps that class (lua/bayes_learn.lua's "autospam" /
"autoham" learn only new messages). The message is remembered by the same
digest `postwarden learn` uses (Message-ID + body), so when a user later
moves an autolearned message into or out of Junk, its tokens move with it.

Not learned: mail the milter did not fully score (allow lists, oversize,
a check that failed or had no Redis), the GTUBE test string and block_from
entries (their verdict is forced, not measured), and outbound mail (with
per-user statistics its recipients are not our users).
"""

from __future__ import annotations

from collections.abc import Sequence

from milters.message import Symbol
from postwarden.bayes.classifier import message_digest
from postwarden.bayes.store import BayesStore, LearnRequest
from postwarden.config.sections.bayes import AutolearnSettings
from postwarden.config.sections.spam import SpamMilterSettings

# A verdict carrying one of these says nothing about the message's content.
NOT_LEARNED = frozenset({
    "GTUBE", "BLOCK_FROM", "ALLOW_FROM", "ALLOW_TO", "SCAN_TRUNCATED", "SCAN_SKIPPED",
    "STORE_UNAVAILABLE", "CHECK_ERROR",
})  # fmt: skip
SYMBOL = {"spam": "BAYES_AUTOLEARN_SPAM", "ham": "BAYES_AUTOLEARN_HAM"}


def rules_score(symbols: Sequence[Symbol]) -> float:
    """The verdict's score without what Bayes added to it."""
    return round(sum(s.score for s in symbols if not s.name.startswith("BAYES_")), 2)


def decide(settings: AutolearnSettings, symbols: Sequence[Symbol]) -> str | None:
    """Which class this verdict teaches: "spam", "ham", or None for neither."""
    if not settings.enabled or any(s.name in NOT_LEARNED for s in symbols):
        return None
    score = rules_score(symbols)
    if score >= settings.spam_score:
        return "spam"
    if score <= settings.ham_score:
        return "ham"
    return None


def teach(store: BayesStore, scope: str, raw: bytes, tokens: Sequence[str], cls: str) -> str:
    """Learn one message (its token ids, as classifier.token_ids gives them)
    as `cls` unless it was learned before; the store's outcome ("learned",
    "known", "kept"), or "empty" for a message with no tokens. Raises
    StoreUnavailable when Redis is away."""
    if not tokens:
        return "empty"
    [outcome] = store.learn([LearnRequest(scope, message_digest(raw), tokens, "auto" + cls)])
    return outcome


def enabled(settings: SpamMilterSettings) -> bool:
    return settings.bayes.enabled and settings.bayes.autolearn.enabled
