"""Build Redis clients from `redis` settings, and turn their failures into
`StoreUnavailable`.

Milters run on libmilter's threads and share one sync client (its pool is
thread-safe); policyd uses `redis.asyncio`. Both come from here and cover
redis://, rediss://, unix://, Sentinel and Cluster. Reconnection is redis-py's
job: the pool drops a dead connection and the next command opens a new one,
with a short bounded retry so a Redis restart costs at most one fallback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from postwarden import metrics
from postwarden.config.schema import RedisSettings, Settings
from postwarden.errors import StoreUnavailable
from postwarden.store.keys import STAT_TTL, Keys
from postwarden.store.scripts import ScriptSet

# Connection-level failures become StoreUnavailable; anything else (a script
# bug, WRONGTYPE) stays a bug and reaches the service's error handler as one.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.sentinel.MasterNotFoundError,
    ConnectionError,
    TimeoutError,
)


@contextlib.contextmanager
def unavailable_on_error() -> Iterator[None]:
    """Translate connection failures (sync or async code) into StoreUnavailable."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        metrics.REDIS_ERRORS.labels(store_error_kind(exc)).inc()
        raise StoreUnavailable(f"redis unavailable: {exc}") from exc


def store_error_kind(exc: BaseException) -> str:
    """`timeout` (Redis did not answer within redis.timeout) or `connection`."""
    return (
        "timeout" if isinstance(exc, TimeoutError | redis.exceptions.TimeoutError) else "connection"
    )


def _options(settings: RedisSettings) -> dict[str, Any]:
    t = float(settings.timeout)
    return {
        "socket_timeout": t,
        "socket_connect_timeout": t,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.02), 1),
        "health_check_interval": 30,
    }


def url_for(settings: RedisSettings, embedded_socket: str | None) -> str:
    if settings.url:
        return settings.url
    if embedded_socket is None:
        raise ValueError("no redis.url and no embedded Redis socket")
    return f"unix://{embedded_socket}"


def connect_sync(settings: RedisSettings, embedded_socket: str | None = None) -> Any:
    """A sync client (redis.Redis or RedisCluster) for the milters and the CLI."""
    opts = _options(settings)
    if settings.sentinel is not None:
        sentinel = redis.sentinel.Sentinel(
            [_hostport(h) for h in settings.sentinel.hosts],
            socket_timeout=opts["socket_timeout"],
        )
        return sentinel.master_for(settings.sentinel.service, **opts)
    url = url_for(settings, embedded_socket)
    if settings.cluster:
        return redis.cluster.RedisCluster.from_url(
            url,
            socket_timeout=opts["socket_timeout"],
            socket_connect_timeout=opts["socket_timeout"],
        )
    return redis.Redis.from_url(url, **opts)


def connect_async(settings: RedisSettings, embedded_socket: str | None = None) -> Any:
    """An asyncio client for policyd; same targets as `connect_sync`."""
    opts = _options(settings)
    opts["retry"] = redis.asyncio.retry.Retry(ExponentialBackoff(cap=0.5, base=0.02), 1)
    if settings.sentinel is not None:
        sentinel = redis.asyncio.sentinel.Sentinel(
            [_hostport(h) for h in settings.sentinel.hosts],
            socket_timeout=opts["socket_timeout"],
        )
        return sentinel.master_for(settings.sentinel.service, **opts)
    url = url_for(settings, embedded_socket)
    if settings.cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(
            url,
            socket_timeout=opts["socket_timeout"],
            socket_connect_timeout=opts["socket_timeout"],
        )
    return redis.asyncio.Redis.from_url(url, **opts)


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port or 26379)


class Store:
    """A sync client with its key names and scripts; for milters and the CLI."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self.scripts = ScriptSet(client)

    def run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run `lua/<script>.lua` by SHA; StoreUnavailable if Redis is away."""
        with unavailable_on_error():
            return self.scripts[script](keys=keys, args=args)

    def count(self, stat: str, amount: int = 1) -> None:
        """Bump a `postwarden stat` counter (best effort: never fails the caller)."""
        try:
            with unavailable_on_error():
                self.run("stat_incr", [self.keys.stat(stat)], [amount, STAT_TTL])
        except StoreUnavailable:
            pass

    def close(self) -> None:
        self.redis.close()


class AsyncStore:
    """The asyncio twin of `Store`, for policyd; same keys, same scripts."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self.scripts = ScriptSet(client)

    async def run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        with unavailable_on_error():
            return await self.scripts[script](keys=keys, args=args)

    async def count(self, stat: str, amount: int = 1) -> None:
        try:
            await self.run("stat_incr", [self.keys.stat(stat)], [amount, STAT_TTL])
        except StoreUnavailable:
            pass

    async def close(self) -> None:
        await self.redis.aclose()


def open_store(settings: RedisSettings, embedded_socket: str | None = None) -> Store:
    return Store(connect_sync(settings, embedded_socket), Keys(settings.prefix))


def open_async_store(settings: RedisSettings, embedded_socket: str | None = None) -> AsyncStore:
    return AsyncStore(connect_async(settings, embedded_socket), Keys(settings.prefix))


def uses_embedded(settings: Settings) -> bool:
    """Whether the suite runs its own redis-server (no `redis.url`, no Sentinel)."""
    return settings.redis.url is None and settings.redis.sentinel is None


def configured_socket(settings: Settings) -> str | None:
    """The embedded server's socket under `state_dir`, or None when a URL/Sentinel is set."""
    from postwarden.store import embedded

    return embedded.socket_path(settings.state_dir) if uses_embedded(settings) else None


def open_configured_store(settings: Settings) -> Store:
    """The one place that decides between `redis.url`/Sentinel and the
    embedded server under `state_dir` (which `postwarden run` starts)."""
    return open_store(settings.redis, configured_socket(settings))


def open_configured_async_store(settings: Settings) -> AsyncStore:
    """`open_configured_store` for asyncio code (policyd)."""
    return open_async_store(settings.redis, configured_socket(settings))
