from __future__ import annotations

import asyncio

from postwarden.store.client import Store
from postwarden.store.embedded import EmbeddedRedis
from tests.conftest import make_async_store


def test_stat_counter_increments_and_carries_ttl(store: Store) -> None:
    store.count("scanned")
    store.count("scanned", 2)
    key = store.keys.stat("scanned")
    assert store.redis.get(key) == b"3"
    assert 0 < store.redis.ttl(key) <= 400 * 86400


def test_script_survives_script_cache_flush(store: Store) -> None:
    store.count("x")
    store.redis.script_flush()  # what a Redis restart or failover does to the cache
    store.count("x")
    assert store.redis.get(store.keys.stat("x")) == b"2"


def test_async_store_runs_the_same_scripts(redis_server: EmbeddedRedis, store: Store) -> None:
    async def go() -> int:
        s = make_async_store(redis_server)
        try:
            await s.count("async")
            await s.count("async")
            return int(await s.redis.get(s.keys.stat("async")))
        finally:
            await s.close()

    assert asyncio.run(go()) == 2


def test_keys_use_prefix_and_hash_tags(store: Store) -> None:
    k = store.keys
    assert k.stat("a").startswith("pwtest:")
    rl = k.ratelimit("user@example.com", "r1", "60")
    known = k.known_recipients("user@example.com")
    # Both keys of one subject share a hash tag, so one script may touch both on Cluster.
    assert rl[rl.index("{") : rl.index("}")] == known[known.index("{") : known.index("}")]
