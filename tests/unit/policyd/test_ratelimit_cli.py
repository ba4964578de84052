"""`postwarden ratelimit show|reset` and the inspection functions behind them."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from pathlib import Path

from click.testing import CliRunner

from policyd.check import CheckContext
from policyd.checks import ratelimit
from policyd.protocol import PolicyRequest, ProtocolState
from postwarden.cli import main
from postwarden.clock import ManualClock
from postwarden.config.load import load_config
from postwarden.config.schema import Settings
from postwarden.store.client import Store
from postwarden.store.embedded import EmbeddedRedis
from tests.conftest import make_async_store

CONFIG = """\
redis: {{url: "unix://{socket}", prefix: "pwtest:"}}
policyd:
  ratelimit:
    enabled: true
    first_time_recipients: {{limit: 10, per: 1d}}
    rules:
      - name: per_user
        key: sasl_username
        windows: [{{limit: 5, per: 1m}}, {{limit: 100, per: 1d}}]
      - name: per_net
        key: client_address
        ipv4_prefix: 24
        windows: [{{limit: 50, per: 1h}}]
"""


def setup(tmp_path: Path, redis_server: EmbeddedRedis) -> tuple[Path, Settings]:
    path = tmp_path / "postwarden.yaml"
    path.write_text(CONFIG.format(socket=redis_server.socket), encoding="utf-8")
    return path, load_config(path)


def send(redis_server: EmbeddedRedis, settings: Settings, clock: ManualClock, n: int) -> None:
    async def go() -> None:
        store = make_async_store(redis_server)
        check = ratelimit.build(settings, [])
        assert check is not None
        ctx = CheckContext(settings=settings, store=store, clock=clock)
        try:
            for i in range(n):
                req = PolicyRequest(
                    protocol_state=ProtocolState.RCPT,
                    sasl_username="Alice",
                    client_address=ipaddress.ip_address("192.0.2.7"),
                    instance=f"m{i}",
                    recipient=f"r{i}@x.example",
                )
                assert await check.run(req, ctx) is None
                clock.advance(10)
        finally:
            await store.close()

    asyncio.run(go())


def test_inspect_reports_use_and_time_to_free_per_window(
    tmp_path: Path, redis_server: EmbeddedRedis, store: Store
) -> None:
    _, settings = setup(tmp_path, redis_server)
    clock = ManualClock(1_700_000_000.0)
    send(redis_server, settings, clock, 3)  # at t=0, 10, 20; now t=30
    cfg = settings.policyd.ratelimit
    rows = {(r.rule, r.per_ms): r for r in ratelimit.inspect(store, cfg, "alice", clock.now())}
    minute = rows[("per_user", 60000)]
    assert (minute.subject, minute.used, minute.limit) == ("sasl_username:alice", 3, 5)
    assert (minute.next_free_ms, minute.reset_ms) == (30000, 50000)
    assert rows[("per_user", 86400000)].used == 3
    assert rows[("first_time_recipients", 86400000)].used == 3
    assert ("per_net", 3600000) not in rows  # "alice" is not an address
    net = ratelimit.inspect(store, cfg, "192.0.2.200", clock.now())
    assert [(r.subject, r.used) for r in net] == [("client_address:192.0.2.0/24", 3)]
    assert ratelimit.known_recipients(store, cfg, "alice", clock.now()) == 3


def test_cli_show_and_reset(tmp_path: Path, redis_server: EmbeddedRedis, store: Store) -> None:
    path, settings = setup(tmp_path, redis_server)
    send(redis_server, settings, ManualClock(time.time()), 2)
    runner = CliRunner()
    shown = runner.invoke(main, ["ratelimit", "show", "-c", str(path), "sasl_username:alice"])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert any(ln.startswith("per_user") and " 1m " in ln and "2/5" in ln for ln in lines)
    assert "known recipients of alice: 2" in shown.output
    reset = runner.invoke(main, ["ratelimit", "reset", "-c", str(path), "sasl_username:alice"])
    assert reset.exit_code == 0 and "deleted 3 counter key(s)" in reset.output
    after = runner.invoke(main, ["ratelimit", "show", "-c", str(path), "--json", "alice"])
    assert '"used": 0' in after.output and '"used": 2' not in after.output
    # the client network's counter and the known recipients are untouched
    net = store.keys.ratelimit("client_address:192.0.2.0/24", "per_net", "3600000")
    assert store.redis.zcard(net) == 2


def test_cli_show_of_a_key_no_rule_counts_on_fails(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    path, _ = setup(tmp_path, redis_server)
    result = CliRunner().invoke(main, ["ratelimit", "show", "-c", str(path), "sender:nobody"])
    assert result.exit_code == 1
