"""Every Prometheus metric, defined once.

Names are `postwarden_<component>_<noun>_total`; labels come only from closed
sets (action, check, kind, milter), never from senders, recipients or IPs.
Under `postwarden run` the children write to a shared multiprocess directory
(PROMETHEUS_MULTIPROC_DIR, set by the supervisor before they start) and the
supervisor serves the merged view on `metrics.listen`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from postwarden.errors import StartupError

POLICY_REQUESTS = Counter(
    "postwarden_policyd_requests_total", "Policy requests answered, by action verb", ["action"]
)
POLICY_ERRORS = Counter(
    "postwarden_policyd_errors_total",
    "Policy requests answered with the on_error fallback or refused, and connections"
    " closed by admission (evicted_idle, evicted_stalled, refused) or a deadline"
    " (slow_client), by cause",
    ["kind"],
)
POLICY_LATENCY = Histogram(
    "postwarden_policyd_request_seconds",
    "Time to answer one policy request",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
CHECK_DECISIONS = Counter(
    "postwarden_check_decisions_total", "Answers given by each policy check", ["check", "verb"]
)
MILTER_MESSAGES = Counter(
    "postwarden_milter_messages_total", "Messages decided by each milter", ["milter", "action"]
)
MILTER_ERRORS = Counter(
    "postwarden_milter_errors_total",
    "Messages that got a milter's on_error fallback, by cause",
    ["milter", "kind"],
)

# Latency buckets: a policy check or a milter answers in well under a
# millisecond from Redis and memory, DNS makes it tens to hundreds, and the
# budgets cap it at seconds.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

MILTER_LATENCY = Histogram(
    "postwarden_milter_decision_seconds",
    "Time for one milter to decide one message (from end of data)",
    ["milter"],
    buckets=_LATENCY_BUCKETS,
)
MILTER_SYMBOLS = Counter(
    "postwarden_milter_symbols_total",
    "Symbols (named findings with a score) a milter reported, by symbol",
    ["milter", "symbol"],
)
CHECK_LATENCY = Histogram(
    "postwarden_policyd_check_seconds",
    "Time one policy check took for one request",
    ["check"],
    buckets=_LATENCY_BUCKETS,
)
REDIS_ERRORS = Counter(
    "postwarden_redis_errors_total",
    "Redis commands that failed: timeout or connection (each is on_error for a request)",
    ["kind"],
)
DNS_ERRORS = Counter(
    "postwarden_dns_errors_total",
    "DNS lookups that failed: timeout or servfail (no answer from any nameserver)",
    ["kind"],
)

# Series of closed label sets exist from the start at 0, so rate() and
# alerts see them before the first failure (Prometheus "instrumentation").
for _kind in ("timeout", "connection"):
    REDIS_ERRORS.labels(_kind)
for _kind in ("timeout", "servfail"):
    DNS_ERRORS.labels(_kind)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_MILTER_ERROR_KINDS = ("store", "dns", "timeout", "bug")
_seen_milters: set[str] = set()


def milter_decided(milter: str, action: str, seconds: float, symbols: list[str]) -> None:
    """Count one milter decision: its action, its latency, its symbols."""
    if milter not in _seen_milters:  # its error series start at 0 (see above)
        _seen_milters.add(milter)
        for kind in _MILTER_ERROR_KINDS:
            MILTER_ERRORS.labels(milter, kind)
    MILTER_MESSAGES.labels(milter, action).inc()
    MILTER_LATENCY.labels(milter).observe(seconds)
    for name in symbols:
        MILTER_SYMBOLS.labels(milter, name).inc()


class RestartsCollector:
    """`postwarden_supervisor_restarts_total{service}`: children and the
    embedded Redis restarted by `postwarden run`. The supervisor counts in
    its own memory (it is not one of the multiprocess writers), so this
    collector reads its counts at scrape time. Labels: "redis", "policyd" or
    a milter's name."""

    def __init__(self, counts: Callable[[], Mapping[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "postwarden_supervisor_restarts",
            "Services restarted by the supervisor after they died, by service",
            labels=["service"],
        )
        for service, count in sorted(self._counts().items()):
            family.add_metric([service], count)
        yield family


@dataclass(frozen=True, slots=True)
class BayesSnapshot:
    """The global Bayes statistics as a scrape sees them."""

    spam: int
    ham: int
    active: bool
    model_fitted_at: float | None = None  # unix time of the svm fit, if any
    model_stale: bool = False  # learned more since that fit


class BayesCollector:
    """`postwarden_bayes_learned{class}`, `postwarden_bayes_active` and, once
    an svm model is fitted, its fit time and staleness: the global Bayes
    statistics, read from Redis at scrape time (learning happens in
    `postwarden learn`, not in a service that could count it). A scrape
    while Redis is away yields nothing rather than failing the endpoint."""

    def __init__(self, read: Callable[[], BayesSnapshot]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self._read()
        except Exception:
            return
        spam, ham, active = snap.spam, snap.ham, snap.active
        learned = GaugeMetricFamily(
            "postwarden_bayes_learned", "Messages Bayes has learned, by class", labels=["class"]
        )
        learned.add_metric(["spam"], spam)
        learned.add_metric(["ham"], ham)
        yield learned
        yield GaugeMetricFamily(
            "postwarden_bayes_active",
            "1 when Bayes has learned min_learns spam and ham and scores mail",
            value=int(active),
        )
        if snap.model_fitted_at is not None:
            # Alert on time() - this: a model the upkeep timer stopped refitting.
            yield GaugeMetricFamily(
                "postwarden_bayes_model_fitted_timestamp_seconds",
                "When the svm model was last fitted (unix time)",
                value=snap.model_fitted_at,
            )
            yield GaugeMetricFamily(
                "postwarden_bayes_model_stale",
                "1 when messages were learned after the svm model's fit",
                value=int(snap.model_stale),
            )


def serve(listen: str, collectors: Sequence[Collector] = ()) -> None:
    """Serve /metrics on host:port (merged over processes when multiprocess)."""
    host, _, port = listen.rpartition(":")
    registry = None
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        for collector in collectors:
            registry.register(collector)
    addr = host.strip("[]") or "127.0.0.1"
    try:
        if registry is None:
            start_http_server(int(port), addr=addr)
        else:
            start_http_server(int(port), addr=addr, registry=registry)
    except OSError as exc:
        raise StartupError(
            f"metrics.listen: cannot listen on {listen}: {exc.strerror};"
            " stop what listens there or pick another port"
        ) from None
