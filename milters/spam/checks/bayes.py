"""Bayes: what the learned statistics say about this message (postwarden/bayes).

Tokens are read from `view.mime` (the same stdlib compat32 parse `postwarden
learn` makes of a stored message), all token counts in one Redis call.
BAYES_SPAM / BAYES_HAM carry the confidence as their weight (score x weight,
as Rspamd scales its Bayes symbols); until `min_learns` spam AND ham are
learned the check says BAYES_INACTIVE with the training progress instead
(NethServer's rule). With `per_user`, mail for a single recipient is judged
by that recipient's statistics, anything else by the global set; a user who
has not learned enough yet is judged by the global set too (`global_fallback`,
the symbol's options say "global"), so switching per_user on, or a new
mailbox, does not leave mail unjudged. That costs that user's messages a
second Redis call.
"""

from __future__ import annotations

from collections.abc import Iterator

from milters.context import ServiceContext
from milters.spam.checks.api import Check, CheckContext, CheckSpec, SymbolDef, SymbolHit
from milters.spam.view import MessageView
from postwarden.bayes.classifier import classify
from postwarden.bayes.store import GLOBAL_SCOPE, BayesStore, recipient_scope
from postwarden.config.sections.spam import SpamMilterSettings

SYMBOLS = {
    # Chosen by 5-fold cross-validation of the whole milter on the accuracy
    # bench's TRAIN part (bench/accuracy.py --tune-milter; deploy/postwarden.yaml).
    # 14 keeps Bayes alone below the suggested reject (15), as Rspamd and
    # SpamAssassin keep theirs below their reject scores: a rule must agree.
    "BAYES_SPAM": SymbolDef(14.0, "Bayes: spam (score x confidence)"),
    "BAYES_HAM": SymbolDef(-21.0, "Bayes: ham (score x confidence)"),
    "BAYES_INACTIVE": SymbolDef(0.0, "Bayes has not learned min_learns spam and ham yet"),
}


def build(ctx: ServiceContext, settings: SpamMilterSettings) -> Check | None:
    b = settings.bayes
    if not b.enabled:
        return None

    def bayes(view: MessageView, cctx: CheckContext) -> Iterator[SymbolHit]:
        """What the learned statistics say of the message's tokens: chi-square
        of their counts, or with method svm the fitted model's margin
        (postwarden/bayes/classifier.py)."""
        scope = recipient_scope(b, view.env.recipients)
        bstore = BayesStore(cctx.message.store, b)
        r = classify(bstore, b, view.bayes_token_ids, scope)
        via: tuple[str, ...] = ()
        if not r.active and scope != GLOBAL_SCOPE and b.global_fallback:
            shared = classify(bstore, b, view.bayes_token_ids, GLOBAL_SCOPE)
            if shared.active:
                r, via = shared, ("global",)
        if not r.active or r.probability is None:
            need = b.min_learns
            progress = (f"spam {min(r.spam_learns, need)}/{need}",
                        f"ham {min(r.ham_learns, need)}/{need}")  # fmt: skip
            yield SymbolHit("BAYES_INACTIVE", progress)
            return
        pct = f"{r.probability * 100:.1f}%"
        if (w := r.spam_confidence(b)) > 0:
            yield SymbolHit("BAYES_SPAM", (pct, *via), weight=w)
        elif (w := r.ham_confidence(b)) > 0:
            yield SymbolHit("BAYES_HAM", (pct, *via), weight=w)

    return bayes


CHECK = CheckSpec(name="bayes", build=build, symbols=SYMBOLS, network=True)
