"""DNS from config: the one place postwarden builds resolvers.

`dns.nameservers` (IP or IP:PORT) and `dns.timeout` apply to every lookup;
with no nameservers the system resolver (/etc/resolv.conf) is used. Tests
point this at a DNS server they start on loopback.
"""

from __future__ import annotations

import dns.resolver

from postwarden.config.schema import DnsSettings


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
    resolver = dns.resolver.Resolver(configure=configure)
    _configure(resolver, settings)
    return resolver
