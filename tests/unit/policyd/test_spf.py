"""The SPF check against a loopback DNS server and (for the cache) real Redis.

Every zone the issue lists is served by `tests.fixtures.dnsserver`: pass,
fail with an explanation, softfail, neutral, none, include chains,
redirect=, exists: with macros, mx, ip6, a void-lookup overflow, more than
ten DNS-querying terms, and a zone that never answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import spf
import yaml

from policyd.check import BuiltCheck, CheckContext
from policyd.checks import spf as spf_check
from policyd.checks.spf import SpfCheck, build, received_spf
from policyd.decision import Decision, Verb
from policyd.pipeline import evaluate
from policyd.protocol import PolicyRequest, ProtocolState
from postwarden.clock import ManualClock
from postwarden.config.errors import ConfigError, ConfigProblem
from postwarden.config.load import load_config_text
from postwarden.config.schema import Mode, RedisSettings, Settings
from postwarden.config.sections.spf import SpfAction, SpfResult
from postwarden.errors import StoreUnavailable
from postwarden.store.client import AsyncStore, open_async_store
from postwarden.store.embedded import EmbeddedRedis
from tests.conftest import make_async_store
from tests.fixtures.dnsserver import TIMEOUT, DnsServer, Zone

CLIENT = "192.0.2.1"

ZONE: Zone = {
    "pass.example": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all")],
    "fail.example": [("TXT", "v=spf1 ip4:198.51.100.0/24 -all exp=why.fail.example")],
    "why.fail.example": [("TXT", "%{i} is not one of %{d}'s designated mail servers.")],
    "plainfail.example": [("TXT", "v=spf1 -all")],
    "softfail.example": [("TXT", "v=spf1 ~all")],
    "neutral.example": [("TXT", "v=spf1 ?all")],
    "none.example": [("TXT", "google-site-verification=abc")],
    "include.example": [("TXT", "v=spf1 include:middle.example -all")],
    "middle.example": [("TXT", "v=spf1 include:pass.example -all")],
    "redirect.example": [("TXT", "v=spf1 redirect=pass.example")],
    "exists.example": [("TXT", "v=spf1 exists:%{i}.%{l}.ok.exists.example -all")],
    "192.0.2.1.alice.ok.exists.example": [("A", "127.0.0.2")],
    "macro.example": [("TXT", "v=spf1 exists:%{ir}.%{d2}.clients.macro.example -all")],
    "1.2.0.192.macro.example.clients.macro.example": [("A", "127.0.0.2")],
    "mx.example": [("TXT", "v=spf1 mx -all"), ("MX", (10, "mail.mx.example"))],
    "mail.mx.example": [("A", "192.0.2.1")],
    "ip6.example": [("TXT", "v=spf1 ip6:2001:db8::/32 -all")],
    "void.example": [
        ("TXT", "v=spf1 a:nx1.void.example a:nx2.void.example a:nx3.void.example +all")
    ],
    "many.example": [
        ("TXT", "v=spf1 " + " ".join(f"a:h{i}.many.example" for i in range(11)) + " -all")
    ],
    **{f"h{i}.many.example": [("A", "203.0.113.9")] for i in range(11)},
    "timeout.example": [TIMEOUT],
    "helo.example": [("TXT", "v=spf1 a -all"), ("A", CLIENT)],
    "badhelo.example": [("TXT", "v=spf1 -all"), ("A", CLIENT)],
    "fwd.example": [("A", CLIENT)],
    "perm.example": [("TXT", "v=spf1 ip4:192.0.2.1/33 -all")],
}


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(ZONE) as server:
        yield server


BASE_SPF = {
    "receiver": "mx.test.invalid",
    "query_timeout": "300ms",
    "time_budget": "3s",
    "cache_ttl": "0",
}


def settings_for(server: DnsServer, spf_yaml: str = "", **top: str) -> Settings:
    """Settings pointing DNS at `server`; `spf_yaml` lines override BASE_SPF."""
    extra = "\n".join(f"{k}: {v}" for k, v in top.items())
    given = set(yaml.safe_load(spf_yaml) or {})
    base = "\n".join(f"{k}: {v}" for k, v in BASE_SPF.items() if k not in given)
    text = f"""
dns: {{nameservers: ["{server.nameserver}"], timeout: 1s}}
{extra}
policyd:
  spf:
    enabled: true
{_indent(base, 4)}
{_indent(spf_yaml, 4)}
"""
    return load_config_text(text)


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.strip().splitlines())


def request(**attrs: Any) -> PolicyRequest:
    attrs.setdefault("protocol_state", ProtocolState.RCPT)
    attrs.setdefault("client_address", CLIENT)
    attrs.setdefault("helo_name", "mail.sender.invalid")
    attrs.setdefault("recipient", "user@mx.test.invalid")
    if isinstance(attrs["client_address"], str):
        raw = attrs["client_address_raw"] = attrs["client_address"]
        attrs["client_address"] = None if raw == "unknown" else ipaddress.ip_address(raw)
    return PolicyRequest(**attrs)


def ask(settings: Settings, store: AsyncStore | None = None, **attrs: Any) -> Decision | None:
    check = SpfCheck(settings)
    ctx = CheckContext(settings=settings, store=store, clock=ManualClock())
    return asyncio.run(check.run(request(**attrs), ctx))


def result_in(decision: Decision | None) -> str:
    """The SPF result a PREPENDed Received-SPF header reports."""
    assert decision is not None and decision.verb is Verb.PREPEND, decision
    assert decision.header.startswith("Received-SPF: ")
    return decision.header.split()[1]


# -- results for the zones the issue lists --------------------------------


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        pytest.param("alice@pass.example", "pass", id="ip4-pass"),
        pytest.param("alice@softfail.example", "softfail", id="softfail"),
        pytest.param("alice@neutral.example", "neutral", id="neutral"),
        pytest.param("alice@none.example", "none", id="no-spf-record"),
        pytest.param("alice@nxdomain.example", "none", id="no-such-domain"),
        pytest.param("alice@include.example", "pass", id="include-chain"),
        pytest.param("alice@redirect.example", "pass", id="redirect"),
        pytest.param("alice@exists.example", "pass", id="exists-with-i-and-l-macros"),
        pytest.param("bob@exists.example", "fail", id="exists-macro-other-local-part"),
        pytest.param("alice@macro.example", "pass", id="macros-ir-and-d2"),
        pytest.param("alice@mx.example", "pass", id="mx"),
        pytest.param("alice@void.example", "permerror", id="void-lookup-overflow"),
        pytest.param("alice@many.example", "permerror", id="more-than-ten-lookups"),
        pytest.param("alice@perm.example", "permerror", id="bad-cidr"),
    ],
)
def test_spf_result_for_each_zone(dns_server: DnsServer, sender: str, expected: str) -> None:
    settings = settings_for(dns_server, "mailfrom_actions: {fail: prepend}")
    assert result_in(ask(settings, sender=sender)) == expected


def test_rfc_processing_limits_are_pyspfs_module_constants() -> None:
    # RFC 7208 section 4.6.4: 10 DNS-querying terms, 2 void lookups.
    assert spf.MAX_LOOKUP == 10
    assert spf.MAX_VOID_LOOKUPS == 2


def test_fail_rejects_with_5_7_23_and_the_domains_explanation(dns_server: DnsServer) -> None:
    decision = ask(settings_for(dns_server), sender="alice@fail.example")
    assert decision is not None and decision.verb is Verb.REJECT
    assert decision.action_line() == (
        "550 5.7.23 Message rejected due to: "
        "192.0.2.1 is not one of fail.example's designated mail servers."
    )


def test_fail_without_exp_uses_the_default_explanation(dns_server: DnsServer) -> None:
    decision = ask(settings_for(dns_server), sender="alice@plainfail.example")
    assert decision is not None
    assert decision.action_line() == "550 5.7.23 Message rejected due to: SPF fail - not authorized"


def test_zone_that_never_answers_defers_with_451_4_4_3(dns_server: DnsServer) -> None:
    decision = ask(settings_for(dns_server), sender="alice@timeout.example")
    assert decision is not None and decision.verb is Verb.DEFER
    assert decision.action_line().startswith(
        "451 4.4.3 Message deferred due to: SPF Temporary Error"
    )


def test_permerror_does_not_reject_by_default_but_can(dns_server: DnsServer) -> None:
    assert result_in(ask(settings_for(dns_server), sender="a@perm.example")) == "permerror"
    strict = settings_for(dns_server, "mailfrom_actions: {permerror: reject}")
    decision = ask(strict, sender="a@perm.example")
    assert decision is not None and decision.action_line().startswith("550 5.7.24 ")


def test_every_action_kind_is_available_per_result(dns_server: DnsServer) -> None:
    table = "mailfrom_actions: {softfail: defer, neutral: quarantine, pass: ignore}"
    settings = settings_for(dns_server, table)
    soft = ask(settings, sender="a@softfail.example")
    assert soft is not None and soft.action_line().startswith("450 4.7.23 Message deferred")
    neutral = ask(settings, sender="a@neutral.example")
    assert neutral is not None and neutral.verb is Verb.HOLD
    assert ask(settings, sender="a@pass.example") is None


def test_reject_text_placeholders_are_filled(dns_server: DnsServer) -> None:
    settings = settings_for(
        dns_server, 'reject_text: "SPF {result} for {domain} from {ip} ({identity})"'
    )
    decision = ask(settings, sender="a@plainfail.example")
    assert decision is not None
    assert (
        decision.action_line()
        == "550 5.7.23 SPF fail for plainfail.example from 192.0.2.1 (mailfrom)"
    )


# -- Received-SPF ------------------------------------------------------------


def test_received_spf_has_the_rfc_7208_section_9_1_fields(dns_server: DnsServer) -> None:
    decision = ask(
        settings_for(dns_server), sender="alice@pass.example", helo_name="mta.pass.example"
    )
    assert decision is not None
    assert decision.header == (
        "Received-SPF: pass (mx.test.invalid: domain of pass.example designates 192.0.2.1 "
        'as permitted sender) client-ip=192.0.2.1; envelope-from="alice@pass.example"; '
        'helo=mta.pass.example; receiver=mx.test.invalid; mechanism="ip4:192.0.2.0/24"; '
        "identity=mailfrom"
    )


def test_received_spf_quotes_hostile_values() -> None:
    ev = spf_check.Evaluation(
        "mailfrom", SpfResult.PERMERROR, problem='bad "record" (x)\r\nX-Evil: 1'
    )
    header = received_spf(ev, ip=CLIENT, sender="a@b.example", helo='evil"helo\n', receiver="mx")
    assert "\n" not in header and "\r" not in header
    assert 'helo="evil\\"helo";' in header
    assert 'problem="bad \\"record\\" (x)  X-Evil: 1";' in header
    assert "\\(x\\)" in header  # parentheses escaped inside the comment


# -- HELO identity -----------------------------------------------------------


def test_null_sender_checks_the_helo_identity(dns_server: DnsServer) -> None:
    decision = ask(settings_for(dns_server), sender="", helo_name="helo.example")
    assert result_in(decision) == "pass"
    assert decision is not None and "identity=helo" in decision.header
    assert "envelope-from" not in decision.header


def test_null_sender_with_failing_helo_is_rejected(dns_server: DnsServer) -> None:
    decision = ask(
        settings_for(dns_server), sender="", helo_name="badhelo.example", client_address="192.0.2.9"
    )
    assert decision is not None and decision.verb is Verb.REJECT


def test_helo_is_not_checked_for_real_senders_by_default(dns_server: DnsServer) -> None:
    dns_server.clear_queries()
    decision = ask(settings_for(dns_server), sender="a@pass.example", helo_name="badhelo.example",
                   client_address="192.0.2.9")  # fmt: skip
    assert result_in(decision) == "pass"
    assert dns_server.queries_for("badhelo.example") == []


def test_helo_check_always_rejects_a_failing_helo_first(dns_server: DnsServer) -> None:
    settings = settings_for(dns_server, "helo_check: always")
    decision = ask(
        settings, sender="a@pass.example", helo_name="badhelo.example", client_address="192.0.2.9"
    )
    assert decision is not None and decision.verb is Verb.REJECT
    assert "identity" not in decision.action_line()
    passing = ask(settings, sender="a@pass.example", helo_name="helo.example")
    assert result_in(passing) == "pass" and "identity=mailfrom" in passing.header  # type: ignore[union-attr]


def test_helo_check_always_reports_helo_when_mail_from_has_no_record(dns_server: DnsServer) -> None:
    settings = settings_for(dns_server, "helo_check: always")
    decision = ask(settings, sender="a@none.example", helo_name="helo.example")
    assert result_in(decision) == "pass"
    assert decision is not None and "identity=helo" in decision.header


# -- bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        pytest.param({"sender": "no-at-sign"}, "none", id="sender-without-domain"),
        pytest.param({"sender": "alice@"}, "none", id="empty-domain"),
        pytest.param({"sender": "alice@localhost"}, "none", id="single-label-domain"),
        pytest.param({"sender": "alice@[192.0.2.1]"}, "none", id="domain-literal"),
        pytest.param({"sender": "a@" + "x" * 300 + ".example"}, "none", id="label-too-long"),
        pytest.param({"sender": "a@" + "abc." * 80 + "example"}, "none", id="domain-too-long"),
        pytest.param({"sender": "a@bad..example"}, "none", id="empty-label"),
        pytest.param({"sender": "a@b\x00d.example"}, "none", id="control-character"),
        pytest.param({"sender": "", "helo_name": "[192.0.2.1]"}, "none", id="helo-address-literal"),
        pytest.param({"sender": "", "helo_name": "oemcomputer"}, "none", id="helo-not-fqdn"),
        pytest.param({"sender": "a@ip6.example", "client_address": "2001:db8::25"}, "pass",
                     id="ipv6-client"),
        pytest.param({"sender": "a@pass.example", "client_address": "::ffff:192.0.2.1"}, "pass",
                     id="ipv4-mapped-client"),
        pytest.param({"sender": "a@ip6.example", "client_address": "2001:db9::1"}, "fail",
                     id="ipv6-outside"),
        pytest.param({"sender": "\"a@b\"@pass.example"}, "pass", id="quoted-local-part-with-at"),
        pytest.param({"sender": "a@bücher.example"}, "none", id="utf8-domain"),
    ],
)  # fmt: skip
def test_bad_input_gives_a_clear_result(
    dns_server: DnsServer, attrs: dict[str, Any], expected: str
) -> None:
    settings = settings_for(dns_server, "mailfrom_actions: {fail: prepend}")
    assert result_in(ask(settings, **attrs)) == expected


def test_missing_client_address_is_not_checked(dns_server: DnsServer) -> None:
    dns_server.clear_queries()
    decision = ask(settings_for(dns_server), sender="a@plainfail.example", client_address="unknown")
    assert decision is None
    assert dns_server.queries == []


def test_null_sender_without_helo_is_not_checked(dns_server: DnsServer) -> None:
    assert ask(settings_for(dns_server), sender="", helo_name="") is None


# -- skips and whitelists ---------------------------------------------------------


@pytest.mark.parametrize(
    ("spf_yaml", "attrs"),
    [
        pytest.param("", {"sasl_username": "alice"}, id="sasl-authenticated"),
        pytest.param("", {"client_address": "127.0.0.1"}, id="trusted-network"),
        pytest.param("whitelist: {clients: [192.0.2.0/28]}", {}, id="whitelisted-client"),
        pytest.param("whitelist: {sender_domains: [plainfail.example]}", {},
                     id="whitelisted-domain"),
        pytest.param("whitelist: {sender_domains: [.example]}", {}, id="whitelisted-parent-domain"),
        pytest.param("whitelist: {helo_names: [fwd.example]}", {"helo_name": "fwd.example"},
                     id="whitelisted-helo-resolving-to-client"),
    ],
)  # fmt: skip
def test_skipped_clients_are_not_evaluated(
    dns_server: DnsServer, spf_yaml: str, attrs: dict[str, Any]
) -> None:
    dns_server.clear_queries()
    settings = settings_for(dns_server, spf_yaml)
    attrs.setdefault("sender", "alice@plainfail.example")
    assert ask(settings, **attrs) is None
    assert dns_server.queries_for("plainfail.example") == []


def test_whitelisted_helo_that_does_not_resolve_to_the_client_is_checked(
    dns_server: DnsServer,
) -> None:
    settings = settings_for(dns_server, "whitelist: {helo_names: [fwd.example]}")
    decision = ask(
        settings, sender="a@plainfail.example", helo_name="fwd.example", client_address="192.0.2.99"
    )
    assert decision is not None and decision.verb is Verb.REJECT


def test_trusted_networks_can_be_checked_when_asked(dns_server: DnsServer) -> None:
    settings = settings_for(
        dns_server, "skip_trusted_networks: false", trusted_networks="[192.0.2.0/24]"
    )
    decision = ask(settings, sender="a@plainfail.example")
    assert decision is not None and decision.verb is Verb.REJECT


# -- one evaluation per message ------------------------------------------------------


def test_fifty_recipients_cost_one_evaluation_and_one_header(dns_server: DnsServer) -> None:
    settings = settings_for(dns_server)
    check = SpfCheck(settings)
    ctx = CheckContext(settings=settings, store=None, clock=ManualClock())
    dns_server.clear_queries()

    async def message() -> list[Decision | None]:
        return [
            await check.run(
                request(sender="a@pass.example", instance="i1", recipient=f"u{n}@x"), ctx
            )
            for n in range(50)
        ]

    answers = asyncio.run(message())
    assert result_in(answers[0]) == "pass"
    assert answers[1:] == [None] * 49  # Received-SPF once per message
    assert len(dns_server.queries_for("pass.example", "TXT")) == 1


def test_every_recipient_of_a_failing_message_is_rejected(dns_server: DnsServer) -> None:
    settings = settings_for(dns_server)
    check = SpfCheck(settings)
    ctx = CheckContext(settings=settings, store=None, clock=ManualClock())
    dns_server.clear_queries()

    async def message() -> list[Decision | None]:
        return [
            await check.run(
                request(sender="a@plainfail.example", instance="i2", recipient=f"u{n}@x"), ctx
            )
            for n in range(3)
        ]

    answers = asyncio.run(message())
    assert [a.verb if a else None for a in answers] == [Verb.REJECT] * 3
    assert len(dns_server.queries_for("plainfail.example", "TXT")) == 1


def test_a_new_transaction_on_the_same_instance_id_is_evaluated_afresh(
    dns_server: DnsServer,
) -> None:
    settings = settings_for(dns_server)
    check = SpfCheck(settings)
    ctx = CheckContext(settings=settings, store=None, clock=ManualClock())

    async def two() -> tuple[Decision | None, Decision | None]:
        first = await check.run(request(sender="a@pass.example", instance="i3"), ctx)
        second = await check.run(request(sender="a@plainfail.example", instance="i3"), ctx)
        return first, second

    first, second = asyncio.run(two())
    assert result_in(first) == "pass"
    assert second is not None and second.verb is Verb.REJECT


# -- warn mode through the pipeline -------------------------------------------------


def test_warn_mode_prepends_a_warning_once_instead_of_rejecting(dns_server: DnsServer) -> None:
    settings = settings_for(dns_server, "mode: warn")
    problems: list[ConfigProblem] = []
    built = build(settings, problems)
    assert built is not None and built.mode is Mode.WARN and problems == []
    ctx = CheckContext(settings=settings, store=None, clock=ManualClock())

    async def message() -> list[Decision]:
        out = []
        for n in range(2):
            req = request(sender="a@plainfail.example", instance="w1", recipient=f"u{n}@x")
            out.append((await evaluate([built], req, ctx)).decision)
        return out

    first, second = asyncio.run(message())
    assert first.verb is Verb.PREPEND
    assert first.header.startswith("X-Postwarden-Warn: spf would 550 5.7.23 ")
    assert second.verb is Verb.DUNNO


def test_warn_mode_still_prepends_received_spf_for_a_pass(dns_server: DnsServer) -> None:
    settings = settings_for(dns_server, "mode: warn")
    built = build(settings, [])
    assert built is not None
    ctx = CheckContext(settings=settings, store=None, clock=ManualClock())
    outcome = asyncio.run(evaluate([built], request(sender="a@pass.example"), ctx))
    assert outcome.decision.header.startswith("Received-SPF: pass ")


# -- Redis result cache --------------------------------------------------------------


def run_with_store(
    redis_server: EmbeddedRedis, body: Callable[[AsyncStore], Awaitable[Any]]
) -> Any:
    async def go() -> Any:
        store = make_async_store(redis_server)
        try:
            await store.redis.flushall()
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(go())


def test_result_cache_is_shared_across_messages_and_hosts(
    dns_server: DnsServer, redis_server: EmbeddedRedis
) -> None:
    settings = settings_for(dns_server, "cache_ttl: 5m")
    dns_server.clear_queries()

    async def body(store: AsyncStore) -> tuple[list[Decision | None], int]:
        answers = []
        # Two "MX hosts" (two checks, two processes' state) and two messages.
        for host in range(2):
            check = SpfCheck(settings)
            ctx = CheckContext(settings=settings, store=store, clock=ManualClock())
            answers.append(
                await check.run(request(sender=f"u{host}@pass.example", instance=f"m{host}"), ctx)
            )
        key = store.keys.spf_result("mailfrom", CLIENT, "pass.example", "mail.sender.invalid")
        return answers, await store.redis.pttl(key)

    answers, pttl = run_with_store(redis_server, body)
    assert [result_in(a) for a in answers] == ["pass", "pass"]
    assert 'envelope-from="u1@pass.example"' in answers[1].header
    assert len(dns_server.queries_for("pass.example", "TXT")) == 1
    assert 0 < pttl <= 300_000


def test_temperror_is_never_cached(dns_server: DnsServer, redis_server: EmbeddedRedis) -> None:
    settings = settings_for(dns_server, "cache_ttl: 5m")

    async def body(store: AsyncStore) -> list[Any]:
        check = SpfCheck(settings)
        ctx = CheckContext(settings=settings, store=store, clock=ManualClock())
        answer = await check.run(request(sender="a@timeout.example"), ctx)
        return [answer, await store.redis.keys("*spf*")]

    answer, keys = run_with_store(redis_server, body)
    assert answer.verb is Verb.DEFER
    assert keys == []


def test_results_that_depend_on_the_local_part_are_not_cached(
    dns_server: DnsServer, redis_server: EmbeddedRedis
) -> None:
    settings = settings_for(dns_server, "cache_ttl: 5m\nmailfrom_actions: {fail: prepend}")

    async def body(store: AsyncStore) -> list[Decision | None]:
        out = []
        for n, sender in enumerate(("alice@exists.example", "bob@exists.example")):
            check = SpfCheck(settings)
            ctx = CheckContext(settings=settings, store=store, clock=ManualClock())
            out.append(await check.run(request(sender=sender, instance=f"x{n}"), ctx))
        return out

    alice, bob = run_with_store(redis_server, body)
    assert (result_in(alice), result_in(bob)) == ("pass", "fail")


def test_redis_down_propagates_store_unavailable(dns_server: DnsServer, tmp_path: Any) -> None:
    # Checks never catch Redis errors: the server maps StoreUnavailable to on_error.
    settings = settings_for(dns_server, "cache_ttl: 5m")

    async def go() -> None:
        store = open_async_store(RedisSettings(prefix="pwtest:"), str(tmp_path / "nothing.sock"))
        try:
            check = SpfCheck(settings)
            ctx = CheckContext(settings=settings, store=store, clock=ManualClock())
            await check.run(request(sender="a@pass.example"), ctx)
        finally:
            await store.close()

    with pytest.raises(StoreUnavailable):
        asyncio.run(go())


# -- threads, budget, isolation -----------------------------------------------------


def test_concurrent_checks_use_their_own_dns_servers() -> None:
    # The pyspf DNS hook is per thread: two checks resolving the same name
    # through different servers at once never see each other's answers.
    zone_a: Zone = {"same.example": [("TXT", "v=spf1 +all")]}
    zone_b: Zone = {"same.example": [("TXT", "v=spf1 -all")]}
    with DnsServer(zone_a) as a, DnsServer(zone_b) as b:
        checks = [SpfCheck(settings_for(s, "mailfrom_actions: {fail: prepend}")) for s in (a, b)]

        async def both() -> list[str]:
            ctxs = [
                CheckContext(settings=c.settings, store=None, clock=ManualClock()) for c in checks
            ]
            jobs = [
                checks[i % 2].run(
                    request(sender=f"u{i}@same.example", instance=f"c{i}"), ctxs[i % 2]
                )
                for i in range(40)
            ]
            return [result_in(d) for d in await asyncio.gather(*jobs)]

        results = asyncio.run(both())
    assert results == ["pass", "fail"] * 20


def test_pyspf_outside_a_check_keeps_its_own_lookup() -> None:
    assert spf.DNSLookup is spf_check._dispatch
    assert spf_check._current_lookup.get() is None  # nothing leaks into this thread


def test_slow_domain_does_not_block_other_requests(dns_server: DnsServer) -> None:
    settings = settings_for(dns_server, "query_timeout: 2s\ntime_budget: 3s")
    check = SpfCheck(settings)
    ctx = CheckContext(settings=settings, store=None, clock=ManualClock())

    async def go() -> tuple[bool, Decision | None]:
        slow = asyncio.create_task(
            check.run(request(sender="a@timeout.example", instance="s"), ctx)
        )
        await asyncio.sleep(0)  # let it start its thread
        fast = await check.run(request(sender="a@pass.example", instance="f"), ctx)
        slow_done_first = slow.done()
        await slow
        return slow_done_first, fast

    slow_done_first, fast = asyncio.run(go())
    assert not slow_done_first
    assert result_in(fast) == "pass"


def test_time_budget_caps_every_query_of_an_evaluation(dns_server: DnsServer) -> None:
    # Each query may wait 1s, but the evaluation has 0.2s: pyspf's querytime
    # hands each lookup at most what is left, and the result is temperror.
    check = SpfCheck(settings_for(dns_server))
    asked: list[float] = []

    def lookup(name: str, qtype: str, timeout: float) -> list[Any]:
        asked.append(timeout)
        return check.lookup(name, qtype, timeout)

    ev = spf_check.evaluate(
        CLIENT, "a@timeout.example", "helo.invalid", "mailfrom", lookup,
        receiver="mx", query_timeout=1.0, budget=0.2,
    )  # fmt: skip
    assert ev.result == "temperror" and not ev.cacheable
    assert asked and all(t <= 0.2 for t in asked)


def test_time_spent_waiting_for_a_thread_counts_against_the_budget(dns_server: DnsServer) -> None:
    check = SpfCheck(settings_for(dns_server, "threads: 1"))
    dns_server.clear_queries()

    async def go() -> spf_check.Evaluation:
        deadline = time.monotonic() + 0.2
        release = threading.Event()

        def occupy_the_only_thread() -> None:
            # Hold the worker until the request's deadline has passed (polled).
            while time.monotonic() <= deadline:
                release.wait(0.01)

        check.executor.submit(occupy_the_only_thread)
        return await check._in_thread("mailfrom", CLIENT, "a@pass.example", "h", deadline)

    ev = asyncio.run(go())
    assert ev.result == "temperror"
    assert dns_server.queries == []  # it never reached DNS


# -- config ------------------------------------------------------------------------


def test_partial_action_table_keeps_the_other_defaults(dns_server: DnsServer) -> None:
    settings = settings_for(dns_server, "mailfrom_actions: {softfail: reject}")
    table = settings.policyd.spf.actions_for("mailfrom")
    assert table[SpfResult.SOFTFAIL] is SpfAction.REJECT
    assert table[SpfResult.FAIL] is SpfAction.REJECT
    assert table[SpfResult.TEMPERROR] is SpfAction.DEFER
    assert table[SpfResult.PASS] is SpfAction.PREPEND


@pytest.mark.parametrize(
    ("spf_yaml", "message"),
    [
        pytest.param(
            "mailfrom_actions: {passs: reject}", "expected one of pass, fail", id="typo-result"
        ),
        pytest.param("helo_actions: {fail: bounce}", "expected one of reject", id="unknown-action"),
        pytest.param('reject_text: "{why}"', "unknown placeholder(s) why", id="bad-placeholder"),
        pytest.param(
            "query_timeout: 10s\ntime_budget: 5s", "must not exceed", id="timeout-over-budget"
        ),
        pytest.param("whitelist: {clients: [192.0.2.1/8]}", "host bits set", id="bad-cidr"),
        pytest.param("helo_check: sometimes", "null_sender, always", id="bad-helo-check"),
    ],
)
def test_bad_spf_config_is_refused_with_its_line(
    dns_server: DnsServer, spf_yaml: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        settings_for(dns_server, spf_yaml)
    text = str(err.value)
    assert message in text
    assert "policyd.spf" in text and "<string>:" in text


def test_budget_not_below_request_timeout_is_a_warning(dns_server: DnsServer) -> None:
    settings = settings_for(dns_server, "time_budget: 30s")
    problems: list[ConfigProblem] = []
    built = build(settings, problems)
    assert isinstance(built, BuiltCheck)
    assert [p.severity for p in problems] == ["warning"]
    assert problems[0].key == "policyd.spf.time_budget"


def test_disabled_check_is_not_built() -> None:
    off = dataclasses.replace(
        Settings().policyd, spf=dataclasses.replace(Settings().policyd.spf, enabled=False)
    )
    assert build(dataclasses.replace(Settings(), policyd=off), []) is None


def test_spf_is_on_by_default() -> None:
    assert isinstance(build(Settings(), []), BuiltCheck)


def test_each_evaluated_message_is_counted_for_stat(dns_server: DnsServer) -> None:
    settings = settings_for(dns_server)
    check = SpfCheck(settings)
    ctx = CheckContext(settings=settings, store=None, clock=ManualClock())

    async def go() -> None:
        for n in range(3):  # three recipients of one message: one count
            await check.run(
                request(sender="a@plainfail.example", instance="st", recipient=f"{n}@x"), ctx
            )
        await check.run(request(sender="a@pass.example", instance="st2"), ctx)

    asyncio.run(go())
    assert ctx.stats.take() == {"spf_fail": 1, "spf_pass": 1}


def _broken_lookup(name: str, qtype: str, timeout: float) -> list[Any]:
    raise RuntimeError("resolver bug")


class _BrokenLookup(spf_check.DnsLookup):
    """Our DNS hook with a bug in it."""

    def __call__(self, name: str, qtype: str, timeout: float) -> list[Any]:
        return _broken_lookup(name, qtype, timeout)


def test_a_crash_inside_the_evaluation_is_an_error_not_a_permerror() -> None:
    with pytest.raises(spf_check.SpfEvaluationError, match="resolver bug"):
        spf_check.evaluate(
            CLIENT, "a@pass.example", "helo.invalid", "mailfrom", _broken_lookup,
            receiver="mx", query_timeout=1.0, budget=1.0,
        )  # fmt: skip


def test_a_crash_is_never_cached_and_reaches_the_server_as_an_error(
    dns_server: DnsServer, redis_server: EmbeddedRedis
) -> None:
    # Given permerror: reject, a Redis cache, and a bug in the DNS hook
    settings = settings_for(dns_server, "cache_ttl: 5m\nmailfrom_actions: {permerror: reject}")

    async def body(store: AsyncStore) -> list[bytes]:
        check = SpfCheck(settings)
        check.lookup = _BrokenLookup(check.lookup.resolver)
        ctx = CheckContext(settings=settings, store=store, clock=ManualClock())
        # When a request is checked, Then the crash propagates (the server
        # answers with on_error, see test_server) instead of a 550
        with pytest.raises(spf_check.SpfEvaluationError):
            await check.run(request(sender="a@pass.example", instance="c1"), ctx)
        keys: list[bytes] = await store.redis.keys("*")
        # And a healthy evaluation afterwards is not shadowed by a cached error
        healthy = SpfCheck(settings)
        answer = await healthy.run(request(sender="a@pass.example", instance="c2"), ctx)
        assert result_in(answer) == "pass"
        return keys

    assert run_with_store(redis_server, body) == []


def test_mail_from_result_is_noted_for_greylisting(dns_server: DnsServer) -> None:
    # greylist's spf_pass_domains reads the note instead of evaluating again.
    from policyd.checks import greylist

    settings = settings_for(dns_server, "mailfrom_actions: {pass: ignore}")
    check = SpfCheck(settings)
    ctx = CheckContext(settings=settings, store=None, clock=ManualClock())
    req = request(sender="A@pass.example", instance="g1")
    assert asyncio.run(check.run(req, ctx)) is None  # no header, result still known
    assert greylist.SPF_NOTE == spf_check.MAILFROM_NOTE
    assert greylist.spf_note_key(req) == spf_check.mailfrom_note_key(req)
    assert greylist.spf_mailfrom_result(ctx, req, ipaddress.ip_address(CLIENT)) == "pass"
