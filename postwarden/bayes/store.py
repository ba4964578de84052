"""Bayes token statistics in Redis: one round trip to classify, batches to learn.

Each token is a small hash (`s`, `h`: how many spam and ham messages
contained it) named by a 64-bit digest of the token, so message text never
reaches Redis. A scope's keys share one hash tag, so both Lua scripts
(lua/bayes_learn.lua, lua/bayes_classify.lua) are legal on Redis Cluster.
Tokens expire `token_ttl` after the last message that taught them, and
tokens seen in one message only expire after `rare_token_ttl`: the long
tail of one-off words goes by itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from postwarden.config.sections.bayes import BayesSettings
from postwarden.store.client import Store, unavailable_on_error
from postwarden.store.keys import STAT_TTL, digest

GLOBAL_SCOPE = "global"
# Messages per pipeline when learning: large enough to hide the round trip,
# small enough that one slow batch does not block Redis for long.
LEARN_BATCH = 64


def scope_for(settings: BayesSettings, user: str | None) -> str:
    """The statistics a user's mail is judged and learned by: their own with
    `per_user`, otherwise the global set. The user name never shapes a key
    directly (it is digested)."""
    if settings.per_user and user:
        return f"u:{digest(user.lower())}"
    return GLOBAL_SCOPE


@dataclass(frozen=True, slots=True)
class ScopeState:
    spam: int
    ham: int
    tokens: int  # token hashes created (an upper bound: expired ones are not subtracted)


@dataclass(frozen=True, slots=True)
class TokenCounts:
    spam_learns: int
    ham_learns: int
    counts: list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class LearnRequest:
    scope: str
    message_digest: str
    token_ids: Sequence[str]
    action: str  # "spam" | "ham" | "forget"


class BayesStore:
    def __init__(self, store: Store, settings: BayesSettings) -> None:
        self.store = store
        self.settings = settings

    def counts(self, scope: str, token_ids: Sequence[str]) -> TokenCounts:
        """Learned totals and each token's (spam, ham) counts: one EVALSHA."""
        keys = self.store.keys
        reply = self.store.run(
            "bayes_classify",
            [keys.bayes_state(scope), *(keys.bayes_token(scope, t) for t in token_ids)],
            [],
        )
        values = [int(v) for v in reply]
        pairs = [(values[i], values[i + 1]) for i in range(2, len(values), 2)]
        return TokenCounts(values[0], values[1], pairs)

    def learn(self, requests: Sequence[LearnRequest]) -> list[str]:
        """Apply learn/forget requests, LEARN_BATCH per round trip; one
        outcome per request (see lua/bayes_learn.lua)."""
        keys = self.store.keys
        s = self.settings
        script = self.store.scripts["bayes_learn"]
        out: list[str] = []
        for start in range(0, len(requests), LEARN_BATCH):
            batch = requests[start : start + LEARN_BATCH]
            with unavailable_on_error():
                pipe: Any = self.store.redis.pipeline(transaction=False)
                for r in batch:
                    script(
                        keys=[
                            keys.bayes_state(r.scope),
                            keys.bayes_learned(r.scope, r.message_digest),
                            *(keys.bayes_token(r.scope, t) for t in r.token_ids),
                        ],
                        args=[
                            r.action,
                            int(s.token_ttl),
                            int(s.rare_token_ttl),
                            int(s.learned_ttl),
                            s.max_tokens,
                            STAT_TTL,
                        ],
                        client=pipe,
                    )
                replies = pipe.execute()
            out.extend(r.decode() if isinstance(r, bytes) else str(r) for r in replies)
        return out

    def state(self, scope: str) -> ScopeState:
        with unavailable_on_error():
            raw = self.store.redis.hmget(
                self.store.keys.bayes_state(scope), ["spam", "ham", "tokens"]
            )
        spam, ham, tokens = (int(v) if v is not None else 0 for v in raw)
        return ScopeState(spam, ham, tokens)

    def recount(self, scope: str) -> int:
        """Count the scope's live token hashes (SCAN) and correct the state's
        `tokens` field, which only ever grows between recounts."""
        keys = self.store.keys
        with unavailable_on_error():
            n = sum(
                1
                for _ in self.store.redis.scan_iter(
                    match=keys.bayes_pattern(scope, "t"), count=2000
                )
            )
            self.store.redis.hset(keys.bayes_state(scope), "tokens", n)
        return n
