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

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from postwarden.addresses import without_extension
from postwarden.config.sections.bayes import BayesSettings, CombineMethod, UserName
from postwarden.store.client import Store, unavailable_on_error
from postwarden.store.keys import STAT_TTL, digest

GLOBAL_SCOPE = "global"
# Messages per pipeline when learning: large enough to hide the round trip,
# small enough that one slow batch does not block Redis for long.
LEARN_BATCH = 64


def user_name(settings: BayesSettings, name: str) -> str:
    """The name a user's statistics are kept under, the same whether it came
    from the envelope recipient (the milter) or from Dovecot's login (the
    learn pipe): lower case, without the address extension Postfix's
    recipient_delimiter splits off (mail to alice+lists@ is alice's), and
    with `user_name: local_part` only what precedes the @."""
    name = without_extension(name.strip().lower(), settings.recipient_delimiter)
    if settings.user_name == UserName.LOCAL_PART:
        name = name.rpartition("@")[0] or name
    return name


def scope_for(settings: BayesSettings, user: str | None) -> str:
    """The statistics a user's mail is judged and learned by: their own with
    `per_user`, otherwise the global set. The user name never shapes a key
    directly (it is digested)."""
    if settings.per_user and user:
        return f"u:{digest(user_name(settings, user))}"
    return GLOBAL_SCOPE


def recipient_scope(settings: BayesSettings, recipients: Sequence[str]) -> str:
    """The statistics a message is judged and autolearned by: with per_user
    and a single recipient, that user's; otherwise the global set (the
    milter scores a message once, for all its recipients)."""
    one = recipients[0] if settings.per_user and len(recipients) == 1 else None
    return scope_for(settings, one)


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
    # The linear model's bias and the weights of these tokens (0.0 for a
    # token the model does not know); bias None while no model is fitted.
    bias: float | None = None
    weights: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the live model was fitted from, and when."""

    messages: int
    changes: int  # the state's change count it was fitted at
    fitted_at: float  # unix time


@dataclass(frozen=True, slots=True)
class LearnRequest:
    scope: str
    message_digest: str
    token_ids: Sequence[str]
    action: str  # "spam" | "ham" | "forget"


def pack_ids(token_ids: Sequence[str]) -> bytes:
    """Token ids (16 hex digits each) as 8 bytes each: half the memory."""
    return bytes.fromhex("".join(token_ids))


def unpack_ids(packed: bytes) -> list[str]:
    return [packed[i : i + 8].hex() for i in range(0, len(packed) - len(packed) % 8, 8)]


def _float(v: object) -> float | None:
    if isinstance(v, bytes):
        v = v.decode()
    return float(v) if isinstance(v, str) and v else None


class BayesStore:
    def __init__(self, store: Store, settings: BayesSettings) -> None:
        self.store = store
        self.settings = settings

    def counts(self, scope: str, token_ids: Sequence[str]) -> TokenCounts:
        """Learned totals and each token's (spam, ham) counts: one EVALSHA."""
        keys = self.store.keys
        reply = self.store.run(
            "bayes_classify",
            [
                keys.bayes_state(scope),
                keys.bayes_model(scope),
                *(keys.bayes_token(scope, t) for t in token_ids),
            ],
            [],
        )
        numbers = [int(v) for v in reply[3].split()]
        pairs = list(zip(numbers[0::2], numbers[1::2], strict=True))
        bias = _float(reply[2])
        weights = [float(v) for v in reply[4].split()] if bias is not None else []
        return TokenCounts(int(reply[0]), int(reply[1]), pairs, bias, weights)

    def learn(self, requests: Sequence[LearnRequest]) -> list[str]:
        """Apply learn/forget requests of one scope, LEARN_BATCH per round
        trip; one outcome per request (see lua/bayes_learn.lua)."""
        if len({r.scope for r in requests}) > 1:
            raise ValueError("one learn call, one scope (one Redis Cluster slot)")
        keys = self.store.keys
        s = self.settings
        script = self.store.scripts["bayes_learn"]
        keep_docs = self.keeps_docs()
        doc_ttl = int(min(s.model_window, s.learned_ttl))
        out: list[str] = []

        def run(batch: Sequence[LearnRequest]) -> list[Any]:
            pipe: Any = self.store.redis.pipeline(transaction=False)
            for r in batch:
                script(
                    keys=[
                        keys.bayes_state(r.scope),
                        keys.bayes_learned(r.scope, r.message_digest),
                        keys.bayes_doc(r.scope, r.message_digest),
                        *(keys.bayes_token(r.scope, t) for t in r.token_ids),
                    ],
                    args=[
                        r.action,
                        int(s.token_ttl),
                        int(s.rare_token_ttl),
                        int(s.learned_ttl),
                        s.max_tokens,
                        STAT_TTL,
                        pack_ids(r.token_ids) if keep_docs else b"",
                        doc_ttl,
                    ],
                    client=pipe,
                )
            return list(pipe.execute())

        for start in range(0, len(requests), LEARN_BATCH):
            batch = requests[start : start + LEARN_BATCH]
            with unavailable_on_error():
                try:
                    replies = run(batch)
                except redis.exceptions.NoScriptError:
                    # A plain pipeline loads its scripts first; a Redis
                    # Cluster pipeline does not. A batch is one scope, so
                    # one slot and one node: every call in it failed alike
                    # and none ran, so loading and running again is safe.
                    self.store.redis.script_load(script.script)
                    replies = run(batch)
            out.extend(r.decode() if isinstance(r, bytes) else str(r) for r in replies)
        return out

    def keeps_docs(self) -> bool:
        """Whether learning keeps each message's token ids for the svm model.

        Yes with `method: svm` (which marks the statistics as the svm's), and
        also while that mark stands: the Dovecot pipe's own small learn
        config does not repeat the milter's `method`, and a learn without it
        must neither leave Junk moves out of the model nor strip a rescued
        message's tokens. Without svm they would cost Redis memory (about
        2 KB a message) for nothing; `learn upkeep` under chi2 removes the
        mark and what it kept (drop_svm_data).
        """
        marker = self.store.keys.bayes_svm_marker()
        with unavailable_on_error():
            marked = self.store.redis.get(marker) is not None
            if self.settings.method == CombineMethod.SVM:
                if not marked:
                    self.store.redis.set(marker, "1")
                return True
        return marked

    def drop_svm_data(self) -> int | None:
        """Remove the svm mark, then every scope's kept token ids and model
        (`learn upkeep` when the method is no longer svm); how many token
        lists went, None when there was no mark. The mark goes first so
        learns stop keeping at once."""
        keys = self.store.keys
        r = self.store.redis
        dropped = 0
        with unavailable_on_error():
            if not r.delete(keys.bayes_svm_marker()):
                return None
            for scope in self.scopes():
                batch: list[bytes] = []
                for key in r.scan_iter(match=keys.bayes_pattern(scope, "d"), count=1000):
                    batch.append(key)
                    if len(batch) >= 500:
                        dropped += int(r.delete(*batch))
                        batch = []
                if batch:
                    dropped += int(r.delete(*batch))
                r.delete(keys.bayes_model(scope), keys.bayes_model_staging(scope))
        return dropped

    def state(self, scope: str) -> ScopeState:
        with unavailable_on_error():
            raw = self.store.redis.hmget(
                self.store.keys.bayes_state(scope), ["spam", "ham", "tokens"]
            )
        spam, ham, tokens = (int(v) if v is not None else 0 for v in raw)
        return ScopeState(spam, ham, tokens)

    def scopes(self) -> list[str]:
        """Every scope that has learned something (global, each per_user
        user's digest), sorted: what `learn upkeep` looks after."""
        keys = self.store.keys
        head = len(keys.bayes_state("")) - len("}:state")  # where the scope starts
        with unavailable_on_error():
            found = {
                k.decode()[head : -len("}:state")]
                for k in self.store.redis.scan_iter(match=keys.bayes_states_pattern(), count=2000)
            }
        return sorted(found)

    def recount(self, scopes: Sequence[str]) -> dict[str, int]:
        """Count each scope's live token hashes and correct its state's
        `tokens` field, which only ever grows between recounts. One SCAN
        for all of them: a SCAN walks the whole keyspace whatever its
        pattern, and with per_user there may be thousands of scopes."""
        keys = self.store.keys
        head = len(keys.bayes_state("")) - len("}:state")  # where the scope starts
        counts = dict.fromkeys(scopes, 0)
        with unavailable_on_error():
            for key in self.store.redis.scan_iter(match=keys.bayes_pattern("*", "t"), count=2000):
                name = key.decode()
                scope = name[head : name.rindex("}:t:")]
                if scope in counts:
                    counts[scope] += 1
            for scope, n in counts.items():
                self.store.redis.hset(keys.bayes_state(scope), "tokens", n)
        return counts

    # -- the linear model (postwarden/bayes/model.py, refit.py) ---------------

    def changes(self, scope: str) -> int:
        """How many learn/relearn/forget changes the scope has seen."""
        with unavailable_on_error():
            v = self.store.redis.hget(self.store.keys.bayes_state(scope), "changes")
        return int(v) if v is not None else 0

    def learned_docs(self, scope: str) -> Iterator[tuple[bool, list[str]]]:
        """(is_spam, token ids) of every message still remembered, read in
        batches (SCAN, then MGET within the scope's one slot)."""
        keys = self.store.keys
        r = self.store.redis
        with unavailable_on_error():
            batch: list[bytes] = []
            for key in r.scan_iter(match=keys.bayes_pattern(scope, "d"), count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    yield from _decode_docs(r.mget(batch))
                    batch = []
            if batch:
                yield from _decode_docs(r.mget(batch))

    def model_info(self, scope: str) -> ModelInfo | None:
        with unavailable_on_error():
            raw = self.store.redis.hmget(
                self.store.keys.bayes_model(scope), ["@messages", "@changes", "@at"]
            )
        if raw[0] is None:
            return None
        return ModelInfo(int(raw[0]), int(raw[1] or 0), float(raw[2] or 0.0))

    def save_model(
        self, scope: str, bias: float, weights: dict[str, float], info: ModelInfo
    ) -> None:
        """Write the model to the staging hash, then rename it over the live
        one: classifying sees the old model or the new, never a mix."""
        keys = self.store.keys
        live, staging = keys.bayes_model(scope), keys.bayes_model_staging(scope)
        items = list(weights.items())
        with unavailable_on_error():
            r = self.store.redis
            r.delete(staging)
            for start in range(0, len(items), 5000):
                chunk = {t: f"{w:.6g}" for t, w in items[start : start + 5000]}
                r.hset(staging, mapping=chunk)
            meta = {"bias": f"{bias:.6g}", "@messages": info.messages,
                    "@changes": info.changes, "@at": f"{info.fitted_at:.0f}"}  # fmt: skip
            r.hset(staging, mapping=meta)
            r.expire(staging, int(self.settings.learned_ttl))
            r.rename(staging, live)

    def fit_lock(self, scope: str, seconds: int) -> str | None:
        """Take the scope's fit lock (one refit at a time) for `seconds`:
        the token to release it with, or None while another holds it."""
        token = secrets.token_hex(8)
        with unavailable_on_error():
            key = self.store.keys.bayes_fit_lock(scope)
            return token if self.store.redis.set(key, token, nx=True, ex=seconds) else None

    def release_fit_lock(self, scope: str, token: str) -> None:
        """Release the lock if it is still ours (lua/bayes_unlock.lua)."""
        self.store.run("bayes_unlock", [self.store.keys.bayes_fit_lock(scope)], [token])


def _decode_docs(values: list[bytes | None]) -> Iterator[tuple[bool, list[str]]]:
    for v in values:
        if v:  # expired between SCAN and MGET: gone, as it should be
            yield v[:1] == b"s", unpack_ids(v[1:])
