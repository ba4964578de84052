"""Counters for `postwarden stat`, buffered in process and flushed to Redis.

Counting in Redis on every message would add a round trip to the hot path;
instead each service adds to an in-memory buffer and flushes it in one
pipeline every few seconds (and at shutdown). A flush that fails keeps the
counts for the next try, so a Redis outage loses nothing but freshness.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from postwarden.errors import StoreUnavailable
from postwarden.store.client import unavailable_on_error
from postwarden.store.keys import STAT_TTL, Keys

FLUSH_INTERVAL = 5.0


class StatBuffer:
    """Thread-safe counter buffer (milters count from libmilter threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def take(self) -> Counter[str]:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        return counts

    def give_back(self, counts: Counter[str]) -> None:
        with self._lock:
            self._counts.update(counts)

    def _fill(self, pipe: Any, keys: Keys, counts: Counter[str]) -> None:
        for name, amount in counts.items():
            key = keys.stat(name)
            pipe.incrby(key, amount)
            pipe.expire(key, STAT_TTL)

    def flush(self, client: Any, keys: Keys) -> bool:
        """Write buffered counts with a sync client; False (counts kept) on failure."""
        counts = self.take()
        if not counts:
            return True
        try:
            with unavailable_on_error():
                pipe = client.pipeline(transaction=False)
                self._fill(pipe, keys, counts)
                pipe.execute()
        except StoreUnavailable:
            self.give_back(counts)
            return False
        return True

    async def flush_async(self, client: Any, keys: Keys) -> bool:
        counts = self.take()
        if not counts:
            return True
        try:
            with unavailable_on_error():
                pipe = client.pipeline(transaction=False)
                self._fill(pipe, keys, counts)
                await pipe.execute()
        except StoreUnavailable:
            self.give_back(counts)
            return False
        return True


# Actions a milter verdict can have (milters.message.Action values), in the
# order `postwarden stat` lists them, as `rspamc stat` does.
MILTER_ACTIONS = ("accept", "add_header", "rewrite_subject", "greylist", "tempfail",
                  "quarantine", "reject", "discard")  # fmt: skip


def milter_action_shares(counters: dict[str, int]) -> dict[str, list[tuple[str, int, float]]]:
    """Per milter with a `milter.NAME.scanned` counter: (action, count, share of
    scanned) for every action, zeros included, like `rspamc stat`."""
    out: dict[str, list[tuple[str, int, float]]] = {}
    for key, scanned in sorted(counters.items()):
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "milter" or parts[2] != "scanned":
            continue
        name = parts[1]
        rows = []
        for action in MILTER_ACTIONS:
            n = counters.get(f"milter.{name}.{action}", 0)
            rows.append((action, n, n / scanned if scanned else 0.0))
        out[name] = rows
    return out
