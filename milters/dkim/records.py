"""DKIM key records from DNS (RFC 6376 section 3.6.2), cached in Redis.

`KeyRecords.fetch(name)` is the `dnsfunc` seam dkimpy offers: the engine
passes the fetched text to dkimpy per call, so nothing global is patched.
Lookups go through the project's resolver (`dns.nameservers`, `dns.timeout`)
with their lifetime cut to what is left of the message's time budget.

Found records are kept in Redis for their DNS TTL (at most `key_cache_ttl`),
shared by every milter process and host. Redis being away only costs the
cache: the lookup goes to DNS and the failure is logged once per minute.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import dns.exception
import dns.resolver

from postwarden.budget import Budget
from postwarden.errors import StoreUnavailable
from postwarden.logs import RateLimitedLog
from postwarden.store.client import Store, unavailable_on_error

log = logging.getLogger("postwarden.milter.dkim")

# Below this much budget a lookup is not started: the answer could not be used.
MIN_LOOKUP_TIME = 0.05


class KeyTemporaryError(Exception):
    """The key record could not be fetched now (timeout, SERVFAIL): temperror."""


class KeyRecords:
    """Fetches key TXT records: Redis cache first, then DNS."""

    def __init__(
        self,
        resolver: Callable[[], dns.resolver.Resolver],
        store: Callable[[], Store] | None,
        timeout: float,
        max_ttl: float,
    ) -> None:
        self._resolver = resolver
        self._store = store
        self.timeout = timeout
        self.max_ttl = int(max_ttl)
        self._redis_errors = RateLimitedLog(log, interval=60.0)

    def fetch(self, name: str, budget: Budget) -> str | None:
        """The record's text (character-strings joined), None when there is none.

        Raises KeyTemporaryError when DNS did not answer within
        min(dns.timeout, the budget left).
        """
        name = name.rstrip(".").lower()
        cached = self._cached(name)
        if cached is not None:
            return cached
        answer = self.txt(name, budget)
        if answer is None:
            return None
        texts, ttl = answer
        # RFC 6376 section 3.6.2.2: strings of one record are concatenated;
        # more than one record is ambiguous, so only the first counts.
        text = texts[0] if texts else None
        if text is not None:
            self._remember(name, text, min(ttl, self.max_ttl))
        return text

    def txt(self, name: str, budget: Budget) -> tuple[list[str], int] | None:
        """Every TXT record at `name` (strings joined) and the TTL; None if none.

        No cache but the resolver's own; KeyTemporaryError when DNS fails.
        """
        lifetime = budget.cap(self.timeout)
        if lifetime < MIN_LOOKUP_TIME:
            raise KeyTemporaryError("no time left in the message's budget for DNS")
        try:
            answer = self._resolver().resolve(
                name.rstrip(".") + ".", "TXT", lifetime=lifetime, raise_on_no_answer=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.Timeout:
            raise KeyTemporaryError(f"DNS timeout for {name}") from None
        except (dns.resolver.NoNameservers, dns.exception.DNSException) as exc:
            raise KeyTemporaryError(f"DNS error for {name}: {exc}") from None
        if answer.rrset is None:
            return None
        texts = [b"".join(r.strings).decode("ascii", "replace") for r in answer.rrset]
        return texts, int(answer.rrset.ttl)

    def _cached(self, name: str) -> str | None:
        if self._store is None or self.max_ttl <= 0:
            return None
        try:
            store = self._store()
            with unavailable_on_error():
                value = store.redis.get(store.keys.dkim_key_record(name))
        except StoreUnavailable as exc:
            self._redis_errors.warning("get", "dkim key cache unavailable, asking DNS: %s", exc)
            return None
        if value is None:
            return None
        return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)

    def _remember(self, name: str, text: str, ttl: int) -> None:
        if self._store is None or ttl <= 0:
            return
        try:
            store = self._store()
            with unavailable_on_error():
                store.redis.set(store.keys.dkim_key_record(name), text, ex=ttl)
        except StoreUnavailable as exc:
            self._redis_errors.warning("set", "dkim key cache unavailable: %s", exc)
