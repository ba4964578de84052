"""Fixtures shared by every test layer.

- `redis_server`: one private, real redis-server per session on a unix socket
  (started through the product's own `EmbeddedRedis`), flushed between tests.
  It is ours alone, so FLUSHALL is safe.
- `store` / `async_store`: the product's store objects on that server.
- Log discipline: a test that logs WARNING or above fails unless it declares
  `@pytest.mark.expect_log("WARNING", "text")`.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from postwarden.config.schema import RedisSettings
from postwarden.store.client import AsyncStore, Store, open_async_store, open_store
from postwarden.store.embedded import EmbeddedRedis

REPO = Path(__file__).resolve().parent.parent

if os.environ.get("PYTHONASYNCIODEBUG"):
    # The debug run exists to catch blocking calls in coroutines (STYLE.md: a
    # pyspf or Redis call on the loop stalls every Postfix connection). Real
    # blocking shows up as hundreds of ms; 0.25 s keeps a busy CI machine's
    # scheduling jitter from posing as one.
    asyncio.base_events.BaseEventLoop.slow_callback_duration = 0.25
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session", autouse=True)
def _private_postfix_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Point Postfix tools run by tests (postmap, postqueue) at a private,
    minimal config dir, so tests never depend on /etc/postfix (absent when
    the package was installed with "No configuration")."""
    conf = tmp_path_factory.mktemp("postfix-conf")
    (conf / "main.cf").write_text("compatibility_level = 3.6\nmaillog_file = /dev/stdout\n")
    old = os.environ.get("MAIL_CONFIG")
    os.environ["MAIL_CONFIG"] = str(conf)
    yield
    if old is None:
        os.environ.pop("MAIL_CONFIG", None)
    else:
        os.environ["MAIL_CONFIG"] = old


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_socket(redis_server: EmbeddedRedis) -> str:
    return redis_server.socket


@pytest.fixture
def store(redis_server: EmbeddedRedis) -> Iterator[Store]:
    s = open_store(RedisSettings(prefix="pwtest:"), redis_server.socket)
    s.redis.flushall()
    yield s
    s.close()


def make_async_store(redis_server: EmbeddedRedis) -> AsyncStore:
    """An AsyncStore bound to the session server; create it inside the test's loop."""
    return open_async_store(RedisSettings(prefix="pwtest:"), redis_server.socket)


@pytest.fixture(autouse=True)
def _fail_on_unexpected_warnings(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    expected = [m.args for m in request.node.iter_markers("expect_log")]
    bad = []
    for record in caplog.get_records("call"):
        if record.levelno < logging.WARNING:
            continue
        text = record.getMessage()
        if any(
            record.levelno >= logging.getLevelName(level) and needle in text
            for level, needle in expected
        ):
            continue
        bad.append(f"{record.levelname} {record.name}: {text}")
    if bad:
        pytest.fail("unexpected log records:\n" + "\n".join(bad), pytrace=False)
