"""Judge one message by the learned statistics: probability and confidence.

With `method: svm` the fitted linear model (model.py) judges once
`postwarden learn` has fitted one; until then, and with chi2 (the default)
or naive, the token counts do (combine.py). `classify` is what the spam milter's
Bayes check calls (one Redis round trip); `message_digest` is how
`postwarden learn` remembers a message.
"""

from __future__ import annotations

import email.message
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from postwarden.bayes.combine import CombineParams, combine
from postwarden.bayes.store import BayesStore
from postwarden.bayes.tokens import TokenizerOptions, strip_mbox_from, token_id, tokenize_message
from postwarden.config.sections.bayes import BayesSettings, CombineMethod

# The feature set and combining constants the accuracy bench chose
# (bench/accuracy.py, measured on the training part only).
TOKENIZER = TokenizerOptions()


def combine_params(settings: BayesSettings) -> CombineParams:
    """Counting method: chi-square also stands in for svm until it is fitted."""
    method = CombineMethod.CHI2 if settings.method == CombineMethod.SVM else settings.method
    return CombineParams(method=str(method))


@dataclass(frozen=True, slots=True)
class BayesResult:
    active: bool
    spam_learns: int
    ham_learns: int
    probability: float | None = None  # None while inactive
    tokens_used: int = 0
    margin: float | None = None  # the linear model's score, when it judged

    def _confidence(self) -> float:
        if self.margin is not None:
            return margin_confidence(self.margin)
        assert self.probability is not None
        return confidence(self.probability)

    def spam_confidence(self, settings: BayesSettings) -> float:
        """BAYES_SPAM's weight: 0 below `spam_probability`, else `confidence`."""
        p = self.probability
        if p is None or p < settings.spam_probability or p <= 0.5:
            return 0.0
        return self._confidence()

    def ham_confidence(self, settings: BayesSettings) -> float:
        """BAYES_HAM's weight: 0 above `ham_probability`, else `confidence`."""
        p = self.probability
        if p is None or p > settings.ham_probability or p >= 0.5:
            return 0.0
        return self._confidence()


# How sure Bayes is, as the weight of BAYES_SPAM / BAYES_HAM (chosen by
# `bench.accuracy --tune-milter`, 5-fold cross-validation on TRAIN only).
UNSURE_BAND = 0.02  # |2p - 1| at which the steep half of the weight is full
LOGIT_FULL = 20.0  # |ln(p / (1 - p))| at which the slow half is full


def confidence(p: float, band: float = UNSURE_BAND, logit_full: float = LOGIT_FULL) -> float:
    """Weight in [0, 1] of a Bayes probability `p`, the same on both sides of 0.5.

    Half of it rises steeply (square root) across chi-square's "unsure"
    band: Robinson's indicator puts spam it has mixed evidence about at
    0.51-0.55, and on the training part almost no ham sits there, so a small
    step away from 0.5 already means much. The other half follows the
    log-odds up to LOGIT_FULL, so among confident verdicts the more
    confident still ranks higher. A weight linear in p (the first choice)
    left the unsure band worth a fraction of a point: the whole milter
    caught 0.785 of held-out spam at ham FP <= 0.1 % against 0.924 now.
    """
    p = min(max(p, 1e-15), 1.0 - 1e-15)  # chi-square reaches 0 and 1 exactly
    steep = min(1.0, math.sqrt(abs(2.0 * p - 1.0) / band))
    slow = min(1.0, abs(math.log(p / (1.0 - p))) / logit_full)
    return 0.5 * steep + 0.5 * slow


# Where the svm model's verdict turns to spam. The fit's own boundary is 0,
# but there the model called 6 of 1,952 held-out TRAIN ham spam (chi2: 1):
# it is confidently wrong about more ham. The operating point is the margin
# above which at most 0.1 % of held-out ham fall (`bench.accuracy
# --tune-milter`, cross-validation on TRAIN only), as spam filters set theirs
# by the false-positive rate they accept.
OPERATING_POINT = 0.4  # 0.3 before list headers left the tokens (2026-12-07)
# Distance past the operating point at which BAYES_SPAM / BAYES_HAM weigh
# in full (chosen by the same cross-validation, from 0.25..2).
MARGIN_FULL = 0.5
# Platt scaling of that distance into a probability, p = 1 / (1 + e^(-a d)):
# `a` fitted by maximum likelihood to held-out margins of the same
# cross-validation. Only the shown percentage and the spam_probability /
# ham_probability thresholds use it.
PLATT_SLOPE = 8.4


def margin_confidence(margin: float) -> float:
    """Weight in [0, 1] of the model's margin: linear in its distance from
    the operating point, full at MARGIN_FULL."""
    return min(1.0, abs(margin - OPERATING_POINT) / MARGIN_FULL)


def margin_probability(margin: float) -> float:
    """The margin as a probability, 0.5 at the operating point."""
    z = max(min(PLATT_SLOPE * (margin - OPERATING_POINT), 700.0), -700.0)
    return 1.0 / (1.0 + math.exp(-z))


def token_ids(msg: email.message.Message, return_path: str | None = None) -> list[str]:
    """Sorted ids of the message's distinct tokens (sorted: the same message
    always gives the same key order, which keeps the scripts' work repeatable).
    `return_path`: the envelope sender of mail in transit (tokens.py)."""
    return sorted({token_id(t) for t in tokenize_message(msg, TOKENIZER, return_path)})


def classify(
    store: BayesStore,
    settings: BayesSettings,
    msg: email.message.Message | Sequence[str],
    scope: str,
) -> BayesResult:
    """Judge a message (or its token_ids, when the caller has them already)."""
    ids = token_ids(msg) if isinstance(msg, email.message.Message) else msg
    counts = store.counts(scope, ids)
    if counts.spam_learns < settings.min_learns or counts.ham_learns < settings.min_learns:
        return BayesResult(False, counts.spam_learns, counts.ham_learns)
    if settings.method == CombineMethod.SVM and counts.bias is not None:
        # Tokens the model never weighed (new since the fit) add nothing.
        margin = counts.bias + sum(counts.weights)
        used = sum(1 for w in counts.weights if w)
        return BayesResult(
            True, counts.spam_learns, counts.ham_learns, margin_probability(margin), used, margin
        )
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
