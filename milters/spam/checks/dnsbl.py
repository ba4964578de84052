"""DNSBL and URIBL/DBL lookups (RFC 5782), as configured in `milters.spam.dnsbl`.

IP lists are asked about the connecting client and the IPs of the Received
headers below our trusted boundary (the first `received_depth` public IPs
that are not in `trusted_networks`); domain lists about the domains of the
URLs in the decoded body and the envelope sender's domain. Each return code
maps to a symbol (`returns`), others to the zone's `symbol`; error codes
(127.255.255.x) give DNSBL_REFUSED; queries still out when the time is up
give DNS_TIMEOUT{zone}. All in one concurrent batch (milters/spam/dnsbl.py).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator

from milters.context import ServiceContext
from milters.spam.checks.api import Check, CheckContext, CheckSpec, SymbolDef, SymbolHit
from milters.spam.dnsbl import Lookups, Query, ip_query_name, is_error_code
from milters.spam.view import MessageView
from postwarden.config.sections.spam import SpamMilterSettings, ZoneKind
from postwarden.config.units import Network

SYMBOLS = {
    "DNS_TIMEOUT": SymbolDef(0.0, "a DNS list did not answer in time"),
    "DNSBL_REFUSED": SymbolDef(0.0, "a DNS list refused the query (error code 127.255.255.x)"),
    "DNSBL_ERROR": SymbolDef(0.0, "a DNS list query failed (SERVFAIL, network)"),
}

_BRACKET_IP = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]{3,45})\]")
_NEVER = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "100.64.0.0/10", "::1/128", "fc00::/7", "fe80::/10", "::/128",
)]  # fmt: skip
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
BUDGET_RESERVE = 0.5  # seconds of the message budget kept back from DNS waits


def _listable(ip: IPAddress, trusted: tuple[Network, ...]) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not any(ip in n for n in _NEVER) and not any(ip in n for n in trusted)


def relay_ips(view: MessageView, trusted: tuple[Network, ...], depth: int) -> list[IPAddress]:
    """The connecting client, then IPs of Received headers (top down), public
    and untrusted only, at most 1 + depth."""
    out: list[IPAddress] = []
    client = view.env.client_address
    if client is not None and _listable(client, trusted):
        out.append(client)
    for value in view.headers.get("received", [])[:20]:
        if len(out) >= 1 + depth:
            break
        m = _BRACKET_IP.search(value)
        if not m:
            continue
        try:
            ip = ipaddress.ip_address(m.group(1))
        except ValueError:
            continue
        if _listable(ip, trusted) and ip not in out:
            out.append(ip)
    return out


def _domain(host: str) -> str:
    """The name a domain list is asked about: the last two labels (a public
    suffix list would be better; two labels is what most DBLs index)."""
    labels = host.strip(".").split(".")
    return ".".join(labels[-2:]) if len(labels) >= 2 else ""


def build(ctx: ServiceContext, settings: SpamMilterSettings) -> Check | None:
    d = settings.dnsbl
    zones = [z for z in d.zones if z.enabled]
    if not d.enabled or not zones:
        return None
    lookups = Lookups(d.concurrency)
    trusted = ctx.settings.trusted_networks

    def dnsbl(view: MessageView, cctx: CheckContext) -> Iterator[SymbolHit]:
        """One batch of DNS list queries; symbols by return code."""
        queries: list[Query] = []
        ips = [] if cctx.outbound else relay_ips(view, trusted, d.received_depth)
        domains: list[str] = []
        for host in view.url_hosts:
            if host.startswith("[") or re.fullmatch(r"[\d.]+", host):
                continue
            dom = _domain(host)
            if dom and dom not in domains:
                domains.append(dom)
        sender = _domain(view.env.sender_domain)
        if d.check_sender_domain and sender and sender not in domains:
            domains.insert(0, sender)
        for z in zones:
            zone = z.zone.rstrip(".")
            if z.kind is ZoneKind.IP:
                queries += [Query(ip_query_name(ip, zone), zone, str(ip)) for ip in ips]
            else:
                queries += [Query(f"{dom}.{zone}", zone, dom) for dom in domains]
        if not queries:
            return
        queries = queries[: d.max_lookups]
        # Leave part of the budget for scoring and the reply: a DNS wait must
        # never be what pushes the message past it (on_timeout).
        budget = cctx.message.budget
        reserve = min(BUDGET_RESERVE, 0.1 * budget.seconds)
        timeout = max(0.0, min(float(d.timeout), budget.remaining() - reserve))
        answers = lookups.run(cctx.message.resolver, queries, timeout, cctx.message.store,
                              float(d.cache_ttl_max), float(d.cache_ttl_negative))  # fmt: skip
        by_zone = {z.zone.rstrip("."): z for z in zones}
        timed_out: list[str] = []
        for a in answers:
            z = by_zone[a.query.zone]
            if a.timed_out:
                timed_out.append(a.query.zone)
                continue
            if a.error:
                yield SymbolHit("DNSBL_ERROR", (f"{a.query.zone}:{a.error}",))
                continue
            for code in a.codes:
                if is_error_code(code):
                    yield SymbolHit("DNSBL_REFUSED", (f"{a.query.zone}:{code}",))
                    continue
                yield SymbolHit(z.returns.get(code, z.symbol), (a.query.subject, code))
        if timed_out:
            yield SymbolHit("DNS_TIMEOUT", tuple(dict.fromkeys(timed_out)))

    return dnsbl


CHECK = CheckSpec(name="dnsbl", build=build, symbols=SYMBOLS, network=True)
