"""`postwarden learn`: feed messages to the statistics and say what happened.

Each message is remembered by its digest (classifier.message_digest) for
`learned_ttl`: learning it again as the same class does nothing ("already
known"), learning it as the other class moves its tokens ("relearned"), as
SpamAssassin's sa-learn and mox do. Messages go to Redis in batches
(store.LEARN_BATCH per round trip).
"""

from __future__ import annotations

import email.message
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from postwarden.bayes.classifier import message_digest, token_ids
from postwarden.bayes.sources import Found, Item, Skipped
from postwarden.bayes.store import LEARN_BATCH, BayesStore, LearnRequest
from postwarden.bayes.tokens import parse

ACTIONS = ("spam", "ham", "forget")


@dataclass
class LearnSummary:
    action: str
    learned: int = 0
    known: int = 0
    relearned: int = 0
    forgotten: int = 0
    unknown: int = 0  # forget of a message never learned
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return (
            self.learned + self.known + self.relearned + self.forgotten + self.unknown
            + len(self.skipped)
        )  # fmt: skip

    def as_dict(self) -> dict[str, object]:
        return {
            "action": self.action,
            "learned": self.learned,
            "already_known": self.known,
            "relearned": self.relearned,
            "forgotten": self.forgotten,
            "not_learned_before": self.unknown,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def without_subject_tag(msg: email.message.Message, prefix: str) -> None:
    """Take the spam milter's `subject_prefix` ("[SPAM] ") off the Subject,
    as sa-learn takes SpamAssassin's markup off before learning: the milter
    judged the message before tagging it, so its own tag must not become a
    learned word (every tagged message moved to Junk would teach that
    "spam" in a Subject means spam, and mail about spam would pay for it).
    A Subject that was only the tag (the message had none) goes."""
    tag = prefix.strip()
    value = msg.get("Subject")
    if not tag or value is None:
        return
    text = str(value).lstrip()
    if not text.startswith(tag):
        return
    rest = text[len(tag) :].lstrip()
    if rest:
        msg.replace_header("Subject", rest)
    else:
        del msg["Subject"]


def learn(
    store: BayesStore,
    scope: str,
    action: str,
    items: Iterable[Item],
    progress: Callable[[LearnSummary], None] | None = None,
    subject_prefix: str = "",
) -> LearnSummary:
    """Learn (or forget) every message in `items` into `scope`; the spam
    milter's `subject_prefix` is taken off first (without_subject_tag)."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")
    summary = LearnSummary(action)
    pending: list[tuple[str, LearnRequest]] = []

    def flush() -> None:
        outcomes = store.learn([r for _, r in pending])
        for outcome in outcomes:
            if outcome == "learned":
                summary.learned += 1
            elif outcome == "known":
                summary.known += 1
            elif outcome == "relearned":
                summary.relearned += 1
            elif outcome == "forgotten":
                summary.forgotten += 1
            else:
                summary.unknown += 1
        pending.clear()
        if progress is not None:
            progress(summary)

    for item in items:
        if isinstance(item, Skipped):
            summary.skipped.append((item.origin, item.reason))
            continue
        assert isinstance(item, Found)
        try:
            msg = parse(item.raw)
            without_subject_tag(msg, subject_prefix)
            ids = token_ids(msg)
        except (ValueError, LookupError, RecursionError) as exc:
            summary.skipped.append((item.origin, f"cannot parse: {exc}"))
            continue
        if not ids and action != "forget":
            summary.skipped.append((item.origin, "no text to learn from"))
            continue
        pending.append((item.origin, LearnRequest(scope, message_digest(item.raw), ids, action)))
        if len(pending) >= LEARN_BATCH:
            flush()
    if pending:
        flush()
    return summary
