"""The greylist action shares the policy daemon's triplets in Redis."""

from __future__ import annotations

from ipaddress import ip_address

from milters.message import Action
from postwarden.clock import ManualClock
from postwarden.store.client import Store
from tests.unit.milters.spam.engine_setup import NOW, engine, message, names, scan

GREY = {"thresholds": {"greylist": 2, "add_header": 100, "reject": 100}}


def test_first_delivery_is_deferred_451_and_a_retry_after_delay_passes(store: Store) -> None:
    clock = ManualClock(NOW)
    eng, svc = engine(GREY, store=store, clock=clock)
    raw = message(drop=("Message-ID",))  # MISSING_MID 2.5
    first = scan(eng, svc, raw)
    assert first.action is Action.GREYLIST
    assert first.reply is not None and (first.reply.code, first.reply.enhanced) == (451, "4.7.1")
    # Too early: still deferred (policyd.greylist.delay, 300s by default)
    clock.advance(10)
    assert scan(eng, svc, raw).action is Action.GREYLIST
    clock.advance(400)
    retry = scan(eng, svc, raw)
    assert retry.action is Action.ACCEPT
    assert "GREYLIST_PASSED" in names(retry)


def test_the_triplet_is_the_policy_daemons_key_so_a_pass_there_passes_here(
    store: Store,
) -> None:
    from policyd.checks import greylist as policyd_greylist
    from postwarden.config.schema import Settings

    # Given the key the policy daemon writes for this (client, sender, rcpt)
    g = Settings().policyd.greylist
    n = policyd_greylist.Normaliser.from_settings(g)
    net = policyd_greylist.client_network(ip_address("198.51.100.7"), g.ipv4_prefix, g.ipv6_prefix)
    key = store.keys.greylist_triplet(
        net, n.sender("alice@example.org"), n.recipient("bob@example.net")
    )
    # ... marked as passed (a retry that got through at RCPT time)
    store.redis.hset(key, mapping={"first": NOW - 600, "last": NOW - 300, "passed": 1})
    store.redis.expire(key, 3600)
    # When the spam milter's greylist threshold is reached for that triplet
    eng, svc = engine(GREY, store=store, clock=ManualClock(NOW))
    v = scan(eng, svc, message(drop=("Message-ID",)))
    # Then it is not greylisted again
    assert v.action is Action.ACCEPT
    assert "GREYLIST_PASSED" in names(v)


def test_greylist_with_redis_away_accepts_and_says_so() -> None:
    from postwarden.config.schema import RedisSettings
    from postwarden.store.client import open_store

    dead = open_store(RedisSettings(prefix="x:"), "/nonexistent/redis.sock")
    eng, svc = engine(GREY, store=dead)
    v = scan(eng, svc, message(drop=("Message-ID",)))
    assert v.action is Action.ACCEPT
    assert "STORE_UNAVAILABLE" in names(v)
