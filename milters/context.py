"""What a milter engine may use besides the message: all passed in, no globals.

`ServiceContext` is built once per milter process (and once per `postwarden
scan` run): the settings, a clock, the shared Redis client, a DNS resolver
from `dns`, the `postwarden stat` counters and a place to report build-time
problems with file:line. Redis and DNS are opened on first use, so an engine
that needs neither (the headers milter) never touches them and `config
check` builds engines without connecting anywhere.

`MessageContext` is what one message gets: the service context, its time
budget, the queue ID and a logger that carries it. libmilter calls engines
from several threads at once; everything here is safe to share between them
(redis-py's pool and dnspython's resolver are thread-safe, the lazy opening
is locked).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import dns.resolver

from postwarden.budget import Budget
from postwarden.clock import Clock, SystemClock
from postwarden.config.errors import ConfigProblem
from postwarden.config.schema import Settings
from postwarden.stats import StatBuffer
from postwarden.store.client import Store

log = logging.getLogger("postwarden.milter")

StoreFactory = Callable[[Settings], Store]
ResolverFactory = Callable[[Settings], dns.resolver.Resolver]


def _default_store(settings: Settings) -> Store:
    from postwarden.store.client import open_configured_store

    return open_configured_store(settings)


def _default_resolver(settings: Settings) -> dns.resolver.Resolver:
    from postwarden.resolver import make_resolver

    return make_resolver(settings.dns)


@dataclass
class ServiceContext:
    """Per-process resources for engines; tests pass their own factories."""

    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    stats: StatBuffer = field(default_factory=StatBuffer)
    problems: list[ConfigProblem] = field(default_factory=list)
    store_factory: StoreFactory = _default_store
    resolver_factory: ResolverFactory = _default_resolver
    _store: Store | None = None
    _resolver: dns.resolver.Resolver | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def store(self) -> Store:
        """The shared Redis client (opened on first use; commands raise
        StoreUnavailable when Redis is away, and reconnect by themselves)."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = self.store_factory(self.settings)
        return self._store

    @property
    def resolver(self) -> dns.resolver.Resolver:
        """A resolver built from `dns` (nameservers, timeout)."""
        if self._resolver is None:
            with self._lock:
                if self._resolver is None:
                    self._resolver = self.resolver_factory(self.settings)
        return self._resolver

    @property
    def has_store(self) -> bool:
        return self._store is not None

    def problem(
        self, file: str, line: int, key: str, message: str, severity: str = "error"
    ) -> None:
        """Report a problem found while building (a bad rule line, a missing key file)."""
        self.problems.append(ConfigProblem(file, line, key, message, severity))

    def setting_problem(self, key: str, message: str, severity: str = "error") -> None:
        """Report a problem with the setting at `key` (e.g. `milters.dkim.keys[0]`,
        a key file that cannot be read), placed at the config line that set it."""
        self.problems.append(self.settings.locations.problem(key, message, severity))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


@dataclass
class MessageContext:
    """One message's view: the service's resources plus its budget and IDs.

    `shared` holds what an earlier engine of the same pipeline learned about
    this message (`postwarden scan` runs every engine in one process); under
    Postfix each milter is its own process, so engines must not rely on it
    and pass verdicts between milters through headers or Redis.
    """

    service: ServiceContext
    budget: Budget
    queue_id: str = ""
    message_id: str = ""
    shared: MutableMapping[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return self.service.settings

    @property
    def store(self) -> Store:
        return self.service.store

    @property
    def resolver(self) -> dns.resolver.Resolver:
        return self.service.resolver

    @property
    def clock(self) -> Clock:
        return self.service.clock

    @property
    def stats(self) -> StatBuffer:
        return self.service.stats

    @property
    def log(self) -> logging.Logger:
        """The milter logger; the pipeline sets the queue ID and Message-ID
        as log context (`postwarden.logs`) in whichever thread runs the engine."""
        return log

    @classmethod
    def offline(
        cls, settings: Settings | None = None, *, budget: float = 30.0, **kwargs: Any
    ) -> MessageContext:
        """A context for unit tests and tools: no Redis unless one is asked for."""
        return cls(ServiceContext(settings or Settings(), **kwargs), Budget(budget))
