"""`postwarden greylist list|show|whitelist|delete` on the records policyd writes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from click.testing import CliRunner

from policyd.checks import greylist as gl
from postwarden.cli import main
from postwarden.clock import ManualClock
from postwarden.config.load import load_config
from postwarden.store.client import Store
from postwarden.store.embedded import EmbeddedRedis
from tests.conftest import make_async_store
from tests.unit.policyd.test_greylist import START, Harness, deferred


def config(tmp_path: Path, redis_server: EmbeddedRedis) -> str:
    path = tmp_path / "pw.yaml"
    path.write_text(
        f"""
redis: {{url: "unix://{redis_server.socket}", prefix: "pwtest:"}}
policyd:
  greylist: {{enabled: true, use_default_whitelist: false}}
"""
    )
    return str(path)


def ask(cfg: str, redis_server: EmbeddedRedis, advance: float = 0.0, **attrs: str) -> bool:
    """One greylist decision through the check; True if deferred."""
    settings = load_config(cfg)

    async def go() -> bool:
        store = make_async_store(redis_server)
        try:
            h = Harness(settings, store, ManualClock(START + advance))
            return deferred(await h.ask(**attrs))
        finally:
            await store.close()

    return asyncio.run(go())


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["greylist", *args])
    return result.exit_code, result.output


def test_list_and_show_print_waiting_and_passed_triplets(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    cfg = config(tmp_path, redis_server)
    asyncio.run(_flush(redis_server))
    assert ask(cfg, redis_server, recipient="a@rcpt.example")
    assert ask(cfg, redis_server, recipient="b@rcpt.example")
    assert not ask(cfg, redis_server, advance=600, recipient="a@rcpt.example")

    code, out = cli("list", "-c", cfg, "--json")
    assert code == 0, out
    rows = {r["recipient"]: r for r in map(json.loads, out.splitlines())}
    assert rows["a@rcpt.example"]["passed"] and not rows["b@rcpt.example"]["passed"]
    assert rows["a@rcpt.example"]["network"] == "192.0.2.0/24"
    assert rows["a@rcpt.example"]["sender"] == "alice@sender.example"

    code, out = cli("list", "-c", cfg, "--waiting")
    assert code == 0 and "<b@rcpt.example>" in out and "<a@rcpt.example>" not in out

    code, out = cli("show", "-c", cfg, "192.0.2.77")
    assert code == 0, out
    assert "client 192.0.2.0/24" in out and "1/5 passes" in out
    assert "passed " in out and "waiting" in out

    code, out = cli("show", "-c", cfg, "198.51.100.1")
    assert code == 0 and "nothing recorded for 198.51.100.0/24" in out


def test_whitelist_lets_a_client_network_skip_greylisting(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    cfg = config(tmp_path, redis_server)
    asyncio.run(_flush(redis_server))
    code, out = cli("whitelist", "-c", cfg, "--ttl", "7d", "192.0.2.10")
    assert code == 0, out
    assert "whitelisted 192.0.2.0/24" in out
    assert not ask(cfg, redis_server)
    assert ask(cfg, redis_server, client_address="198.51.100.1")
    code, out = cli("list", "-c", cfg, "--clients")
    assert "whitelisted (by hand)" in out


def test_delete_makes_a_triplet_start_over(tmp_path: Path, redis_server: EmbeddedRedis) -> None:
    cfg = config(tmp_path, redis_server)
    asyncio.run(_flush(redis_server))
    assert ask(cfg, redis_server)
    assert not ask(cfg, redis_server, advance=600)
    code, out = cli(
        "delete", "-c", cfg, "192.0.2.10",
        "--sender", "Alice+x@sender.example", "--recipient", "bob@rcpt.example",
    )  # fmt: skip
    assert code == 0 and "deleted 1 record(s)" in out
    assert ask(cfg, redis_server, advance=700)
    code, out = cli("delete", "-c", cfg, "192.0.2.0/24")
    assert code == 0 and "deleted 2 record(s)" in out  # the triplet and the client


def test_bad_client_argument_is_a_usage_error(tmp_path: Path, redis_server: EmbeddedRedis) -> None:
    cfg = config(tmp_path, redis_server)
    code, out = cli("show", "-c", cfg, "not-an-ip")
    assert code == 64 and "not an IP address or CIDR" in out
    code, out = cli("delete", "-c", cfg, "192.0.2.1", "--sender", "a@b.example")
    assert code == 64


async def _flush(redis_server: EmbeddedRedis) -> None:
    store = make_async_store(redis_server)
    try:
        await store.redis.flushall()
    finally:
        await store.close()


def test_hand_whitelisting_lasts_its_own_ttl_after_the_last_mail(
    tmp_path: Path, redis_server: EmbeddedRedis, store: Store
) -> None:
    cfg = config(tmp_path, redis_server)
    gl.whitelist_client(store, "192.0.2.0/24", START, 7 * 86400)
    assert not ask(cfg, redis_server, advance=6 * 86400)  # mail on day 6 refreshes it
    assert not ask(cfg, redis_server, advance=12 * 86400)
    ttl = store.redis.pttl(store.keys.greylist_client("192.0.2.0/24"))
    assert 7 * 86400 * 1000 - 5000 < ttl <= 7 * 86400 * 1000
    assert ask(cfg, redis_server, advance=19 * 86400 + 1)  # 7 days of silence: forgotten


def test_config_check_reports_bad_whitelist_lines_with_file_and_line(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    wl = tmp_path / "whitelist_clients"
    wl.write_text("mx.example.org\n/broken(/\n198.51.100.0/24\n")
    cfg = tmp_path / "pw.yaml"
    cfg.write_text(f"policyd:\n  greylist: {{enabled: true, whitelist_clients_files: [{wl}]}}\n")
    result = CliRunner().invoke(main, ["config", "check", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert f"{wl}:2: warning: policyd.greylist.whitelist_clients_files: bad regular" in (
        result.output
    )
    assert "1 warning(s)" in result.output
