"""Bayes: tokenizer, statistics in a real Redis, learning and classifying."""

from __future__ import annotations

import dataclasses

import pytest

from postwarden.bayes import learning
from postwarden.bayes.classifier import (
    UNSURE_BAND,
    classify,
    confidence,
    message_digest,
    token_ids,
)
from postwarden.bayes.combine import CombineParams, chi2q, combine
from postwarden.bayes.sources import Found
from postwarden.bayes.store import GLOBAL_SCOPE, BayesStore, scope_for
from postwarden.bayes.tokens import TokenizerOptions, parse, tokenize
from postwarden.config.sections.bayes import BayesSettings
from postwarden.store.client import Store


def mail(subject: str, body: str, msgid: str, extra: str = "") -> bytes:
    return (
        f"From: Sender <s@example.org>\nTo: r@example.net\nSubject: {subject}\n"
        f"Message-ID: <{msgid}@example.org>\n{extra}\n{body}\n"
    ).encode()


SPAMMY = "cheap pills viagra casino winner claim your prize now http://spam.example.biz/x"
HAMMY = "the meeting notes for the compiler release are attached see you tomorrow"


def spam(n: int) -> bytes:
    return mail(f"WIN big {n}", f"{SPAMMY} offer{n}", f"spam{n}")


def ham(n: int) -> bytes:
    return mail(f"release {n}", f"{HAMMY} item{n}", f"ham{n}")


def test_tokens_are_decoded_casefolded_words_urls_and_bigrams() -> None:
    raw = (
        "From x@y Mon Jan  1 00:00:00 2024\n"
        "From: =?utf-8?q?Gr=C3=BC=C3=9Fe?= <a@Mail.Example.ORG>\n"
        "Subject: =?utf-8?b?w5xCRVJHUsOWU1NF?= Angebot\n"
        "X-Spam: Yes\n"
        "Content-Type: text/plain; charset=utf-8\n\n"
        "Straße GROSS a visit https://www.shop.example.com/buy " + "x" * 80 + "\n"
    ).encode()
    tokens = tokenize(raw, TokenizerOptions(osb_window=5))
    assert {"strasse", "gross", "visit"} <= tokens  # casefold: ß -> ss
    assert "a" not in tokens  # shorter than MIN_WORD
    assert "s:übergrösse" in tokens and "s:angebot" in tokens  # decoded, case-folded
    assert {"url:www.shop.example.com", "url:example.com"} <= tokens
    assert "long:10" in tokens  # the 80-character run is one length-band token
    assert "strasse\x1f1\x1fgross" in tokens and "strasse\x1f2\x1fvisit" in tokens  # OSB
    assert "h:from:@mail.example.org" in tokens
    assert not any(t.startswith("h:x-spam") for t in tokens)  # verdicts never taught


def test_list_and_resend_headers_are_not_tokens_but_the_senders_are() -> None:
    """Spam posted to a list must not wear the list's ham evidence."""
    raw = mail(
        "cheap",
        "pills",
        "l1",
        "List-Id: Friends of Rohit <fork.xent.com>\n"
        "List-Unsubscribe: <mailto:fork-request@xent.com?subject=unsubscribe>\n"
        "X-BeenThere: fork@xent.com\nX-Mailman-Version: 2.0.11\n"
        "Sender: fork-admin@xent.com\nResent-From: gateway@example.com\n"
        "X-Mailer: Spamware 2.1\nReply-To: sales@shop.example.biz\n",
    )
    tokens = tokenize(raw)
    path = ("h:list-", "h:x-beenthere", "h:x-mailman", "h:sender", "h:resent-")
    assert not any(t.startswith(path) for t in tokens), sorted(tokens)
    assert {"h:x-mailer:spamware", "h:reply-to:@shop.example.biz", "h:from:@example.org"} <= tokens


def test_tokens_of_html_are_its_text_and_link_hosts() -> None:
    raw = (
        b"Subject: x\nContent-Type: text/html\n\n"
        b"<html><style>.a{color:red}</style><p>Hello <b>World</b>"
        b"<a href='http://click.example.net/t'>here</a></p>"
    )
    tokens = tokenize(raw)
    assert {"hello", "world", "here", "url:click.example.net", "h:html"} <= tokens
    assert "color" not in tokens


def test_tokens_of_a_ten_megabyte_line_stay_bounded() -> None:
    raw = b"Subject: big\n\n" + b"A" * (10 * 1024 * 1024) + b"\n"
    tokens = tokenize(raw, TokenizerOptions())
    assert len(tokens) < 50


def test_chi2_combining_follows_robinson() -> None:
    assert abs(chi2q(0.0, 2) - 1.0) < 1e-12
    p = CombineParams()
    assert combine([(20, 0)] * 10, 100, 100, p).probability > 0.99
    assert combine([(0, 20)] * 10, 100, 100, p).probability < 0.01
    assert combine([], 100, 100, p).probability == 0.5


def test_digest_ignores_trace_headers_and_mbox_line() -> None:
    a = b"Received: from a\nMessage-ID: <1@x>\nSubject: s\n\nbody\n"
    b = b"From x Mon Jan  1 00:00:00 2024\nX-Spam: Yes\nMessage-ID: <1@x>\nSubject: s\n\nbody\n"
    assert message_digest(a) == message_digest(b)
    assert message_digest(a) != message_digest(a.replace(b"body", b"other"))


def bayes(store: Store, **kw: object) -> BayesStore:
    return BayesStore(store, dataclasses.replace(BayesSettings(), **kw))  # type: ignore[arg-type]


def learn(bs: BayesStore, action: str, *raws: bytes) -> learning.LearnSummary:
    items = [Found(f"m{n}", r) for n, r in enumerate(raws)]
    return learning.learn(bs, GLOBAL_SCOPE, action, items)


def test_learning_twice_does_nothing_and_the_other_class_moves_tokens(store: Store) -> None:
    bs = bayes(store)
    raw = spam(1)
    ids = token_ids(parse(raw))
    assert learn(bs, "spam", raw).learned == 1
    assert learn(bs, "spam", raw).known == 1
    assert bs.state(GLOBAL_SCOPE).spam == 1
    assert set(bs.counts(GLOBAL_SCOPE, ids).counts) == {(1, 0)}

    assert learn(bs, "ham", raw).relearned == 1
    state = bs.state(GLOBAL_SCOPE)
    assert (state.spam, state.ham) == (0, 1)
    assert set(bs.counts(GLOBAL_SCOPE, ids).counts) == {(0, 1)}

    assert learn(bs, "forget", raw).forgotten == 1
    assert learn(bs, "forget", raw).unknown == 1
    assert set(bs.counts(GLOBAL_SCOPE, ids).counts) == {(0, 0)}
    assert list(store.redis.scan_iter(match=store.keys.bayes_pattern(GLOBAL_SCOPE, "t"))) == []


def test_every_key_has_a_ttl_and_rare_tokens_expire_sooner(store: Store) -> None:
    bs = bayes(store)
    learn(bs, "spam", spam(1), spam(2))
    s = bs.settings
    ttls = {k: store.redis.ttl(k) for k in store.redis.scan_iter(match="pwtest:bayes:*")}
    assert ttls and all(t > 0 for t in ttls.values())
    shared = store.keys.bayes_token(GLOBAL_SCOPE, token_ids(parse(mail("", "viagra", "z")))[0])
    token_ttls = {t for k, t in ttls.items() if b":t:" in k}
    assert max(token_ttls) <= s.token_ttl and min(token_ttls) <= s.rare_token_ttl
    assert any(t > s.rare_token_ttl for t in token_ttls)  # seen in both: the long TTL
    assert shared  # key name shape is the store's


def test_max_tokens_caps_new_tokens_but_known_ones_still_learn(store: Store) -> None:
    bs = bayes(store, max_tokens=1000)
    store.redis.hset(store.keys.bayes_state(GLOBAL_SCOPE), "tokens", 1000)
    learn(bs, "spam", spam(1))
    assert list(store.redis.scan_iter(match=store.keys.bayes_pattern(GLOBAL_SCOPE, "t"))) == []
    assert bs.state(GLOBAL_SCOPE).spam == 1
    assert bs.recount([GLOBAL_SCOPE]) == {GLOBAL_SCOPE: 0}


def test_classify_is_inactive_until_min_learns_of_both_classes(store: Store) -> None:
    bs = bayes(store, min_learns=5)
    learn(bs, "spam", *(spam(n) for n in range(5)))
    learn(bs, "ham", *(ham(n) for n in range(4)))
    r = classify(bs, bs.settings, parse(spam(99)), GLOBAL_SCOPE)
    assert (r.active, r.spam_learns, r.ham_learns, r.probability) == (False, 5, 4, None)
    learn(bs, "ham", ham(4))
    r = classify(bs, bs.settings, parse(spam(99)), GLOBAL_SCOPE)
    assert r.active and r.probability is not None and r.probability > 0.9
    assert r.spam_confidence(bs.settings) > 0.5
    h = classify(bs, bs.settings, parse(ham(99)), GLOBAL_SCOPE)
    assert h.probability is not None and h.probability < 0.1
    assert h.ham_confidence(bs.settings) > 0.5


def test_classify_is_one_redis_command(store: Store) -> None:
    bs = bayes(store, min_learns=1)
    learn(bs, "spam", spam(1))
    learn(bs, "ham", ham(1))
    store.redis.config_resetstat()
    classify(bs, bs.settings, parse(spam(2)), GLOBAL_SCOPE)
    stats = store.redis.info("commandstats")
    calls = {k: v["calls"] for k, v in stats.items() if k != "cmdstat_config"}
    # The script's own HMGETs count as commands too; the client sent one EVALSHA.
    sent = {k: n for k, n in calls.items() if k in ("cmdstat_evalsha", "cmdstat_eval")}
    assert sum(sent.values()) == 1, calls
    assert "cmdstat_script|load" not in calls or calls["cmdstat_script|load"] <= 1


def test_per_user_scopes_keep_users_apart(store: Store) -> None:
    s = dataclasses.replace(BayesSettings(), per_user=True)
    alice, bob = scope_for(s, "alice@example.org"), scope_for(s, "bob@example.org")
    assert alice != bob and scope_for(BayesSettings(), "alice@example.org") == GLOBAL_SCOPE
    bs = BayesStore(store, s)
    learning.learn(bs, alice, "spam", [Found("m", spam(1))])
    assert bs.state(alice).spam == 1 and bs.state(bob).spam == 0


def test_recount_counts_every_scopes_tokens_in_one_pass(store: Store) -> None:
    s = dataclasses.replace(BayesSettings(), per_user=True)
    alice, bob = scope_for(s, "alice@example.org"), scope_for(s, "bob@example.org")
    bs = BayesStore(store, s)
    learning.learn(bs, alice, "spam", [Found("m", spam(1))])
    learning.learn(bs, bob, "ham", [Found(f"m{n}", ham(n)) for n in range(3)])
    expected = {
        scope: sum(1 for _ in store.redis.scan_iter(match=store.keys.bayes_pattern(scope, "t")))
        for scope in (alice, bob, GLOBAL_SCOPE)
    }
    assert expected[alice] > 0 and expected[bob] > 0 and expected[GLOBAL_SCOPE] == 0
    # The state's upper bound, once too high, comes back to the truth
    store.redis.hset(store.keys.bayes_state(bob), "tokens", 10**6)
    store.redis.config_resetstat()
    assert bs.recount([alice, bob, GLOBAL_SCOPE]) == expected
    assert bs.state(bob).tokens == expected[bob]
    # One walk of the keyspace (this small one fits one SCAN reply), not one per scope
    assert store.redis.info("commandstats")["cmdstat_scan"]["calls"] == 1


def test_bayes_metrics_are_read_at_scrape_time_and_skip_a_missing_redis() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from postwarden.errors import StoreUnavailable
    from postwarden.metrics import BayesCollector, BayesSnapshot

    registry = CollectorRegistry()
    registry.register(BayesCollector(lambda: BayesSnapshot(250, 180, False)))
    text = generate_latest(registry).decode()
    assert 'postwarden_bayes_learned{class="spam"} 250.0' in text
    assert 'postwarden_bayes_learned{class="ham"} 180.0' in text
    assert "postwarden_bayes_active 0.0" in text
    assert "postwarden_bayes_model" not in text  # no svm model: no model series

    fitted = CollectorRegistry()
    fitted.register(BayesCollector(lambda: BayesSnapshot(250, 250, True, 1.7e9, True)))
    text = generate_latest(fitted).decode()
    assert "postwarden_bayes_model_fitted_timestamp_seconds 1.7e+09" in text
    assert "postwarden_bayes_model_stale 1.0" in text

    def down() -> BayesSnapshot:
        raise StoreUnavailable("redis down")

    quiet = CollectorRegistry()
    quiet.register(BayesCollector(down))
    assert "postwarden_bayes" not in generate_latest(quiet).decode()


def test_html_text_drops_comments_scripts_and_styles_and_keeps_link_targets() -> None:
    from postwarden.bayes.tokens import _html_text

    text, hrefs = _html_text(
        "<p>Cheap <b>pills</b><!-- hidden words --><script>var tracker=1;</script>"
        '<style>.x{color:red}</style> now <a href="http://shop.example/buy">here</a>'
    )
    assert text.split() == ["Cheap", "pills", "now", "here"]
    assert hrefs == ["http://shop.example/buy"]


@pytest.mark.parametrize(
    ("piece", "kept"),
    [("<", True), ("<!--", True), ("<script>", False), ("<a href='http://x.example/'>", False)],
)
def test_html_text_of_hostile_markup_is_read_as_a_browser_would(piece: str, kept: bool) -> None:
    # 400,000 characters of openers that never close (quadratic for a
    # backtracking pattern): a '<' that starts no tag stays as text, complete
    # tags (an unclosed <script> or <a>) are dropped.
    from postwarden.bayes.tokens import _html_text

    n = 400_000 // len(piece)
    text, _ = _html_text(piece * n)
    assert text.count(piece) == (n if kept else 0)
    assert kept or not text.strip()


def test_confidence_is_symmetric_and_grows_away_from_one_half() -> None:
    assert confidence(0.5) == 0.0
    ps = [0.5001, 0.505, 0.51, 0.6, 0.9, 0.999, 1 - 1e-6, 1 - 1e-9, 1.0]
    ws = [confidence(p) for p in ps]
    assert ws == sorted(ws) and len(set(ws)) == len(ws) - 1  # only 1-1e-9 and 1 both cap
    assert ws[-1] == 1.0
    for p, w in zip(ps, ws, strict=True):
        assert confidence(1.0 - p) == pytest.approx(w)


def test_confidence_is_already_half_at_the_edge_of_the_unsure_band() -> None:
    # chi-square's "unsure" spam sits at 0.51-0.55: a step that small counts.
    assert confidence(0.5 + UNSURE_BAND / 2) >= 0.5
    assert confidence(0.5 + UNSURE_BAND / 8) > 0.25
