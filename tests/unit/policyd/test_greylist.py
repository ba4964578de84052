"""Greylisting against a real Redis, time moved by a ManualClock (no sleeping)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from policyd.check import BuiltCheck, CheckContext
from policyd.checks import greylist
from policyd.decision import Decision, Verb
from policyd.pipeline import build_pipeline, evaluate
from policyd.protocol import PolicyRequest, ProtocolState
from postwarden.clock import ManualClock
from postwarden.config.errors import ConfigError, ConfigProblem
from postwarden.config.load import load_config_text
from postwarden.config.schema import Settings
from postwarden.config.sections.greylist import client_pattern, recipient_pattern
from postwarden.store.client import AsyncStore
from postwarden.store.embedded import EmbeddedRedis
from tests.conftest import make_async_store
from tests.fixtures.dnsserver import DnsServer

START = 1_700_000_000.0
MINUTE = 60.0
DAY = 86400.0


def settings_for(extra: str = "", trusted: str = "[127.0.0.0/8]") -> Settings:
    text = f"""
trusted_networks: {trusted}
policyd:
  greylist:
    enabled: true
    use_default_whitelist: false
{extra}
"""
    return load_config_text(text)


def build(settings: Settings) -> BuiltCheck:
    problems: list[ConfigProblem] = []
    built = greylist.build(settings, problems)
    assert built is not None
    assert problems == []
    return built


def request(**attrs: Any) -> PolicyRequest:
    attrs.setdefault("protocol_state", ProtocolState.RCPT)
    attrs.setdefault("client_address", "192.0.2.10")
    attrs.setdefault("client_name", "unknown")
    attrs.setdefault("sender", "alice@sender.example")
    attrs.setdefault("recipient", "bob@rcpt.example")
    if isinstance(attrs.get("client_address"), str):
        attrs["client_address_raw"] = attrs["client_address"]
        attrs["client_address"] = ipaddress.ip_address(attrs["client_address"])
    return PolicyRequest(**attrs)


class Harness:
    """One greylist check on one AsyncStore (one policyd instance)."""

    def __init__(self, settings: Settings, store: AsyncStore, clock: ManualClock) -> None:
        self.check = build(settings)
        self.ctx = CheckContext(settings=settings, store=store, clock=clock)
        self.clock = clock
        self.store = store

    async def ask(self, **attrs: Any) -> Decision | None:
        return await self.check.run(request(**attrs), self.ctx)


def run_with(
    redis_server: EmbeddedRedis,
    settings: Settings,
    body: Callable[[Harness], Awaitable[None]],
) -> None:
    async def go() -> None:
        store = make_async_store(redis_server)
        await store.redis.flushall()
        try:
            await body(Harness(settings, store, ManualClock(START)))
        finally:
            await store.close()

    asyncio.run(go())


def deferred(d: Decision | None) -> bool:
    return d is not None and d.verb in (Verb.DEFER, Verb.DEFER_IF_PERMIT)


def passed(d: Decision | None) -> bool:
    return d is None or d.verb is Verb.PREPEND


# -- the greylisting rules -------------------------------------------------------


def test_greylist_defers_first_attempt_with_defer_if_permit_and_retry_hint(
    redis_server: EmbeddedRedis,
) -> None:
    async def body(h: Harness) -> None:
        d = await h.ask()
        assert d is not None and d.verb is Verb.DEFER_IF_PERMIT
        assert d.action_line() == (
            "DEFER_IF_PERMIT 4.7.1 Greylisted, please try again in 300 seconds"
        )

    run_with(redis_server, settings_for(), body)


def test_greylist_action_defer_answers_450_at_once(redis_server: EmbeddedRedis) -> None:
    async def body(h: Harness) -> None:
        d = await h.ask()
        assert d is not None
        assert d.action_line() == "450 4.7.1 Greylisted for 300s at rcpt.example"

    cfg = '    action: defer\n    reply_text: "Greylisted for %ss at %r"'
    run_with(redis_server, settings_for(cfg), body)


def test_greylist_defers_early_retry_again_with_remaining_seconds(
    redis_server: EmbeddedRedis,
) -> None:
    async def body(h: Harness) -> None:
        assert deferred(await h.ask())
        h.clock.advance(4 * MINUTE)
        d = await h.ask()
        assert deferred(d)
        assert d is not None and d.reply is not None and "in 60 seconds" in d.reply.text

    run_with(redis_server, settings_for(), body)


def test_greylist_passes_retry_after_delay_with_delay_header(redis_server: EmbeddedRedis) -> None:
    async def body(h: Harness) -> None:
        assert deferred(await h.ask(instance="m1"))
        h.clock.advance(5 * MINUTE + 7)
        d = await h.ask(instance="m2")
        assert d is not None and d.verb is Verb.PREPEND
        assert d.header.startswith("X-Greylist: delayed 307 seconds by postwarden at ")
        # The triplet is now known: later mail passes at once, with no header.
        h.clock.advance(DAY)
        assert await h.ask(instance="m3") is None

    run_with(redis_server, settings_for(), body)


def test_greylist_header_is_added_once_per_message(redis_server: EmbeddedRedis) -> None:
    async def body(h: Harness) -> None:
        for rcpt in ("a@rcpt.example", "b@rcpt.example"):
            assert deferred(await h.ask(recipient=rcpt, instance="m1"))
        h.clock.advance(10 * MINUTE)
        first = await h.ask(recipient="a@rcpt.example", instance="m2")
        second = await h.ask(recipient="b@rcpt.example", instance="m2")
        assert first is not None and first.verb is Verb.PREPEND
        assert second is None

    run_with(redis_server, settings_for(), body)


def test_greylist_header_can_be_turned_off(redis_server: EmbeddedRedis) -> None:
    async def body(h: Harness) -> None:
        assert deferred(await h.ask())
        h.clock.advance(10 * MINUTE)
        assert await h.ask() is None

    run_with(redis_server, settings_for("    add_header: false"), body)


def test_greylist_retry_after_window_starts_over(redis_server: EmbeddedRedis) -> None:
    async def body(h: Harness) -> None:
        assert deferred(await h.ask())
        h.clock.advance(2 * DAY + 1)
        d = await h.ask()
        assert deferred(d)
        assert d is not None and d.reply is not None and "in 300 seconds" in d.reply.text
        h.clock.advance(5 * MINUTE)
        assert passed(await h.ask())

    run_with(redis_server, settings_for(), body)


def test_greylist_passed_triplet_is_forgotten_max_age_after_last_use(
    redis_server: EmbeddedRedis,
) -> None:
    async def body(h: Harness) -> None:
        assert deferred(await h.ask())
        h.clock.advance(5 * MINUTE)
        assert passed(await h.ask())
        h.clock.advance(30 * DAY)
        assert await h.ask() is None  # used: remembered 35 days from now
        h.clock.advance(34 * DAY)
        assert await h.ask() is None
        h.clock.advance(35 * DAY + 1)
        assert deferred(await h.ask())

    run_with(redis_server, settings_for("    auto_whitelist_clients: 0"), body)


def test_greylist_keys_carry_ttls_matching_their_state(redis_server: EmbeddedRedis) -> None:
    async def body(h: Harness) -> None:
        keys = h.store.keys
        net = "192.0.2.0/24"
        triplet = keys.greylist_triplet(net, "alice@sender.example", "bob@rcpt.example")
        await h.ask()
        pending = await h.store.redis.pttl(triplet)
        assert 2 * DAY * 1000 - 5000 < pending <= 2 * DAY * 1000
        h.clock.advance(2 * MINUTE)
        await h.ask()  # early retry: the window still counts from the first attempt
        left = (2 * DAY - 2 * MINUTE) * 1000
        assert left - 5000 < await h.store.redis.pttl(triplet) <= left
        h.clock.advance(10 * MINUTE)
        await h.ask()
        assert 35 * DAY * 1000 - 5000 < await h.store.redis.pttl(triplet) <= 35 * DAY * 1000
        client_ttl = await h.store.redis.pttl(keys.greylist_client(net))
        assert 35 * DAY * 1000 - 5000 < client_ttl <= 35 * DAY * 1000

    run_with(redis_server, settings_for(), body)


def test_greylist_auto_whitelists_client_network_after_n_passes(
    redis_server: EmbeddedRedis,
) -> None:
    async def body(h: Harness) -> None:
        for i in range(3):
            assert deferred(await h.ask(recipient=f"u{i}@rcpt.example"))
            h.clock.advance(5 * MINUTE)
            assert passed(await h.ask(recipient=f"u{i}@rcpt.example"))
        # Third pass reached the threshold: a new triplet from the /24 is not greylisted.
        assert await h.ask(recipient="new@rcpt.example", client_address="192.0.2.99") is None
        assert deferred(await h.ask(recipient="new@rcpt.example", client_address="192.0.3.1"))

    cfg = "    auto_whitelist_clients: 3\n    auto_whitelist_interval: 0"
    run_with(redis_server, settings_for(cfg), body)


def test_greylist_auto_whitelist_counts_one_pass_per_interval(redis_server: EmbeddedRedis) -> None:
    async def body(h: Harness) -> None:
        # Two triplets pass within the same hour: one count, not two.
        for rcpt in ("a@rcpt.example", "b@rcpt.example"):
            assert deferred(await h.ask(recipient=rcpt))
        h.clock.advance(5 * MINUTE)
        for rcpt in ("a@rcpt.example", "b@rcpt.example"):
            assert passed(await h.ask(recipient=rcpt))
        assert deferred(await h.ask(recipient="c@rcpt.example"))
        h.clock.advance(2 * 3600)
        assert passed(await h.ask(recipient="c@rcpt.example"))
        assert await h.ask(recipient="d@rcpt.example") is None

    run_with(redis_server, settings_for("    auto_whitelist_clients: 2"), body)


def test_greylist_auto_whitelist_off_keeps_greylisting_new_triplets(
    redis_server: EmbeddedRedis,
) -> None:
    async def body(h: Harness) -> None:
        for i in range(4):
            assert deferred(await h.ask(recipient=f"u{i}@rcpt.example"))
            h.clock.advance(2 * 3600)
            assert passed(await h.ask(recipient=f"u{i}@rcpt.example"))
        assert deferred(await h.ask(recipient="new@rcpt.example"))

    run_with(redis_server, settings_for("    auto_whitelist_clients: 0"), body)


# -- the triplet ---------------------------------------------------------------------


def test_greylist_groups_ipv4_clients_by_24(redis_server: EmbeddedRedis) -> None:
    async def body(h: Harness) -> None:
        assert deferred(await h.ask(client_address="198.51.100.7"))
        h.clock.advance(5 * MINUTE)
        # The pool retried from another host of the same /24: passes.
        assert passed(await h.ask(client_address="198.51.100.200"))
        assert deferred(await h.ask(client_address="198.51.101.7"))

    run_with(redis_server, settings_for("    auto_whitelist_clients: 0"), body)


def test_greylist_groups_ipv6_clients_by_64(redis_server: EmbeddedRedis) -> None:
    async def body(h: Harness) -> None:
        assert deferred(await h.ask(client_address="2001:db8:1:2::25"))
        h.clock.advance(5 * MINUTE)
        assert passed(await h.ask(client_address="2001:db8:1:2:ffff::1"))
        assert deferred(await h.ask(client_address="2001:db8:1:3::25"))

    run_with(redis_server, settings_for("    auto_whitelist_clients: 0"), body)


def test_greylist_exact_address_when_prefix_is_full_width(redis_server: EmbeddedRedis) -> None:
    async def body(h: Harness) -> None:
        assert deferred(await h.ask(client_address="198.51.100.7"))
        h.clock.advance(5 * MINUTE)
        assert deferred(await h.ask(client_address="198.51.100.8"))
        assert passed(await h.ask(client_address="198.51.100.7"))

    run_with(redis_server, settings_for("    ipv4_prefix: 32"), body)


def test_client_network_of_ipv4_mapped_ipv6_is_the_ipv4_network() -> None:
    ip = ipaddress.ip_address("::ffff:192.0.2.33")
    assert greylist.client_network(ip, 24, 64) == "192.0.2.0/24"


@pytest.mark.parametrize(
    ("first", "retry"),
    [
        pytest.param("news+123@list.example", "news+456@list.example", id="extension"),
        pytest.param("Alice@Sender.Example", "alice@sender.example", id="case"),
        pytest.param(
            "SRS0=HHH1=TT=orig.example=carol@fwd.example",
            "SRS0=HHH2=UU=orig.example=carol@fwd.example",
            id="srs0",
        ),
        pytest.param(
            "SRS1=X=fwd1.example==HHH=TT=orig.example=carol@fwd2.example",
            "SRS0=HHH2=UU=orig.example=carol@fwd3.example",
            id="srs1",
        ),
        pytest.param("prvs=1234abcdef=dave@b.example", "prvs=5678fedcba=dave@b.example", id="batv"),
        pytest.param("bounce-123-456@lists.example", "bounce-789-12@lists.example", id="verp"),
    ],
)
def test_greylist_normalised_senders_share_a_triplet(
    redis_server: EmbeddedRedis, first: str, retry: str
) -> None:
    async def body(h: Harness) -> None:
        assert deferred(await h.ask(sender=first))
        h.clock.advance(5 * MINUTE)
        assert passed(await h.ask(sender=retry))

    run_with(redis_server, settings_for("    auto_whitelist_clients: 0"), body)


def test_greylist_recipient_extension_is_stripped_too(redis_server: EmbeddedRedis) -> None:
    async def body(h: Harness) -> None:
        assert deferred(await h.ask(recipient="bob+one@rcpt.example"))
        h.clock.advance(5 * MINUTE)
        assert passed(await h.ask(recipient="bob+two@rcpt.example"))

    run_with(redis_server, settings_for(), body)


def test_greylist_normalisation_can_be_turned_off(redis_server: EmbeddedRedis) -> None:
    async def body(h: Harness) -> None:
        assert deferred(await h.ask(sender="news+1@list.example"))
        h.clock.advance(5 * MINUTE)
        assert deferred(await h.ask(sender="news+2@list.example"))

    cfg = "    strip_extension: false\n    mask_sender_numbers: false"
    run_with(redis_server, settings_for(cfg), body)


def test_normaliser_leaves_malformed_srs_and_batv_alone() -> None:
    n = greylist.Normaliser(strip_extension=False, mask_numbers=False)
    assert n.sender("SRS0=broken@fwd.example") == "srs0=broken@fwd.example"
    assert n.sender("prvs=onlyone@b.example") == "prvs=onlyone@b.example"
    assert n.sender("") == ""


# -- two policyd instances on one Redis --------------------------------------------


def test_two_policyd_instances_on_one_redis_agree(redis_server: EmbeddedRedis) -> None:
    settings = settings_for()

    async def go() -> None:
        a_store, b_store = make_async_store(redis_server), make_async_store(redis_server)
        await a_store.redis.flushall()
        clock = ManualClock(START)
        a = Harness(settings, a_store, clock)
        b = Harness(settings, b_store, clock)
        try:
            assert deferred(await a.ask())
            clock.advance(MINUTE)
            assert deferred(await b.ask())  # b sees a's triplet: early retry
            clock.advance(4 * MINUTE)
            assert passed(await b.ask())
            assert await a.ask() is None
        finally:
            await a_store.close()
            await b_store.close()

    asyncio.run(go())


def test_concurrent_first_attempts_on_two_instances_defer_once_each(
    redis_server: EmbeddedRedis,
) -> None:
    settings = settings_for()

    async def go() -> tuple[list[Decision | None], list[Decision | None]]:
        a_store, b_store = make_async_store(redis_server), make_async_store(redis_server)
        await a_store.redis.flushall()
        clock = ManualClock(START)
        a = Harness(settings, a_store, clock)
        b = Harness(settings, b_store, clock)
        try:
            first = await asyncio.gather(*(h.ask() for h in (a, b, a, b)))
            clock.advance(5 * MINUTE)
            second = await asyncio.gather(*(h.ask() for h in (a, b)))
            return list(first), list(second)
        finally:
            await a_store.close()
            await b_store.close()

    first, second = asyncio.run(go())
    assert all(deferred(d) for d in first)
    assert all(passed(d) for d in second)


# -- skips and whitelists ------------------------------------------------------------


def test_greylist_skips_authenticated_and_trusted_clients(redis_server: EmbeddedRedis) -> None:
    async def body(h: Harness) -> None:
        assert await h.ask(sasl_username="alice") is None
        assert await h.ask(client_address="127.0.0.1") is None
        assert deferred(await h.ask())

    run_with(redis_server, settings_for(), body)


@pytest.mark.parametrize("missing", ["client_address", "recipient"])
def test_greylist_without_client_address_or_recipient_answers_nothing_and_logs(
    redis_server: EmbeddedRedis, missing: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(h: Harness) -> None:
        attrs: dict[str, Any] = {missing: ""}
        if missing == "client_address":
            attrs = {"client_address": None, "client_address_raw": "unknown"}
        assert await h.ask(**attrs) is None
        assert await h.store.redis.dbsize() == 0

    run_with(redis_server, settings_for(), body)
    assert any(f"no {missing}" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("entry", "client_address", "client_name"),
    [
        pytest.param("mx.example.org", "203.0.113.5", "mx.example.org", id="hostname"),
        pytest.param("example.org", "203.0.113.5", "out3.mail.example.org", id="domain-suffix"),
        pytest.param(r"/^smtp\d+\.pool\./", "203.0.113.5", "smtp42.pool.example", id="regex"),
        pytest.param("203.0.113.5", "203.0.113.5", "unknown", id="ipv4"),
        pytest.param("203.0.113.0/25", "203.0.113.99", "unknown", id="ipv4-cidr"),
        pytest.param("203.0.113", "203.0.113.250", "unknown", id="partial-ipv4-24"),
        pytest.param("203.0", "203.0.200.1", "unknown", id="partial-ipv4-16"),
        pytest.param("2001:db8:5::/48", "2001:db8:5:1::9", "unknown", id="ipv6-cidr"),
        pytest.param("2001:db8::25", "2001:db8::25", "unknown", id="ipv6"),
    ],
)
def test_client_whitelist_formats_skip_greylisting(
    redis_server: EmbeddedRedis,
    tmp_path: Any,
    entry: str,
    client_address: str,
    client_name: str,
) -> None:
    wl = tmp_path / "whitelist_clients"
    wl.write_text(f"# local additions\n{entry}   # why\n")

    async def body(h: Harness) -> None:
        assert await h.ask(client_address=client_address, client_name=client_name) is None
        assert deferred(await h.ask(client_address="198.51.100.1", client_name="other.example"))

    run_with(redis_server, settings_for(f"    whitelist_clients_files: [{wl}]"), body)


def test_client_name_entries_need_a_verified_reverse_name(redis_server: EmbeddedRedis) -> None:
    async def body(h: Harness) -> None:
        # Postfix sends "unknown" when the reverse name did not verify: no match.
        assert deferred(await h.ask(client_name="unknown", reverse_client_name="mx.example.org"))
        assert await h.ask(client_name="mx.example.org") is None
        # A suffix matches whole labels only.
        assert deferred(await h.ask(client_name="mx.badexample.org", client_address="192.0.3.1"))

    run_with(redis_server, settings_for('    whitelist_clients: ["example.org"]'), body)


@pytest.mark.parametrize(
    ("entry", "recipient"),
    [
        pytest.param("postmaster@rcpt.example", "postmaster@rcpt.example", id="address"),
        pytest.param("postmaster@rcpt.example", "postmaster+x@rcpt.example", id="address-ext"),
        pytest.param("abuse@", "abuse@any.example", id="localpart"),
        pytest.param("rcpt.example", "bob@rcpt.example", id="domain"),
        pytest.param("rcpt.example", "bob@sub.rcpt.example", id="subdomain"),
        pytest.param("/^list-.*@rcpt\\.example$/", "list-dev@rcpt.example", id="regex"),
    ],
)
def test_recipient_whitelist_formats_skip_greylisting(
    redis_server: EmbeddedRedis, tmp_path: Any, entry: str, recipient: str
) -> None:
    wl = tmp_path / "whitelist_recipients"
    wl.write_text(f"{entry}\n")

    async def body(h: Harness) -> None:
        assert await h.ask(recipient=recipient) is None
        assert deferred(await h.ask(recipient="someone@other.example"))

    run_with(redis_server, settings_for(f"    whitelist_recipients_files: [{wl}]"), body)


def test_inline_whitelists_work_like_files(redis_server: EmbeddedRedis) -> None:
    async def body(h: Harness) -> None:
        assert await h.ask(client_address="203.0.113.9") is None
        assert await h.ask(recipient="postmaster@rcpt.example") is None
        assert deferred(await h.ask())

    cfg = '    whitelist_clients: ["203.0.113.0/24"]\n    whitelist_recipients: ["postmaster@"]'
    run_with(redis_server, settings_for(cfg), body)


def test_whitelist_file_bad_lines_are_warnings_with_file_and_line(tmp_path: Any) -> None:
    clients = tmp_path / "whitelist_clients"
    clients.write_text(
        "good.example\n"
        "/unbalanced(/\n"  # line 2: broken regex
        "\n"
        "not a hostname at all\n"  # line 4: garbage
        "300.1.2.3\n"  # line 5: not an address
        "192.0.2.0/24\n"
    )
    rcpts = tmp_path / "whitelist_recipients"
    rcpts.write_text("postmaster@\nfoo bar@example.com\n/[/\n")
    settings = settings_for(
        f"    whitelist_clients_files: [{clients}]\n    whitelist_recipients_files: [{rcpts}]"
    )
    problems: list[ConfigProblem] = []
    compiled = greylist.compile_settings(settings, problems)
    where = [(p.file, p.line, p.severity) for p in problems]
    assert where == [
        (str(clients), 2, "warning"),
        (str(clients), 4, "warning"),
        (str(clients), 5, "warning"),
        (str(rcpts), 2, "warning"),
        (str(rcpts), 3, "warning"),
    ]
    assert "regular expression" in problems[0].message
    assert str(problems[0]).startswith(f"{clients}:2: warning: policyd.greylist.")
    # The good lines loaded.
    assert len(compiled.clients) == 2 and len(compiled.recipients) == 1
    assert compiled.clients.match(ipaddress.ip_address("192.0.2.1"), "unknown")
    assert compiled.clients.match(ipaddress.ip_address("198.51.100.1"), "mx.good.example")


def test_inline_whitelist_garbage_is_a_config_error_with_its_line() -> None:
    text = """\
policyd:
  greylist:
    whitelist_clients:
      - "/broken(/"
"""
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "pw.yaml")
    (problem,) = exc.value.problems
    assert problem.file == "pw.yaml" and problem.line == 4
    assert problem.key == "policyd.greylist.whitelist_clients[0]"


def test_postgrey_debian_whitelist_files_load() -> None:
    """The files admins already have load with at most a few skipped lines."""
    problems: list[ConfigProblem] = []
    for name, parse in (
        ("whitelist_clients", client_pattern),
        ("whitelist_recipients", recipient_pattern),
    ):
        try:
            text = open(f"/etc/postgrey/{name}", encoding="utf-8").read()  # noqa: SIM115
        except OSError:
            pytest.fail(
                "postgrey's whitelist files are missing: run ./dev test (apt-get install postgrey)"
            )
        entries = greylist.read_list(text, name, "k", parse, problems)
        assert entries
    assert problems == []


def test_shipped_default_whitelist_parses_cleanly_and_covers_big_senders() -> None:
    problems: list[ConfigProblem] = []
    patterns = greylist.read_list(
        greylist.default_whitelist_text(), "default", "k", client_pattern, problems
    )
    assert problems == []
    wl = greylist.ClientWhitelist(patterns)
    assert wl.match(ipaddress.ip_address("209.85.220.41"), "unknown")  # Google
    assert wl.match(ipaddress.ip_address("40.107.22.1"), "unknown")  # Microsoft
    assert wl.match(
        ipaddress.ip_address("198.51.100.1"), "a8-31.smtp-out.amazonses.com"
    )  # Amazon SES by verified name
    assert not wl.match(ipaddress.ip_address("198.51.100.1"), "mail.example.net")


def test_default_whitelist_is_on_by_default(redis_server: EmbeddedRedis) -> None:
    async def body(h: Harness) -> None:
        assert await h.ask(client_address="209.85.220.41") is None
        assert deferred(await h.ask())

    settings = load_config_text("policyd: {greylist: {enabled: true}}")
    run_with(redis_server, settings, body)


# -- SPF-pass skipping -------------------------------------------------------------


def test_spf_pass_for_listed_sender_domain_skips_greylisting(redis_server: EmbeddedRedis) -> None:
    async def body(h: Harness) -> None:
        req_attrs = {"sender": "news@big.example", "instance": "i1"}
        key = greylist.spf_note_key(request(**req_attrs))
        h.ctx.state[greylist.SPF_NOTE] = {key: "pass"}
        assert await h.ask(**req_attrs) is None
        # Not listed, or SPF did not pass: greylisted as usual.
        h.ctx.state[greylist.SPF_NOTE] = {key: "softfail"}
        assert deferred(await h.ask(**req_attrs))
        other = {"sender": "x@unlisted.example", "instance": "i2"}
        h.ctx.state[greylist.SPF_NOTE] = {greylist.spf_note_key(request(**other)): "pass"}
        assert deferred(await h.ask(**other))

    cfg = "    spf_pass_domains: [big.example]"
    text = f"""
policyd:
  spf: {{enabled: true}}
  greylist:
    enabled: true
    use_default_whitelist: false
{cfg}
"""
    run_with(redis_server, load_config_text(text), body)


def test_spf_pass_domains_without_spf_check_is_a_warning() -> None:
    problems: list[ConfigProblem] = []
    text = """
policyd:
  spf: {enabled: false}
  greylist: {enabled: true, use_default_whitelist: false, spf_pass_domains: [big.example]}
"""
    greylist.build(load_config_text(text), problems)
    assert [p.severity for p in problems] == ["warning"]
    assert "policyd.spf" in problems[0].message


@pytest.mark.parametrize("cluster", [False, True], ids=["in-script", "separate-call"])
def test_greylist_counts_deferrals_and_passes_for_stat(
    redis_server: EmbeddedRedis, cluster: bool
) -> None:
    async def body(h: Harness) -> None:
        keys = h.store.keys
        assert deferred(await h.ask())
        assert deferred(await h.ask())
        h.clock.advance(10 * MINUTE)
        assert passed(await h.ask())
        assert await h.ask() is None
        assert await h.store.redis.get(keys.stat("greylisted")) == b"2"
        assert await h.store.redis.get(keys.stat("greylist_passed")) == b"1"
        assert await h.store.redis.ttl(keys.stat("greylisted")) > 300 * 86400

    settings = settings_for()
    if cluster:
        settings = load_config_text("redis: {cluster: true}\npolicyd: {greylist: {enabled: true}}")
    run_with(redis_server, settings, body)


def test_spf_pass_from_the_real_spf_check_skips_greylisting(redis_server: EmbeddedRedis) -> None:
    """spf then greylist in one pipeline, SPF answered by a loopback DNS server."""
    zone = {
        "big.example": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all")],
        "soft.big.example": [("TXT", "v=spf1 ~all")],
    }
    with DnsServer(zone) as dns:
        text = f"""
dns: {{nameservers: ["{dns.nameserver}"], timeout: 1s}}
policyd:
  spf: {{enabled: true, cache_ttl: "0", query_timeout: 500ms}}
  greylist:
    enabled: true
    use_default_whitelist: false
    spf_pass_domains: [big.example]
"""
        settings = load_config_text(text)
        problems: list[ConfigProblem] = []
        checks = build_pipeline(settings, problems)
        assert [c.name for c in checks] == ["spf", "greylist"] and problems == []

        async def go() -> list[Decision]:
            store = make_async_store(redis_server)
            await store.redis.flushall()
            ctx = CheckContext(settings=settings, store=store, clock=ManualClock(START))
            try:
                out = []
                for i, sender in enumerate(["news@big.example", "x@soft.big.example"]):
                    req = request(sender=sender, client_address="192.0.2.1", instance=f"m{i}")
                    out.append((await evaluate(checks, req, ctx)).decision)
                return out
            finally:
                await store.close()

        spf_pass, softfail = asyncio.run(go())
    # SPF passed: the Received-SPF header only, no greylisting
    assert spf_pass.verb is Verb.PREPEND and spf_pass.header.startswith("Received-SPF: pass")
    # Listed domain but no SPF pass: greylisted
    assert softfail.verb is Verb.DEFER_IF_PERMIT and softfail.check == "greylist"
