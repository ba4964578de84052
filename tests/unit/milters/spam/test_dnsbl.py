"""DNSBL/URIBL lookups against the local test DNS server (RFC 5782)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from ipaddress import ip_address
from typing import Any

import pytest

from milters.message import Action
from postwarden.config.schema import DnsSettings
from postwarden.config.units import Duration
from postwarden.resolver import make_resolver
from postwarden.store.client import Store
from tests.fixtures.dnsserver import TIMEOUT, DnsServer
from tests.unit.milters.spam.engine_setup import engine, message, names, scan

ZONES = [
    {"zone": "bl.test", "kind": "ip", "symbol": "RBL_TEST",
     "returns": {"127.0.0.2": "RBL_TEST_SPAM", "127.0.0.4": "RBL_TEST_EXPLOITS"}, "score": 3},
    {"zone": "dbl.test", "kind": "domain", "symbol": "DBL_TEST",
     "returns": {"127.0.1.2": "DBL_TEST_SPAM"}, "score": 5},
    {"zone": "slow.test", "kind": "ip", "symbol": "RBL_SLOW", "score": 1},
]  # fmt: skip

ZONE_DATA: dict[str, list[Any]] = {
    # 203.0.113.5 listed twice (two return codes), 198.51.100.7 not listed
    "5.113.0.203.bl.test": [("A", "127.0.0.2"), ("A", "127.0.0.4")],
    "9.113.0.203.bl.test": [("A", "127.0.0.3")],  # a code with no mapping
    "10.113.0.203.bl.test": [("A", "127.255.255.254")],  # "public resolver" refusal
    "bad.example.dbl.test": [("A", "127.0.1.2")],
    "slow.test": [("NS", "ns.slow.test")],
    "5.113.0.203.slow.test": [TIMEOUT],
    "7.100.51.198.slow.test": [TIMEOUT],
}


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(ZONE_DATA, ttl=300) as server:
        yield server


def dns_engine(server: DnsServer, store: Store, zones: list[Any] = ZONES, timeout: float = 0.5,
               **extra: Any) -> Any:  # fmt: skip
    resolver_settings = DnsSettings(nameservers=(server.nameserver,), timeout=Duration(0.2))
    spam = {"dnsbl": {"enabled": True, "zones": zones, "timeout": f"{timeout}s"}, **extra}
    return engine(spam, store=store, resolver_factory=lambda _s: make_resolver(resolver_settings))


def test_listed_ip_gives_one_symbol_per_return_code(dns_server: DnsServer, store: Store) -> None:
    eng, svc = dns_engine(dns_server, store, zones=ZONES[:2])
    v = scan(eng, svc, message(), ip="203.0.113.5")
    assert {"RBL_TEST_SPAM", "RBL_TEST_EXPLOITS"} <= names(v)
    [sym] = [s for s in v.symbols if s.name == "RBL_TEST_SPAM"]
    assert sym.score == 3 and sym.options == ("203.0.113.5", "127.0.0.2")


def test_unmapped_code_gives_the_zone_symbol_and_error_code_is_not_a_listing(
    dns_server: DnsServer, store: Store
) -> None:
    eng, svc = dns_engine(dns_server, store, zones=ZONES[:1])
    assert "RBL_TEST" in names(scan(eng, svc, message(), ip="203.0.113.9"))
    refused = scan(eng, svc, message(), ip="203.0.113.10")
    assert "DNSBL_REFUSED" in names(refused)
    assert not {"RBL_TEST", "RBL_TEST_SPAM"} & names(refused)


def test_not_listed_and_nxdomain_give_nothing(dns_server: DnsServer, store: Store) -> None:
    eng, svc = dns_engine(dns_server, store, zones=ZONES[:2])
    v = scan(eng, svc, message("see http://www.good.example/x\r\n"), ip="198.51.100.8")
    assert not {n for n in names(v) if "RBL" in n or "DBL" in n or "DNS" in n}


def test_url_domain_in_the_decoded_body_is_looked_up(dns_server: DnsServer, store: Store) -> None:
    eng, svc = dns_engine(dns_server, store, zones=ZONES[:2])
    body = "PGEgaHJlZj0iaHR0cHM6Ly93d3cuYmFkLmV4YW1wbGUvYnV5Ij5idXk8L2E+\r\n"
    raw = message(
        body, headers={"Content-Type": "text/html", "Content-Transfer-Encoding": "base64"}
    )
    v = scan(eng, svc, raw)
    assert "DBL_TEST_SPAM" in names(v)
    assert dns_server.queries_for("bad.example.dbl.test")


def test_untrusted_received_ips_are_checked_private_ones_skipped(
    dns_server: DnsServer, store: Store
) -> None:
    eng, svc = dns_engine(dns_server, store, zones=ZONES[:1])
    hops = {"Received": "from relay.example (relay.example [203.0.113.5]) by mx.example.net "
                        "with ESMTP id X; Wed, 18 Nov 2026 08:00:00 +0000"}  # fmt: skip
    v = scan(eng, svc, message(headers=hops), ip="10.1.2.3")
    assert "RBL_TEST_SPAM" in names(v)
    assert not dns_server.queries_for("3.2.1.10.bl.test")


def test_answers_are_cached_in_redis_with_their_ttl(dns_server: DnsServer, store: Store) -> None:
    eng, svc = dns_engine(dns_server, store, zones=ZONES[:1])
    scan(eng, svc, message(), ip="203.0.113.5")
    asked = len(dns_server.queries_for("5.113.0.203.bl.test"))
    again = scan(eng, svc, message(), ip="203.0.113.5")
    assert "RBL_TEST_SPAM" in names(again)
    assert len(dns_server.queries_for("5.113.0.203.bl.test")) == asked
    [key] = store.redis.keys("pwtest:dnsbl:v1:*")[:1]
    assert 0 < store.redis.ttl(key) <= 300


def test_a_server_that_never_answers_gives_dns_timeout_within_the_budget(
    dns_server: DnsServer, store: Store
) -> None:
    eng, svc = dns_engine(dns_server, store, timeout=0.3, thresholds={"greylist": None})
    v = scan(eng, svc, message(), ip="203.0.113.5")
    # The listed zone still counts; the silent one is named, not waited for
    assert "RBL_TEST_SPAM" in names(v)
    [timeout] = [s for s in v.symbols if s.name == "DNS_TIMEOUT"]
    assert timeout.options == ("slow.test",)
    assert v.action is not Action.TEMPFAIL


def test_outbound_mail_does_not_look_up_the_client_ip(dns_server: DnsServer, store: Store) -> None:
    eng, svc = dns_engine(dns_server, store, zones=ZONES[:1])
    v = scan(eng, svc, message(), ip="203.0.113.5", auth="alice")
    assert "RBL_TEST_SPAM" not in names(v)


def test_budget_shorter_than_the_dns_timeout_still_gives_a_verdict(
    dns_server: DnsServer, store: Store
) -> None:
    # Given lists that never answer, a 30s DNS timeout and a 1s message budget
    eng, svc = dns_engine(dns_server, store, zones=ZONES[2:], timeout=30.0)
    # When the message is scanned
    v = scan(eng, svc, message(), ip="203.0.113.5", budget=1.0)
    # Then the verdict comes back (no BudgetExceeded) and names the silent list
    assert "DNS_TIMEOUT" in names(v)


def test_through_the_pipeline_a_silent_dns_server_costs_no_timeout(
    dns_server: DnsServer, store: Store
) -> None:
    from milters.message import Envelope, Message
    from milters.pipeline import Runner, Stage

    eng, svc = dns_engine(dns_server, store, zones=ZONES[2:], timeout=30.0)
    settings = dataclasses.replace(svc.settings.milters.spam, budget=Duration(1.0))
    runner = Runner(svc)
    try:
        env = Envelope(client_address=ip_address("203.0.113.5"), recipients=("b@example.net",))
        r = runner.run(Stage("spam", eng, settings), Message.from_bytes(message()), env)
    finally:
        runner.close()
    assert r.outcome == "ok"
    assert "DNS_TIMEOUT" in {s.name for s in r.verdict.symbols}
