"""The svm model: its fit, where `postwarden learn` keeps what it is fitted
from, when it is refitted, and how the classifier uses it."""

from __future__ import annotations

import dataclasses
import random

import pytest

from postwarden.bayes.classifier import (
    OPERATING_POINT,
    classify,
    margin_confidence,
    token_ids,
)
from postwarden.bayes.model import fit
from postwarden.bayes.refit import REFIT_BATCH, refit
from postwarden.bayes.store import GLOBAL_SCOPE, BayesStore
from postwarden.bayes.tokens import parse
from postwarden.config.sections.bayes import CombineMethod
from postwarden.config.units import Duration
from postwarden.store.client import Store
from tests.unit.postwarden.test_bayes import bayes as chi2_default_bayes
from tests.unit.postwarden.test_bayes import ham, learn, spam


def docs(n: int) -> list[tuple[bool, list[str]]]:
    out = []
    for i in range(n):
        out.append((True, ["cheap", "pills", "now", "the", f"s{i}"]))
        out.append((False, ["meeting", "notes", "release", "the", f"h{i}"]))
    return out


def test_fit_weighs_spam_tokens_up_and_ham_tokens_down() -> None:
    model = fit(docs(20))
    assert model.score(["cheap", "pills"]) > 0 > model.score(["meeting", "notes"])
    assert model.weights["cheap"] > 0 > model.weights["meeting"]
    # "the" is in every message of both classes: it says nothing either way.
    assert abs(model.weights.get("the", 0.0)) < model.weights["cheap"] / 10
    assert model.messages == 40


def test_fit_leaves_out_tokens_of_one_message_and_is_repeatable() -> None:
    model = fit(docs(20))
    assert "s3" not in model.weights and "h3" not in model.weights
    assert fit(docs(20)) == model


def test_fit_gives_the_same_model_whatever_order_the_messages_come_in() -> None:
    # Overlapping, noisy messages: ten epochs do not converge fully, so
    # without a fixed order the weights would depend on the input order.
    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(60)]
    messages = [(i % 3 == 0, rng.sample(vocab, 12)) for i in range(150)]
    assert fit(messages) == fit(list(reversed(messages)))


def test_fit_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="spam and ham"):
        fit([(True, ["a", "b"]), (True, ["a", "c"])])


def bayes(store: Store, **kw: object) -> BayesStore:
    """Statistics with method svm unless told otherwise."""
    return chi2_default_bayes(store, **{"method": CombineMethod.SVM, **kw})


def test_each_learned_message_keeps_its_tokens_until_forgotten(store: Store) -> None:
    bs = bayes(store)
    raw = spam(1)
    learn(bs, "spam", raw)
    assert list(bs.learned_docs(GLOBAL_SCOPE)) == [(True, token_ids(parse(raw)))]
    learn(bs, "ham", raw)
    assert list(bs.learned_docs(GLOBAL_SCOPE)) == [(False, token_ids(parse(raw)))]
    learn(bs, "forget", raw)
    assert list(bs.learned_docs(GLOBAL_SCOPE)) == []
    assert bs.changes(GLOBAL_SCOPE) == 3


def test_chi2_without_svm_ever_keeps_no_message_tokens(store: Store) -> None:
    chi2 = bayes(store, method=CombineMethod.CHI2)
    learn(chi2, "spam", spam(1))
    assert list(chi2.learned_docs(GLOBAL_SCOPE)) == []
    assert not chi2.keeps_docs()


def test_a_learn_config_without_the_method_keeps_tokens_while_svm_is_in_use(
    store: Store,
) -> None:
    # Given statistics the svm learned (the milter's config says svm)
    raw = spam(1)
    learn(bayes(store), "spam", raw)
    # When the Dovecot pipe, whose learn.yaml names no method, rescues the
    # message from Junk and learns a new one
    pipe = bayes(store, method=CombineMethod.CHI2)
    learn(pipe, "ham", raw)
    learn(pipe, "spam", spam(2))
    # Then the model will see both, the rescued one as ham
    assert sorted(pipe.learned_docs(GLOBAL_SCOPE)) == sorted(
        [(False, token_ids(parse(raw))), (True, token_ids(parse(spam(2))))]
    )


def test_dropping_svm_data_ends_the_keeping_and_frees_the_tokens(store: Store) -> None:
    svm = trained(store)
    assert refit(svm, GLOBAL_SCOPE, force=True).status == "fitted"
    chi2 = bayes(store, method=CombineMethod.CHI2)
    assert chi2.drop_svm_data() == 12
    assert list(chi2.learned_docs(GLOBAL_SCOPE)) == []
    assert chi2.model_info(GLOBAL_SCOPE) is None and not chi2.keeps_docs()
    # What is learned afterwards under chi2 keeps nothing; a second drop has nothing to do
    learn(chi2, "spam", spam(99))
    assert list(chi2.learned_docs(GLOBAL_SCOPE)) == []
    assert chi2.drop_svm_data() is None


def test_a_message_learned_before_the_model_existed_gets_its_tokens_kept(store: Store) -> None:
    bs = bayes(store)
    raw = spam(1)
    learn(bs, "spam", raw)
    for key in store.redis.scan_iter(match=store.keys.bayes_pattern(GLOBAL_SCOPE, "d")):
        store.redis.delete(key)  # as a learn by an older postwarden left it
    assert learn(bs, "spam", raw).known == 1
    assert list(bs.learned_docs(GLOBAL_SCOPE)) == [(True, token_ids(parse(raw)))]
    # Kept tokens are a change the model has not seen yet.
    assert bs.changes(GLOBAL_SCOPE) == 2
    assert store.redis.ttl(next(store.redis.scan_iter(
        match=store.keys.bayes_pattern(GLOBAL_SCOPE, "d")))) > 0  # fmt: skip


def trained(store: Store, n: int = 6, **kw: object) -> BayesStore:
    bs = bayes(store, min_learns=n, **kw)
    learn(bs, "spam", *(spam(i) for i in range(n)))
    learn(bs, "ham", *(ham(i) for i in range(n)))
    return bs


def test_classify_uses_the_model_once_fitted_and_chi2_before(store: Store) -> None:
    bs = trained(store)
    before = classify(bs, bs.settings, parse(spam(99)), GLOBAL_SCOPE)
    assert before.active and before.margin is None and before.probability is not None

    outcome = refit(bs, GLOBAL_SCOPE)
    assert (outcome.status, outcome.messages) == ("fitted", 12)
    s = classify(bs, bs.settings, parse(spam(99)), GLOBAL_SCOPE)
    h = classify(bs, bs.settings, parse(ham(99)), GLOBAL_SCOPE)
    assert s.margin is not None and h.margin is not None
    assert s.margin > OPERATING_POINT > h.margin
    assert s.probability is not None and s.probability > 0.5
    assert s.spam_confidence(bs.settings) == margin_confidence(s.margin) > 0
    assert h.ham_confidence(bs.settings) == margin_confidence(h.margin) > 0
    assert s.tokens_used > 0

    chi2 = dataclasses.replace(bs.settings, method=CombineMethod.CHI2)
    assert classify(bs, chi2, parse(spam(99)), GLOBAL_SCOPE).margin is None


def test_refit_waits_for_a_change_then_for_the_interval(store: Store) -> None:
    clock = [1_000_000.0]
    bs = trained(store, refit_interval=600.0)
    assert refit(bs, GLOBAL_SCOPE, now=lambda: clock[0]).status == "fitted"
    assert refit(bs, GLOBAL_SCOPE, now=lambda: clock[0]).status == "current"

    learn(bs, "spam", spam(50))  # one Junk move
    assert refit(bs, GLOBAL_SCOPE, changed_now=1, now=lambda: clock[0]).status == "not due"
    clock[0] += 600
    assert refit(bs, GLOBAL_SCOPE, changed_now=1, now=lambda: clock[0]).status == "fitted"
    assert bs.model_info(GLOBAL_SCOPE) is not None
    assert bs.model_info(GLOBAL_SCOPE).messages == 13  # type: ignore[union-attr]

    learn(bs, "ham", ham(50))
    big = refit(bs, GLOBAL_SCOPE, changed_now=REFIT_BATCH, now=lambda: clock[0])
    assert big.status == "fitted"  # a bulk learn does not wait


def test_refit_waits_for_min_learns_and_for_a_refit_in_progress(store: Store) -> None:
    bs = bayes(store, min_learns=5)
    learn(bs, "spam", *(spam(i) for i in range(5)))
    learn(bs, "ham", *(ham(i) for i in range(4)))
    assert refit(bs, GLOBAL_SCOPE).status == "too few"
    learn(bs, "ham", ham(4))
    token = bs.fit_lock(GLOBAL_SCOPE, 60)
    assert token is not None and bs.fit_lock(GLOBAL_SCOPE, 60) is None
    assert refit(bs, GLOBAL_SCOPE).status == "busy"
    assert bs.model_info(GLOBAL_SCOPE) is None
    bs.release_fit_lock(GLOBAL_SCOPE, "not-the-holder")  # a fit that outlived its lock
    assert refit(bs, GLOBAL_SCOPE).status == "busy"
    bs.release_fit_lock(GLOBAL_SCOPE, token)
    assert refit(bs, GLOBAL_SCOPE).status == "fitted"


def test_a_refit_replaces_the_whole_model(store: Store) -> None:
    bs = trained(store)
    refit(bs, GLOBAL_SCOPE)
    model = store.keys.bayes_model(GLOBAL_SCOPE)
    store.redis.hset(model, "0123456789abcdef", "5")  # a weight no fit gave
    learn(bs, "spam", spam(7))
    assert refit(bs, GLOBAL_SCOPE, force=True).status == "fitted"
    assert store.redis.hget(model, "0123456789abcdef") is None
    assert not store.redis.exists(store.keys.bayes_model_staging(GLOBAL_SCOPE))
    assert store.redis.ttl(model) > 0


def test_the_same_learned_messages_give_the_same_model_whatever_the_scan_order(
    store: Store,
) -> None:
    first = trained(store, n=8)
    refit(first, GLOBAL_SCOPE)
    model_a = store.redis.hgetall(store.keys.bayes_model(GLOBAL_SCOPE))
    store.redis.flushall()
    # Learned in another order: Redis' SCAN then meets them in another order too.
    bs = bayes(store, min_learns=8)
    learn(bs, "ham", *(ham(i) for i in reversed(range(8))))
    learn(bs, "spam", *(spam(i) for i in reversed(range(8))))
    refit(bs, GLOBAL_SCOPE)
    model_b = store.redis.hgetall(store.keys.bayes_model(GLOBAL_SCOPE))
    weights = {k: v for k, v in model_a.items() if not k.startswith(b"@")}
    assert weights == {k: v for k, v in model_b.items() if not k.startswith(b"@")}


def test_message_tokens_are_kept_for_the_model_window_only(store: Store) -> None:
    bs = bayes(store, model_window=Duration(2 * 86400.0))
    learn(bs, "spam", spam(1))
    [doc] = store.redis.scan_iter(match=store.keys.bayes_pattern(GLOBAL_SCOPE, "d"))
    [memory] = store.redis.scan_iter(match=store.keys.bayes_pattern(GLOBAL_SCOPE, "m"))
    assert 86400 < store.redis.ttl(doc) <= 2 * 86400
    # The message itself is remembered as long as before (learned_ttl).
    assert store.redis.ttl(memory) > 300 * 86400
