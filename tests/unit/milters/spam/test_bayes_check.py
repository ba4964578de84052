"""The Bayes check inside the spam engine, on statistics `postwarden learn` wrote."""

from __future__ import annotations

from milters.spam.checks.bayes import SYMBOLS
from postwarden.bayes import learning
from postwarden.bayes.sources import Found
from postwarden.bayes.store import GLOBAL_SCOPE, BayesStore, scope_for
from postwarden.config.sections.bayes import BayesSettings, UserName
from postwarden.store.client import Store
from tests.unit.milters.spam.engine_setup import engine, message, names, scan


def _train(store: Store, spam: int, ham: int) -> None:
    bs = BayesStore(store, BayesSettings())
    spams = [message(f"cheap pills casino prize winner offer {n}\r\n", subject=f"WIN {n}",
                     headers={"Message-ID": f"<s{n}@x>"}) for n in range(spam)]  # fmt: skip
    hams = [message(f"minutes of the compiler meeting item {n}\r\n", subject=f"notes {n}",
                    headers={"Message-ID": f"<h{n}@x>"}) for n in range(ham)]  # fmt: skip
    learning.learn(bs, GLOBAL_SCOPE, "spam", [Found(str(n), r) for n, r in enumerate(spams)])
    learning.learn(bs, GLOBAL_SCOPE, "ham", [Found(str(n), r) for n, r in enumerate(hams)])


def test_bayes_is_inactive_until_min_learns_and_says_how_far(store: Store) -> None:
    _train(store, 3, 3)
    eng, service = engine({"bayes": {"min_learns": 4}}, store=store)
    v = scan(eng, service, message("cheap pills casino prize\r\n"))
    sym = {s.name: s for s in v.symbols}
    assert "BAYES_INACTIVE" in sym and sym["BAYES_INACTIVE"].score == 0
    assert "spam 3/4" in str(sym["BAYES_INACTIVE"].options)


def test_bayes_spam_and_ham_scores_scale_with_confidence(store: Store) -> None:
    _train(store, 5, 5)
    eng, service = engine({"bayes": {"min_learns": 5}}, store=store)
    spammy = message("cheap pills casino prize winner offer\r\n", subject="WIN",
                     headers={"Message-ID": "<new1@x>"})  # fmt: skip
    hammy = message("minutes of the compiler meeting\r\n", subject="notes",
                    headers={"Message-ID": "<new2@x>"})  # fmt: skip
    spam = scan(eng, service, spammy)
    ham = scan(eng, service, hammy)
    s = {x.name: x for x in spam.symbols}["BAYES_SPAM"]
    h = {x.name: x for x in ham.symbols}["BAYES_HAM"]
    spam_max, ham_max = SYMBOLS["BAYES_SPAM"].score, SYMBOLS["BAYES_HAM"].score
    assert 0.8 * spam_max < s.score <= spam_max and ham_max <= h.score < 0.66 * ham_max
    assert "BAYES_HAM" not in names(spam) and "BAYES_SPAM" not in names(ham)


def test_bayes_off_adds_no_symbol(store: Store) -> None:
    eng, service = engine({"bayes": {"enabled": False}}, store=store)
    assert not {n for n in names(scan(eng, service, message())) if n.startswith("BAYES")}


def test_per_user_bayes_judges_mail_to_an_extension_by_what_the_login_learned(
    store: Store,
) -> None:
    # Given a system user whose Junk moves the pipe learned as "alice"
    settings = BayesSettings(per_user=True, user_name=UserName.LOCAL_PART, min_learns=3)
    bs = BayesStore(store, settings)
    spams = [message(f"cheap pills casino prize winner offer {n}\r\n", subject=f"WIN {n}",
                     headers={"Message-ID": f"<s{n}@x>"}) for n in range(3)]  # fmt: skip
    hams = [message(f"minutes of the compiler meeting item {n}\r\n", subject=f"notes {n}",
                    headers={"Message-ID": f"<h{n}@x>"}) for n in range(3)]  # fmt: skip
    alice = scope_for(settings, "alice")
    learning.learn(bs, alice, "spam", [Found(str(n), r) for n, r in enumerate(spams)])
    learning.learn(bs, alice, "ham", [Found(str(n), r) for n, r in enumerate(hams)])
    eng, service = engine(
        {"bayes": {"min_learns": 3, "per_user": True, "user_name": "local_part"}}, store=store
    )
    spammy = message("cheap pills casino prize winner offer\r\n", subject="WIN",
                     headers={"Message-ID": "<new1@x>"})  # fmt: skip
    # When mail comes for her address extension, her statistics judge it
    v = scan(eng, service, spammy, rcpts=["Alice+news@example.net"])
    assert "global" not in {s.name: s for s in v.symbols}["BAYES_SPAM"].options
    # and not for bob, who learned nothing
    assert "BAYES_INACTIVE" in names(scan(eng, service, spammy, rcpts=["bob@example.net"]))


def test_per_user_mail_for_an_untrained_user_is_judged_by_the_global_set(store: Store) -> None:
    # Given global statistics (learned before per_user was switched on)
    _train(store, 3, 3)
    spammy = message("cheap pills casino prize winner offer\r\n", subject="WIN",
                     headers={"Message-ID": "<new1@x>"})  # fmt: skip
    on = {"min_learns": 3, "per_user": True}
    eng, service = engine({"bayes": on}, store=store)
    # When mail comes for a user who trained nothing, the global set judges it
    v = scan(eng, service, spammy, rcpts=["carol@example.net"])
    bayes_spam = {s.name: s for s in v.symbols}["BAYES_SPAM"]
    assert "global" in bayes_spam.options
    # Unless the fallback is off: then Bayes waits for her training
    eng, service = engine({"bayes": {**on, "global_fallback": False}}, store=store)
    assert "BAYES_INACTIVE" in names(scan(eng, service, spammy, rcpts=["carol@example.net"]))


def test_the_milter_tokenizes_mail_as_learn_will_read_it_from_the_mailbox() -> None:
    from milters.message import Envelope, Message
    from milters.spam.view import MessageView
    from postwarden.bayes.classifier import token_ids
    from postwarden.bayes.tokens import parse

    # Postfix drops Return-Path from incoming mail; delivery adds the envelope sender
    raw = message("cheap pills\r\n", headers={"Message-ID": "<rp@x>"})
    delivered = (b"Return-Path: <bulk@sender.example>\r\nX-Original-To: a@example.net\r\n"
                 b"Delivered-To: a@example.net\r\n" + raw)  # fmt: skip
    env = Envelope(mail_from="bulk@sender.example", recipients=("a@example.net",))
    in_transit = MessageView(Message.from_bytes(raw), env).bayes_token_ids
    assert in_transit == token_ids(parse(delivered)) != token_ids(parse(raw))
    # A forged Return-Path in transit is what delivery replaces: the envelope wins
    forged = b"Return-Path: <someone@else.example>\r\n" + raw
    assert MessageView(Message.from_bytes(forged), env).bayes_token_ids == in_transit
    # A stored message given to `postwarden scan` without --from keeps its own
    unknown = Envelope(mail_from="", recipients=("a@example.net",))
    assert MessageView(Message.from_bytes(delivered), unknown).bayes_token_ids == in_transit
