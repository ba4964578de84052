"""Rate limits against a real Redis, with a ManualClock (no sleeping)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from policyd.check import BuiltCheck, CheckContext
from policyd.checks import ratelimit
from policyd.decision import Decision, Verb
from policyd.pipeline import evaluate
from policyd.protocol import PolicyRequest, ProtocolState
from postwarden.clock import ManualClock
from postwarden.config.load import load_config_text
from postwarden.config.schema import Settings
from postwarden.store.client import AsyncStore, Store
from postwarden.store.embedded import EmbeddedRedis
from tests.conftest import make_async_store

RCPT = ProtocolState.RCPT
EOM = ProtocolState.END_OF_MESSAGE


def settings_for(
    rules_yaml: str, first_time: str = "enabled: false", cluster: bool = False
) -> Settings:
    text = f"""
redis: {{cluster: {str(cluster).lower()}}}
policyd:
  ratelimit:
    enabled: true
    first_time_recipients: {{{first_time}}}
    rules:
{rules_yaml}
"""
    return load_config_text(text)


def check_for(settings: Settings) -> BuiltCheck:
    problems: list[Any] = []
    built = ratelimit.build(settings, problems)
    assert built is not None and not problems
    return built


class Harness:
    """One check on one AsyncStore, driven by a ManualClock."""

    def __init__(self, settings: Settings, store: AsyncStore, clock: ManualClock) -> None:
        self.check = check_for(settings)
        self.ctx = CheckContext(settings=settings, store=store, clock=clock)
        self.clock = clock
        self._n = 0

    async def ask(self, **attrs: Any) -> Decision | None:
        return await self.check.run(request(**attrs), self.ctx)

    async def message(self, *recipients: str, **attrs: Any) -> list[Decision | None]:
        """One message: a RCPT request per recipient, sharing one instance."""
        self._n += 1
        instance = attrs.pop("instance", f"inst.{self._n}")
        return [await self.ask(recipient=r, instance=instance, **attrs) for r in recipients]


def request(**attrs: Any) -> PolicyRequest:
    attrs.setdefault("protocol_state", RCPT)
    if isinstance(attrs.get("client_address"), str):
        attrs["client_address_raw"] = attrs["client_address"]
        attrs["client_address"] = ipaddress.ip_address(attrs["client_address"])
    return PolicyRequest(**attrs)


def run_with(
    redis_server: EmbeddedRedis,
    settings: Settings,
    body: Callable[[Harness], Awaitable[None]],
) -> None:
    async def go() -> None:
        store = make_async_store(redis_server)
        try:
            await body(Harness(settings, store, ManualClock(1_700_000_000.0)))
        finally:
            await store.close()

    asyncio.run(go())


PER_USER_5_PER_MIN = """
      - name: per_user
        key: sasl_username
        count: messages
        windows: [{limit: 5, per: 1m}]
"""


def test_sixth_message_in_a_minute_is_deferred_naming_limit_and_window(
    redis_server: EmbeddedRedis, store: Store
) -> None:
    async def body(h: Harness) -> None:
        for _ in range(5):
            assert await h.message("bob@example.net", sasl_username="alice") == [None]
        (decision,) = await h.message("bob@example.net", sasl_username="alice")
        assert decision is not None and decision.verb is Verb.DEFER
        line = decision.action_line()
        assert line.startswith("450 4.7.1 ")
        assert "5 messages per 1m" in line and "per_user" in line
        assert "try again in 60s" in line

    run_with(redis_server, settings_for(PER_USER_5_PER_MIN), body)


def test_window_edge_frees_events_exactly_one_window_later(
    redis_server: EmbeddedRedis, store: Store
) -> None:
    async def body(h: Harness) -> None:
        for _ in range(5):
            await h.message("r@example.net", sasl_username="alice")
        h.clock.advance(59.999)
        (d,) = await h.message("r@example.net", sasl_username="alice")
        assert d is not None and "try again in 1s" in d.action_line()
        h.clock.advance(0.001)  # now = first events + 60s: they have left (now - 60s, now]
        assert await h.message("r@example.net", sasl_username="alice") == [None]

    run_with(redis_server, settings_for(PER_USER_5_PER_MIN), body)


def test_sliding_window_counts_the_last_minute_not_the_calendar_minute(
    redis_server: EmbeddedRedis, store: Store
) -> None:
    async def body(h: Harness) -> None:
        for _ in range(3):
            await h.message("r@example.net", sasl_username="alice")
        h.clock.advance(50)
        for _ in range(2):  # a burst that fills the window
            assert await h.message("r@example.net", sasl_username="alice") == [None]
        h.clock.advance(11)  # the first three have left; the two at t=50 remain
        for _ in range(3):
            assert await h.message("r@example.net", sasl_username="alice") == [None]
        (d,) = await h.message("r@example.net", sasl_username="alice")
        assert d is not None and d.verb is Verb.DEFER
        # the oldest event still in the window is from t=50, so it frees at t=110
        assert "try again in 49s" in d.action_line()

    run_with(redis_server, settings_for(PER_USER_5_PER_MIN), body)


def test_refused_request_consumes_no_quota(redis_server: EmbeddedRedis, store: Store) -> None:
    async def body(h: Harness) -> None:
        for _ in range(5):
            await h.message("r@example.net", sasl_username="alice")
        for _ in range(10):
            (d,) = await h.message("r@example.net", sasl_username="alice")
            assert d is not None
        key = store.keys.ratelimit("sasl_username:alice", "per_user", "60000")
        assert store.redis.zcard(key) == 5

    run_with(redis_server, settings_for(PER_USER_5_PER_MIN), body)


def test_counter_keys_carry_a_ttl_of_one_window(redis_server: EmbeddedRedis, store: Store) -> None:
    async def body(h: Harness) -> None:
        await h.message("r@example.net", sasl_username="alice")

    run_with(redis_server, settings_for(PER_USER_5_PER_MIN), body)
    key = store.keys.ratelimit("sasl_username:alice", "per_user", "60000")
    assert 0 < store.redis.pttl(key) <= 60000


def test_each_window_of_a_rule_is_enforced_and_named(
    redis_server: EmbeddedRedis, store: Store
) -> None:
    rules = """
      - name: two_windows
        key: sasl_username
        windows: [{limit: 2, per: 1m}, {limit: 3, per: 1h}]
"""

    async def body(h: Harness) -> None:
        assert await h.message("r@x.example", sasl_username="a") == [None]
        assert await h.message("r@x.example", sasl_username="a") == [None]
        (d,) = await h.message("r@x.example", sasl_username="a")
        assert d is not None and "2 messages per 1m" in d.action_line()
        h.clock.advance(60)
        assert await h.message("r@x.example", sasl_username="a") == [None]
        h.clock.advance(60)
        (d,) = await h.message("r@x.example", sasl_username="a")
        assert d is not None and "3 messages per 1h" in d.action_line()
        # the hour frees when the first message (t=0) is an hour old
        assert "try again in 3480s" in d.action_line()

    run_with(redis_server, settings_for(rules), body)


def test_override_raises_the_limit_for_one_key_and_empty_list_exempts(
    redis_server: EmbeddedRedis, store: Store
) -> None:
    rules = """
      - name: per_sender
        key: sender
        windows: [{limit: 1, per: 1h}]
        overrides:
          news@example.com: [{limit: 3, per: 1h}]
          "@partner.example": []
"""

    async def body(h: Harness) -> None:
        for _ in range(3):
            assert await h.message("r@x.example", sender="News@example.com") == [None]
        (d,) = await h.message("r@x.example", sender="news@example.com")
        assert d is not None and "3 messages per 1h" in d.action_line()
        assert await h.message("r@x.example", sender="joe@example.com") == [None]
        (d,) = await h.message("r@x.example", sender="joe@example.com")
        assert d is not None and "1 messages per 1h" in d.action_line()
        for _ in range(5):
            assert await h.message("r@x.example", sender="any@partner.example") == [None]

    run_with(redis_server, settings_for(rules), body)


def test_multi_recipient_message_counts_once_as_message_and_per_rcpt_as_recipients(
    redis_server: EmbeddedRedis, store: Store
) -> None:
    rules = """
      - name: msgs
        key: sasl_username
        count: messages
        windows: [{limit: 2, per: 1h}]
      - name: rcpts
        key: sasl_username
        count: recipients
        windows: [{limit: 5, per: 1h}]
"""

    async def body(h: Harness) -> None:
        assert await h.message("a@x.example", "b@x.example", "c@x.example", sasl_username="u") == [
            None,
            None,
            None,
        ]
        msgs = store.keys.ratelimit("sasl_username:u", "msgs", "3600000")
        rcpts = store.keys.ratelimit("sasl_username:u", "rcpts", "3600000")
        assert (store.redis.zcard(msgs), store.redis.zcard(rcpts)) == (1, 3)
        # second message: 2 recipients fit, the third is over the recipients limit
        answers = await h.message("d@x.example", "e@x.example", "f@x.example", sasl_username="u")
        assert answers[:2] == [None, None]
        assert answers[2] is not None and "5 recipients per 1h" in answers[2].action_line()
        assert (store.redis.zcard(msgs), store.redis.zcard(rcpts)) == (2, 5)

    run_with(redis_server, settings_for(rules), body)


def test_bytes_are_counted_at_end_of_message_from_size(
    redis_server: EmbeddedRedis, store: Store
) -> None:
    rules = """
      - name: volume
        key: client_address
        count: bytes
        ipv4_prefix: 24
        windows: [{limit: 1000, per: 1h}]
"""

    async def body(h: Harness) -> None:
        # RCPT carries no size for this rule: nothing is counted there
        assert await h.ask(client_address="192.0.2.7", recipient="r@x.example") is None
        key = store.keys.ratelimit_sum("client_address:192.0.2.0/24", "volume", "3600000")
        assert store.redis.get(key) is None
        assert await h.ask(protocol_state=EOM, client_address="192.0.2.7", size=600) is None
        assert store.redis.get(key) == b"600"
        h.clock.advance(600)
        d = await h.ask(protocol_state=EOM, client_address="192.0.2.99", size=500)
        assert d is not None and "1000 bytes per 1h" in d.action_line()
        assert "try again in 3000s" in d.action_line()
        assert await h.ask(protocol_state=EOM, client_address="192.0.2.99", size=400) is None
        h.clock.advance(3000)  # the 600 bytes leave the window and are subtracted
        assert await h.ask(protocol_state=EOM, client_address="192.0.2.1", size=500) is None
        assert store.redis.get(key) == b"900"
        d = await h.ask(protocol_state=EOM, client_address="192.0.2.1", size=5000)
        assert d is not None and "this message alone is over it" in d.action_line()

    run_with(redis_server, settings_for(rules), body)


def test_first_time_recipients_limit_new_addresses_but_not_known_ones(
    redis_server: EmbeddedRedis, store: Store
) -> None:
    first_time = "limit: 3, per: 1d, remember: 30d"

    async def body(h: Harness) -> None:
        for rcpt in ("a@x.example", "b@x.example", "c@x.example"):
            assert await h.message(rcpt, sasl_username="alice") == [None]
        (d,) = await h.message("new@x.example", sasl_username="alice")
        assert d is not None and "3 first-time recipients per 1d per login" in d.action_line()
        # normal correspondence goes on: known recipients are not counted
        for _ in range(10):
            assert await h.message("A@x.example", sasl_username="alice") == [None]
        # unauthenticated mail is not subject to it
        assert await h.message("new@x.example", sender="x@y.example") == [None]
        known = store.keys.known_recipients("sasl_username:alice")
        assert store.redis.zcard(known) == 3
        assert 29 * 86400 * 1000 < store.redis.pttl(known) <= 30 * 86400 * 1000
        h.clock.advance(86400)
        assert await h.message("new@x.example", sasl_username="alice") == [None]

    run_with(redis_server, settings_for("      []", first_time=first_time), body)


def test_known_recipient_is_forgotten_after_remember(
    redis_server: EmbeddedRedis, store: Store
) -> None:
    first_time = "limit: 1, per: 1h, remember: 90m"

    async def body(h: Harness) -> None:
        assert await h.message("a@x.example", sasl_username="alice") == [None]
        h.clock.advance(3600)
        assert await h.message("b@x.example", sasl_username="alice") == [None]
        h.clock.advance(1800)  # a is 90m old: forgotten, so it counts as new again
        (d,) = await h.message("a@x.example", sasl_username="alice")
        assert d is not None and d.verb is Verb.DEFER

    run_with(redis_server, settings_for("      []", first_time=first_time), body)


@pytest.mark.parametrize(
    ("action", "verb", "start"),
    [("reject", Verb.REJECT, "550 5.7.1 Rate limit"), ("hold", Verb.HOLD, "HOLD Rate limit")],
)
def test_action_reject_and_hold(
    redis_server: EmbeddedRedis, store: Store, action: str, verb: Verb, start: str
) -> None:
    rules = f"""
      - key: client_address
        action: {action}
        windows: [{{limit: 1, per: 1m}}]
"""

    async def body(h: Harness) -> None:
        assert await h.message("r@x.example", client_address="2001:db8::1") == [None]
        (d,) = await h.message("r@x.example", client_address="2001:db8::2")  # same /64
        assert d is not None and d.verb is verb and d.action_line().startswith(start)
        assert await h.message("r@x.example", client_address="2001:db8:1::1") == [None]

    run_with(redis_server, settings_for(rules), body)


def test_log_only_rule_counts_and_logs_but_never_refuses(
    redis_server: EmbeddedRedis, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    rules = """
      - name: watch
        key: sender_domain
        action: log
        windows: [{limit: 1, per: 1m}]
"""

    async def body(h: Harness) -> None:
        for _ in range(3):
            assert await h.message("r@x.example", sender="a@watched.example") == [None]

    run_with(redis_server, settings_for(rules), body)
    lines = [r.getMessage() for r in caplog.records if "log-only" in r.getMessage()]
    assert len(lines) == 2 and "rule=watch" in lines[0] and "used=2/1" in lines[0]


def test_rule_filters_applies_to_clients_and_senders(
    redis_server: EmbeddedRedis, store: Store
) -> None:
    rules = """
      - name: anon_lan
        key: client_address
        applies_to: unauthenticated
        clients: [198.51.100.0/24]
        senders: ["example.com"]
        windows: [{limit: 1, per: 1m}]
"""

    async def body(h: Harness) -> None:
        ip = "198.51.100.5"
        assert await h.message("r@x.example", client_address=ip, sender="a@mail.example.com") == [
            None
        ]
        (d,) = await h.message("r@x.example", client_address=ip, sender="b@example.com")
        assert d is not None
        # not matching: authenticated, other network, other sender domain
        for attrs in (
            {"client_address": ip, "sender": "a@example.com", "sasl_username": "u"},
            {"client_address": "203.0.113.1", "sender": "a@example.com"},
            {"client_address": ip, "sender": "a@other.example"},
        ):
            assert await h.message("r@x.example", **attrs) == [None]

    run_with(redis_server, settings_for(rules), body)


def test_missing_attribute_skips_the_rule_with_a_debug_log(
    redis_server: EmbeddedRedis, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    rules = """
      - name: per_user
        key: sasl_username
        windows: [{limit: 1, per: 1m}]
      - name: per_rcpt_domain
        key: recipient_domain
        windows: [{limit: 1, per: 1m}]
"""

    async def body(h: Harness) -> None:
        for _ in range(3):
            assert await h.ask(sender="a@b.example", instance=f"i{h.clock.now()}") is None
            h.clock.advance(1)
        assert await h.ask(sasl_username="u", recipient="r@x.example") is None  # no instance

    run_with(redis_server, settings_for(rules), body)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("per_user does not apply: request has no sasl_username" in m for m in debug)
    assert any(
        "per_rcpt_domain does not apply: request has no recipient_domain" in m for m in debug
    )
    assert any("does not apply: request has no instance" in m for m in debug)
    assert store.redis.keys("pwtest:rl:*") == []


SPLIT_RULES = """
      - name: per_user
        key: sasl_username
        windows: [{limit: 10, per: 1m}]
      - name: per_net
        key: client_address
        windows: [{limit: 2, per: 1m}]
"""


def test_cluster_split_undoes_other_subjects_when_one_refuses(
    redis_server: EmbeddedRedis, store: Store
) -> None:
    async def body(h: Harness) -> None:
        for _ in range(2):
            assert await h.message(
                "r@x.example", sasl_username="u", client_address="192.0.2.1"
            ) == [None]
        (d,) = await h.message("r@x.example", sasl_username="u", client_address="192.0.2.1")
        assert d is not None and "per_net" in d.action_line()

    run_with(redis_server, settings_for(SPLIT_RULES, cluster=True), body)
    user = store.keys.ratelimit("sasl_username:u", "per_user", "60000")
    net = store.keys.ratelimit("client_address:192.0.2.1/32", "per_net", "60000")
    # the refused message was counted for the user by its own call, then undone
    assert (store.redis.zcard(user), store.redis.zcard(net)) == (2, 2)


@pytest.mark.parametrize("cluster", [False, True], ids=["one-call", "split-per-subject"])
def test_two_instances_sharing_redis_count_exactly_under_concurrency(
    redis_server: EmbeddedRedis, store: Store, cluster: bool
) -> None:
    # Given two policyd instances (two AsyncStores) and 24 concurrent clients
    settings = settings_for(
        SPLIT_RULES.replace("limit: 2", "limit: 50").replace("limit: 10", "limit: 100"),
        cluster=cluster,
    )
    clock = ManualClock(1_700_000_000.0)

    async def go() -> tuple[int, int]:
        stores = [make_async_store(redis_server), make_async_store(redis_server)]
        checks = [Harness(settings, s, clock) for s in stores]
        allowed = refused = 0

        async def client(n: int) -> None:
            nonlocal allowed, refused
            h = checks[n % 2]
            for i in range(5):
                d = await h.ask(sasl_username=f"user{n % 3}", client_address="192.0.2.9",
                                recipient="r@x.example", instance=f"c{n}.{i}")  # fmt: skip
                if d is None:
                    allowed += 1
                else:
                    refused += 1

        try:
            # When 120 messages race for 50 slots of the shared network rule
            await asyncio.gather(*(client(n) for n in range(24)))
        finally:
            for s in stores:
                await s.close()
        return allowed, refused

    allowed, refused = asyncio.run(go())
    # Then exactly 50 pass, and the counters hold exactly what passed
    assert (allowed, refused) == (50, 70)
    net = store.keys.ratelimit("client_address:192.0.2.9/32", "per_net", "60000")
    assert store.redis.zcard(net) == 50
    users = sum(
        store.redis.zcard(store.keys.ratelimit(f"sasl_username:user{u}", "per_user", "60000"))
        for u in range(3)
    )
    assert users == 50


def test_disabled_ratelimit_builds_no_check() -> None:
    assert ratelimit.build(Settings(), []) is None


def test_window_text_uses_config_units() -> None:
    assert [ratelimit.window_text(ms) for ms in (60000, 86400000, 90000, 1500, 3600000)] == [
        "1m",
        "1d",
        "90s",
        "1.5s",
        "1h",
    ]


def test_warn_mode_adds_a_header_and_consumes_no_quota(
    redis_server: EmbeddedRedis, store: Store
) -> None:
    settings = load_config_text(
        "policyd:\n  ratelimit:\n    enabled: true\n    mode: warn\n"
        "    first_time_recipients: {enabled: false}\n    rules:\n" + PER_USER_5_PER_MIN
    )

    async def body(h: Harness) -> None:
        for i in range(7):
            req = request(sasl_username="alice", recipient="r@x.example", instance=f"w{i}")
            outcome = await evaluate([h.check], req, h.ctx)
            if i < 5:
                assert outcome.decision.verb is Verb.DUNNO
            else:
                assert outcome.decision.verb is Verb.PREPEND
                assert outcome.decision.header.startswith("X-Postwarden-Warn: ratelimit would 450")

    run_with(redis_server, settings, body)
    key = store.keys.ratelimit("sasl_username:alice", "per_user", "60000")
    assert store.redis.zcard(key) == 5
