"""The openspf RFC 7208 test suite, run through postwarden's SPF check.

Each case becomes a Postfix policy request (client address, HELO, MAIL
FROM) answered by the real check: its DNS goes to a loopback server that
serves the case's group zone data. The answer is read back as an SPF
result: REJECT is fail (the default `fail: reject`; the reply carries the
explanation, which is compared where the suite gives one), DEFER is
temperror, PREPEND carries the result in its Received-SPF header.

Translating the suite's zone data into DNS (as its README asks of drivers):
- a name with SPF (type 99) records and no TXT records also serves them as
  TXT; `TXT: NONE` suppresses that;
- `TIMEOUT` makes queries for types the name has no records of go
  unanswered (the check's per-query timeout turns that into temperror);
- the one zero-string TXT record (null.example.com, "illegal, but SPF should
  not crash") cannot exist on the wire through dnspython (it refuses to
  build or parse an RR with no strings), so it is served as one empty
  string, the nearest legal form.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from policyd.check import CheckContext
from policyd.checks.spf import SpfCheck
from policyd.decision import Verb
from policyd.protocol import PolicyRequest, ProtocolState
from postwarden.clock import ManualClock
from postwarden.config.schema import DnsSettings, Settings
from postwarden.config.sections.policyd import PolicydSettings
from postwarden.config.sections.spf import SpfSettings
from postwarden.config.units import Duration
from tests.conftest import SHARED
from tests.fixtures.dnsserver import TIMEOUT, DnsServer, Entry

SUITE = SHARED / "spf" / "rfc7208-tests.yml"
DEFAULT_EXPLANATION = "SPF fail - not authorized"  # pyspf's, when no exp= applies

# Cases where pyspf's answer differs from the suite's: name -> reason.
# (Empty: every case passes; kept so a regression names its reason here.)
KNOWN_DIFFERENCES: dict[str, str] = {}


def _groups() -> list[dict[str, Any]]:
    with SUITE.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def zone_from_suite(zonedata: dict[str, list[Any]]) -> dict[str, list[Entry]]:
    zone: dict[str, list[Entry]] = {}
    for name, records in zonedata.items():
        entries: list[Entry] = []
        spf_values: list[object] = []
        has_txt = False
        for record in records:
            if record == "TIMEOUT":
                entries.append(TIMEOUT)
                continue
            ((rtype, value),) = record.items()
            if rtype == "TXT":
                has_txt = True
                if value == "NONE":
                    continue
            if rtype in ("TXT", "SPF") and isinstance(value, list) and not value:
                value = [""]  # zero strings: see the module docstring
            if rtype == "SPF":
                spf_values.append(value)
            if rtype == "MX":
                value = (int(value[0]), str(value[1]))
            entries.append((rtype, value))
        if not has_txt:
            entries.extend(("TXT", v) for v in spf_values)
        # TIMEOUT must not hide records listed after it: put it last.
        entries.sort(key=lambda e: e == TIMEOUT)
        zone[name] = entries
    return zone


def _cases() -> Iterator[Any]:
    for index, group in enumerate(_groups()):
        for name, case in group["tests"].items():
            marks = []
            if name in KNOWN_DIFFERENCES:
                marks.append(pytest.mark.xfail(reason=KNOWN_DIFFERENCES[name], strict=True))
            yield pytest.param(index, case, id=name, marks=marks)


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture(scope="module")
def check(dns_server: DnsServer) -> SpfCheck:
    settings = Settings(
        dns=DnsSettings(nameservers=(dns_server.nameserver,), timeout=Duration(1.0)),
        trusted_networks=(),
        policyd=PolicydSettings(
            spf=SpfSettings(
                enabled=True,
                cache_ttl=Duration(0),  # every case asks DNS: zones change per group
                query_timeout=Duration(0.25),  # TIMEOUT entries never answer
                time_budget=Duration(5.0),
                receiver="mx.test.invalid",
            )
        ),
    )
    return SpfCheck(settings)


_current_group: list[int] = [-1]


def _serve_group(server: DnsServer, index: int) -> None:
    if _current_group[0] != index:
        server.set_zone(zone_from_suite(_groups()[index]["zonedata"]))
        _current_group[0] = index
        # dnspython's per-resolver cache would carry names across groups.
        server.clear_queries()


def result_of(check: SpfCheck, case: dict[str, Any]) -> tuple[str, str]:
    req = PolicyRequest(
        protocol_state=ProtocolState.RCPT,
        client_address=ipaddress.ip_address(case["host"]),
        client_address_raw=case["host"],
        helo_name=case["helo"],
        sender=case["mailfrom"],
        recipient="someone@mx.test.invalid",
    )
    ctx = CheckContext(settings=check.settings, store=None, clock=ManualClock())
    decision = asyncio.run(check.run(req, ctx))
    assert decision is not None, "every SPF result maps to an answer with default actions"
    if decision.verb is Verb.REJECT:
        assert decision.reply is not None
        return "fail", decision.reply.text
    if decision.verb is Verb.DEFER:
        return "temperror", ""
    assert decision.verb is Verb.PREPEND
    assert decision.header.startswith("Received-SPF: ")
    return decision.header.split()[1], ""


@pytest.mark.parametrize(("group", "case"), list(_cases()))
def test_rfc7208_case(
    dns_server: DnsServer, check: SpfCheck, group: int, case: dict[str, Any]
) -> None:
    _serve_group(dns_server, group)
    check.lookup.resolver.cache = None  # zones are swapped between groups
    accepted = case["result"] if isinstance(case["result"], list) else [case["result"]]
    result, reply = result_of(check, case)
    assert result in accepted, f"{case.get('description', '')} (spec {case.get('spec')})"
    expected = case.get("explanation")
    if result == "fail" and expected is not None:
        wanted = DEFAULT_EXPLANATION if expected == "DEFAULT" else expected
        assert reply == f"Message rejected due to: {wanted}"


def test_suite_has_every_case() -> None:
    # The shared suite: 16 groups, 203 cases; a truncated file must not pass quietly.
    groups = _groups()
    assert len(groups) == 16
    assert sum(len(g["tests"]) for g in groups) == 203
