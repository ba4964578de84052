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

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

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

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


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


def serve(listen: str, collectors: Sequence[Collector] = ()) -> None:
    """Serve /metrics on host:port (merged over processes when multiprocess)."""
    host, _, port = listen.rpartition(":")
    registry = None
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        for collector in collectors:
            registry.register(collector)
    if registry is None:
        start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1")
    else:
        start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
