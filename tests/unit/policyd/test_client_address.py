"""One client, one key: IPv4-mapped IPv6 addresses are unwrapped once, in the
protocol layer, so every check (access, ratelimit, greylist, spf) sees the
same address for the same client."""

from __future__ import annotations

import asyncio
import ipaddress

from policyd.check import CheckContext
from policyd.checks import access, greylist, ratelimit
from policyd.decision import Decision
from policyd.protocol import PolicyRequest, RequestParser, encode_request
from postwarden.clock import ManualClock
from postwarden.config.load import load_config_text


def parsed(client: str) -> PolicyRequest:
    data = encode_request(
        {
            "request": "smtpd_access_policy",
            "protocol_state": "RCPT",
            "client_address": client,
            "sender": "a@example.org",
            "recipient": "b@example.net",
            "instance": "1.2.3",
        }
    )
    (req,) = RequestParser().feed(data)
    assert isinstance(req, PolicyRequest)
    return req


def test_the_parser_unwraps_ipv4_mapped_addresses() -> None:
    req = parsed("::ffff:192.0.2.7")
    assert req.client_address == ipaddress.IPv4Address("192.0.2.7")
    assert req.client_address_raw == "::ffff:192.0.2.7"  # the log keeps what Postfix sent
    assert parsed("2001:db8::7").client_address == ipaddress.IPv6Address("2001:db8::7")


def test_ratelimit_counts_a_mapped_client_under_its_ipv4_key() -> None:
    settings = load_config_text(
        "policyd:\n  ratelimit:\n    enabled: true\n    rules:\n"
        "      - key: client_address\n        ipv4_prefix: 24\n"
        "        windows: [{limit: 5, per: 1m}]\n"
        "        overrides: {192.0.2.0/24: [{limit: 50, per: 1m}]}\n"
    )
    rule = ratelimit.CompiledRule(settings.policyd.ratelimit.rules[0])
    mapped, plain = parsed("::ffff:192.0.2.7"), parsed("192.0.2.7")
    assert rule.subject_value(mapped) == rule.subject_value(plain) == "192.0.2.0/24"
    assert rule.windows_for("", mapped)[0].limit == 50


def test_access_rules_for_ipv4_networks_match_mapped_clients() -> None:
    settings = load_config_text(
        "policyd:\n  access:\n    rules:\n"
        "      - {client_address: 192.0.2.0/24, action: REJECT go away}\n"
    )
    built = access.build(settings, [])
    assert built is not None
    ctx = CheckContext(settings=settings, store=None, clock=ManualClock())

    async def ask() -> Decision | None:
        return await built.run(parsed("::ffff:192.0.2.7"), ctx)

    decision = asyncio.run(ask())
    assert decision is not None and decision.action_line() == "554 5.7.1 go away"


def test_greylist_keys_a_mapped_client_by_its_ipv4_network() -> None:
    req = parsed("::ffff:192.0.2.7")
    assert req.client_address is not None
    assert greylist.client_network(req.client_address, 24, 64) == "192.0.2.0/24"
