"""DNS from config: the one place postwarden builds resolvers.

`dns.nameservers` (IP or IP:PORT) and `dns.timeout` apply to every lookup;
with no nameservers the system resolver (/etc/resolv.conf) is used. Tests
point this at a DNS server they start on loopback.
"""

from __future__ import annotations

from typing import Any

import dns.exception
import dns.resolver

from postwarden import metrics
from postwarden.config.schema import DnsSettings


def _count_failure(exc: BaseException) -> None:
    """Timeouts and SERVFAIL-like failures (no nameserver answered usefully)
    are DNS errors; NXDOMAIN and empty answers are answers."""
    if isinstance(exc, dns.exception.Timeout):
        metrics.DNS_ERRORS.labels("timeout").inc()
    elif isinstance(exc, dns.resolver.NoNameservers):
        metrics.DNS_ERRORS.labels("servfail").inc()


class CountingResolver(dns.resolver.Resolver):
    """dnspython's resolver, counting failed lookups in /metrics."""

    def resolve(self, *args: Any, **kwargs: Any) -> dns.resolver.Answer:
        try:
            return super().resolve(*args, **kwargs)
        except dns.exception.DNSException as exc:
            _count_failure(exc)
            raise


def _configure(resolver: dns.resolver.BaseResolver, settings: DnsSettings) -> None:
    servers = settings.parsed_nameservers()
    if servers:
        resolver.nameservers = [host for host, _ in servers]
        resolver.nameserver_ports = {host: port for host, port in servers}
    resolver.timeout = float(settings.timeout)
    resolver.lifetime = float(settings.timeout)
    # A resolver object caches nothing by default; a small cache saves
    # repeated lookups for the same names within TTL.
    resolver.cache = dns.resolver.LRUCache(10000)


def make_resolver(settings: DnsSettings) -> dns.resolver.Resolver:
    configure = not settings.nameservers
    resolver = CountingResolver(configure=configure)
    _configure(resolver, settings)
    return resolver
