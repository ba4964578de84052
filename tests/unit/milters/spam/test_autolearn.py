"""Autolearn: the spam milter teaches Bayes its clearest verdicts (milters/spam/autolearn.py)."""

from __future__ import annotations

from typing import Any

import pytest

from milters.spam import autolearn as autolearn_module
from milters.spam.checks.bayes import SYMBOLS as BAYES_SYMBOLS
from postwarden.bayes import learning
from postwarden.bayes.sources import Found
from postwarden.bayes.store import GLOBAL_SCOPE, BayesStore
from postwarden.bayes.tokens import tokenize_message
from postwarden.config.errors import ConfigError
from postwarden.config.schema import RedisSettings
from postwarden.config.sections.bayes import BayesSettings
from postwarden.store.client import Store, open_store
from tests.unit.milters.spam.engine_setup import engine, message, names, scan, settings_for

# Rules alone: SUBJ_ALL_CAPS 3 + SPAM_PHRASES + BODY_EXCLAIM, well above 2.
SPAMMY = message(
    "CLICK HERE to claim your PRIZE now!!!!!!!!! Act now, limited time, risk-free!\r\n",
    subject="WINNER WINNER CLAIM YOUR PRIZE",
    headers={"Message-ID": "<prize-1@example.org>"},
)
# Rules alone: IN_REPLY_TO -1 and HAS_LIST_HEADERS -1.
REPLY = message(
    "Agreed, let's merge the patch after the release.\r\n",
    subject="Re: patch review",
    headers={
        "Message-ID": "<reply-1@example.org>",
        "In-Reply-To": "<patch@example.org>",
        "List-Id": "<dev.example.org>",
    },
)
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def autolearn(**over: Any) -> dict[str, Any]:
    return {"bayes": {"autolearn": {"enabled": True, "spam_score": 4.0, "ham_score": -2.0,
                                    **over}}}  # fmt: skip


def learned(store: Store) -> tuple[int, int]:
    st = BayesStore(store, BayesSettings()).state(GLOBAL_SCOPE)
    return st.spam, st.ham


def test_autolearn_is_off_by_default(store: Store) -> None:
    eng, svc = engine({"bayes": {"autolearn": {"spam_score": 4.0}}}, store=store)
    v = scan(eng, svc, SPAMMY)
    assert v.score is not None and v.score >= 4.0
    assert learned(store) == (0, 0)
    assert not {n for n in names(v) if n.startswith("BAYES_AUTOLEARN")}


def test_autolearn_learns_spam_once_when_rules_alone_score_high(store: Store) -> None:
    eng, svc = engine(autolearn(), store=store)
    v = scan(eng, svc, SPAMMY)
    assert "BAYES_AUTOLEARN_SPAM" in names(v)
    assert learned(store) == (1, 0)
    assert svc.stats.take()["bayes.autolearned_spam"] == 1  # `postwarden stat` shows it
    again = scan(eng, svc, SPAMMY)
    assert "BAYES_AUTOLEARN_SPAM" not in names(again)  # remembered: learned once
    assert learned(store) == (1, 0)


def test_autolearn_reuses_the_bayes_checks_tokens(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def counted(msg: Any, opts: Any, return_path: str | None = None) -> set[str]:
        calls.append(1)
        return tokenize_message(msg, opts, return_path)

    monkeypatch.setattr("postwarden.bayes.classifier.tokenize_message", counted)
    eng, svc = engine(autolearn(), store=store)
    v = scan(eng, svc, SPAMMY)
    assert "BAYES_AUTOLEARN_SPAM" in names(v) and "BAYES_INACTIVE" in names(v)
    assert len(calls) == 1  # the Bayes check tokenized; autolearn did not again


def test_autolearn_learns_ham_when_rules_alone_score_low(store: Store) -> None:
    eng, svc = engine(autolearn(), store=store)
    v = scan(eng, svc, REPLY)
    assert "BAYES_AUTOLEARN_HAM" in names(v)
    assert learned(store) == (0, 1)


def test_autolearn_leaves_middle_scores_alone(store: Store) -> None:
    eng, svc = engine(autolearn(), store=store)
    scan(eng, svc, message())
    assert learned(store) == (0, 0)


def test_autolearn_decides_without_bayes(store: Store) -> None:
    # Bayes trained to call SPAMMY spam: its symbol alone passes spam_score,
    # but the rules alone do not, so nothing is learned.
    bs = BayesStore(store, BayesSettings())
    spams = [message(f"CLICK HERE claim PRIZE act now limited {n}\r\n", subject=f"PRIZE {n}",
                     headers={"Message-ID": f"<s{n}@x>"}) for n in range(3)]  # fmt: skip
    hams = [message(f"merge the patch after the release {n}\r\n", subject=f"patch {n}",
                    headers={"Message-ID": f"<h{n}@x>"}) for n in range(3)]  # fmt: skip
    learning.learn(bs, GLOBAL_SCOPE, "spam", [Found(str(n), r) for n, r in enumerate(spams)])
    learning.learn(bs, GLOBAL_SCOPE, "ham", [Found(str(n), r) for n, r in enumerate(hams)])
    eng, svc = engine({"bayes": {"min_learns": 3, **autolearn(spam_score=30.0)["bayes"]}},
                      store=store)  # fmt: skip
    v = scan(eng, svc, SPAMMY)
    bayes = sum(s.score for s in v.symbols if s.name == "BAYES_SPAM")
    assert bayes > 0.8 * BAYES_SYMBOLS["BAYES_SPAM"].score
    assert v.score is not None and v.score - bayes < 30.0
    assert learned(store) == (3, 3)


def test_autolearn_never_overrides_a_message_learned_before(store: Store) -> None:
    bs = BayesStore(store, BayesSettings())
    learning.learn(bs, GLOBAL_SCOPE, "ham", [Found("user moved it out of Junk", SPAMMY)])
    eng, svc = engine(autolearn(), store=store)
    v = scan(eng, svc, SPAMMY)
    assert "BAYES_AUTOLEARN_SPAM" not in names(v)
    assert learned(store) == (0, 1)


def test_a_junk_move_relearns_what_autolearn_taught(store: Store) -> None:
    eng, svc = engine(autolearn(), store=store)
    scan(eng, svc, REPLY)
    assert learned(store) == (0, 1)
    # The copy in the mailbox carries delivery headers and the milter's own.
    delivered = b"Return-Path: <alice@example.org>\r\nX-Spam-Score: -2.00\r\n" + REPLY
    summary = learning.learn(BayesStore(store, BayesSettings()), GLOBAL_SCOPE, "spam",
                             [Found("Junk/cur/1", delivered)])  # fmt: skip
    assert summary.relearned == 1
    assert learned(store) == (1, 0)


@pytest.mark.parametrize(
    ("raw", "kwargs"),
    [
        (SPAMMY.replace(b"CLICK HERE", GTUBE + b" CLICK HERE"), {}),
        (SPAMMY, {"auth": "alice"}),  # outbound
    ],
    ids=["gtube", "outbound"],
)
def test_autolearn_skips_forced_and_outbound_verdicts(
    store: Store, raw: bytes, kwargs: dict[str, Any]
) -> None:
    eng, svc = engine(autolearn(), store=store)
    v = scan(eng, svc, raw, **kwargs)
    assert v.score is not None
    assert learned(store) == (0, 0)


def test_autolearn_skips_a_verdict_made_without_redis() -> None:
    # Bayes could not run, so the verdict is incomplete: not learned, and
    # the verdict itself stands.
    dead = open_store(RedisSettings(prefix="x:"), "/nonexistent/redis.sock")
    eng, svc = engine(autolearn(), store=dead)
    v = scan(eng, svc, SPAMMY)
    sym = {s.name: s for s in v.symbols}
    assert sym["STORE_UNAVAILABLE"].options == ("bayes",)
    assert not {n for n in sym if n.startswith("BAYES_AUTOLEARN")}
    assert v.score is not None and v.score >= 4.0


def test_autolearn_thresholds_must_not_cross() -> None:
    with pytest.raises(ConfigError) as err:
        settings_for(autolearn(spam_score=1.0, ham_score=3.0))
    assert "ham_score must be below spam_score" in str(err.value)


@pytest.mark.expect_log("ERROR", "spam autolearn failed")
def test_a_failing_autolearn_keeps_the_verdict(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> str:
        raise RuntimeError("a bug in learning")

    monkeypatch.setattr(autolearn_module, "teach", broken)
    eng, svc = engine(autolearn(), store=store)
    v = scan(eng, svc, SPAMMY)
    sym = {s.name: s for s in v.symbols}
    assert sym["CHECK_ERROR"].options == ("autolearn",)
    assert v.score is not None and v.score >= 4.0 and v.action.value == "add_header"
