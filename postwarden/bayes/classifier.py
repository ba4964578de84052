"""Judge one message by the learned statistics: probability and confidence.

`classify` is what the spam milter's Bayes check calls (one Redis round
trip); `message_digest` is how `postwarden learn` remembers a message.
"""

from __future__ import annotations

import email.message
import hashlib
from dataclasses import dataclass

from postwarden.bayes.combine import CombineParams, combine
from postwarden.bayes.store import BayesStore
from postwarden.bayes.tokens import TokenizerOptions, strip_mbox_from, token_id, tokenize_message
from postwarden.config.sections.bayes import BayesSettings

# The feature set and combining constants the accuracy bench chose
# (bench/accuracy.py, measured on the training part only).
TOKENIZER = TokenizerOptions()


def combine_params(settings: BayesSettings) -> CombineParams:
    return CombineParams(method=str(settings.method))


@dataclass(frozen=True, slots=True)
class BayesResult:
    active: bool
    spam_learns: int
    ham_learns: int
    probability: float | None = None  # None while inactive
    tokens_used: int = 0

    def spam_confidence(self, settings: BayesSettings) -> float:
        """0 below `spam_probability`; from there the distance from a neutral
        0.5 towards certainty (0.9 -> 0.8, 0.999 -> 0.998): BAYES_SPAM's weight,
        as Rspamd scales its Bayes symbols by probability."""
        p = self.probability
        if p is None or p < settings.spam_probability:
            return 0.0
        return min(1.0, max(0.0, (p - 0.5) * 2))

    def ham_confidence(self, settings: BayesSettings) -> float:
        p = self.probability
        if p is None or p > settings.ham_probability:
            return 0.0
        return min(1.0, max(0.0, (0.5 - p) * 2))


def token_ids(msg: email.message.Message) -> list[str]:
    """Sorted ids of the message's distinct tokens (sorted: the same message
    always gives the same key order, which keeps the scripts' work repeatable)."""
    return sorted({token_id(t) for t in tokenize_message(msg, TOKENIZER)})


def classify(
    store: BayesStore, settings: BayesSettings, msg: email.message.Message, scope: str
) -> BayesResult:
    ids = token_ids(msg)
    counts = store.counts(scope, ids)
    if counts.spam_learns < settings.min_learns or counts.ham_learns < settings.min_learns:
        return BayesResult(False, counts.spam_learns, counts.ham_learns)
    c = combine(counts.counts, counts.spam_learns, counts.ham_learns, combine_params(settings))
    return BayesResult(True, counts.spam_learns, counts.ham_learns, c.probability, c.used)


def message_digest(raw: bytes) -> str:
    """Identity of a message for learning: its Message-ID and its body.

    Trace headers (Received, Delivered-To, X-Spam-*) differ between copies
    of one message and between before/after delivery, so they are left out:
    the copy in Junk and the copy the milter saw get the same digest.
    """
    data = strip_mbox_from(raw).replace(b"\r\n", b"\n")
    head, sep, body = data.partition(b"\n\n")
    if not sep:
        head, body = data, b""
    message_id = b""
    for line in head.split(b"\n"):
        if line[:11].lower() == b"message-id:":
            message_id = line[11:].strip()
            break
    h = hashlib.blake2b(digest_size=16)
    h.update(message_id)
    h.update(b"\0")
    h.update(body.rstrip(b"\n"))
    return h.hexdigest()
