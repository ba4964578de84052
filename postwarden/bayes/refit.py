"""When and how the linear model is refitted from the learned messages.

`postwarden learn` calls `refit` after a run that changed the statistics,
and `postwarden learn upkeep` after any change; the spam milter only reads
the model. A refit reads every remembered message's token ids, fits
(model.fit) and swaps the new model in (BayesStore.save_model). One refit
per scope runs at a time (a lock in Redis): a Junk move while another
learn is fitting adds its message to the counts at once and to the model
at the next refit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from postwarden.bayes.model import fit
from postwarden.bayes.store import BayesStore, ModelInfo

log = logging.getLogger("postwarden.bayes")

# A learn run that changed this many messages refits at once, whatever the
# interval: a bulk training should leave a model that knows it.
REFIT_BATCH = 50
# Longest a fit may hold the lock before another learn may take over.
LOCK_SECONDS = 900


@dataclass(frozen=True, slots=True)
class RefitOutcome:
    # "fitted", "current", "not due", "too few", "busy"; from the CLI also
    # "refused" (a Redis ACL) and "unavailable" (Redis went away meanwhile)
    status: str
    messages: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        if self.status == "fitted":
            return f"model refitted from {self.messages} messages in {self.seconds:.1f} s"
        return f"model {self.status}"


def refit(
    bstore: BayesStore,
    scope: str,
    *,
    changed_now: int = 0,
    force: bool = False,
    now: Callable[[], float] = time.time,
) -> RefitOutcome:
    """Refit the scope's model if it is stale and due.

    Stale: the scope changed since the model was fitted. Due: no model yet,
    `force`, this run changed REFIT_BATCH messages or more, or the model is
    older than `refit_interval` (so one-message learns from the Dovecot
    loop refit at most that often). Too few: fewer than `min_learns` spam
    or ham, while Bayes is inactive anyway.
    """
    settings = bstore.settings
    changes = bstore.changes(scope)
    info = bstore.model_info(scope)
    if info is not None and info.changes == changes:
        return RefitOutcome("current", info.messages)
    due = (
        force
        or info is None
        or changed_now >= REFIT_BATCH
        or now() - info.fitted_at >= float(settings.refit_interval)
    )
    if not due:
        return RefitOutcome("not due")
    state = bstore.state(scope)
    if state.spam < settings.min_learns or state.ham < settings.min_learns:
        return RefitOutcome("too few")
    token = bstore.fit_lock(scope, LOCK_SECONDS)
    if token is None:
        return RefitOutcome("busy")
    try:
        started = time.monotonic()
        docs = list(bstore.learned_docs(scope))
        if not any(s for s, _ in docs) or all(s for s, _ in docs):
            return RefitOutcome("too few", len(docs))
        model = fit(docs)
        weights = {str(t): w for t, w in model.weights.items()}
        bstore.save_model(scope, model.bias, weights, ModelInfo(len(docs), changes, now()))
        took = time.monotonic() - started
    finally:
        bstore.release_fit_lock(scope, token)
    log.info("bayes: %s model refitted from %d messages (%d weights) in %.1f s",
             scope, len(docs), len(weights), took)  # fmt: skip
    return RefitOutcome("fitted", len(docs), took)
