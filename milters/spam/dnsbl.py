"""DNS list lookups (RFC 5782): many queries at once, inside one time budget.

A list answers a query for `<reversed IP>.<zone>` (IPv4: octets reversed;
IPv6: nibbles reversed, RFC 5782 section 2.4) or `<domain>.<zone>` with an A
record in 127.0.0.0/8 when listed, NXDOMAIN when not. Answers in
127.255.255.0/24 are error codes (Spamhaus: "you query through a public
resolver" or "over quota"): they are not listings and give DNSBL_REFUSED.

All queries of one message run concurrently on a thread pool shared by the
process (libmilter calls many messages at once: the pool bounds the threads);
the message waits for them together at most `timeout` (and never past its
budget); the ones still out become DNS_TIMEOUT{zone} and their threads end
with their own lifetime. Answers are cached in Redis with their TTL (capped)
so a busy server asks each list once per name; a cache that is away costs
speed, never the verdict.
"""

from __future__ import annotations

import concurrent.futures as cf
import ipaddress
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.resolver

from postwarden.errors import StoreUnavailable
from postwarden.store.client import Store, unavailable_on_error

NOT_LISTED = ""
ERROR_NET = ipaddress.ip_network("127.255.255.0/24")


@dataclass(frozen=True, slots=True)
class Query:
    qname: str
    zone: str
    subject: str  # the IP or domain asked about


@dataclass(frozen=True, slots=True)
class Answer:
    query: Query
    codes: tuple[str, ...] = ()  # A records; empty = not listed
    timed_out: bool = False
    error: str = ""


def ip_query_name(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, zone: str) -> str:
    if ip.version == 4:
        return ".".join(reversed(str(ip).split("."))) + "." + zone
    nibbles = ip.exploded.replace(":", "")
    return ".".join(reversed(nibbles)) + "." + zone


class Lookups:
    """The process-wide pool and the resolver; one `run()` per message."""

    def __init__(self, concurrency: int) -> None:
        self.pool = cf.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="dnsbl")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _ask(resolver: dns.resolver.Resolver, q: Query, lifetime: float) -> tuple[Answer, int]:
        """(answer, ttl) for one query; never raises."""
        try:
            ans = resolver.resolve(q.qname, "A", lifetime=max(0.01, lifetime), search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return Answer(q), -1
        except dns.exception.Timeout:
            return Answer(q, timed_out=True), 0
        except (dns.exception.DNSException, OSError) as exc:
            return Answer(q, error=exc.__class__.__name__), 0
        codes = tuple(sorted({r.to_text() for r in ans}))
        return Answer(q, codes), int(ans.rrset.ttl) if ans.rrset is not None else 0

    def run(self, resolver: dns.resolver.Resolver, queries: Sequence[Query], timeout: float,
            store: Store | None, ttl_max: float, ttl_negative: float) -> list[Answer]:  # fmt: skip
        """Every query answered (cache, then DNS), or marked timed out."""
        answers: dict[str, Answer] = {}
        cached = _cache_get(store, queries)
        todo = []
        for q in queries:
            hit = cached.get(q.qname)
            if hit is not None:
                answers[q.qname] = Answer(q, tuple(c for c in hit.split(",") if c))
            else:
                todo.append(q)
        deadline = time.monotonic() + timeout
        futures = {self.pool.submit(self._ask, resolver, q, timeout): q for q in todo}
        fresh: list[tuple[Answer, int]] = []
        done, pending = cf.wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        for f in done:
            answer, ttl = f.result()
            answers[answer.query.qname] = answer
            if not answer.timed_out and not answer.error:
                fresh.append((answer, ttl))
        for f in pending:
            f.cancel()
            q = futures[f]
            answers[q.qname] = Answer(q, timed_out=True)
        _cache_put(store, fresh, ttl_max, ttl_negative)
        return [answers[q.qname] for q in queries]


def _cache_get(store: Store | None, queries: Sequence[Query]) -> dict[str, str]:
    if store is None or not queries:
        return {}
    names = [q.qname for q in queries]
    try:
        with unavailable_on_error():
            values = store.redis.mget([store.keys.dnsbl_answer(n) for n in names])
    except StoreUnavailable:
        return {}
    return {n: v.decode() if isinstance(v, bytes) else str(v)
            for n, v in zip(names, values, strict=True) if v is not None}  # fmt: skip


def _cache_put(store: Store | None, fresh: Iterable[tuple[Answer, int]], ttl_max: float,
               ttl_negative: float) -> None:  # fmt: skip
    if store is None:
        return
    items = []
    for answer, ttl in fresh:
        life = min(float(ttl), ttl_max) if answer.codes else ttl_negative
        if ttl == -1 and not answer.codes:
            life = ttl_negative
        elif ttl <= 0:
            continue  # TTL 0: the list asked not to be cached
        if life >= 1:
            items.append(
                (store.keys.dnsbl_answer(answer.query.qname), ",".join(answer.codes), int(life))
            )
    if not items:
        return
    try:
        with unavailable_on_error():
            pipe = store.redis.pipeline(transaction=False)
            for key, value, life in items:
                pipe.set(key, value, ex=life)
            pipe.execute()
    except StoreUnavailable:
        return


def is_error_code(code: str) -> bool:
    try:
        return ipaddress.ip_address(code) in ERROR_NET
    except ValueError:
        return True
