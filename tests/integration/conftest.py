"""Fixtures for tests against a real Postfix and the real postwarden commands.

- `sink`: an SMTP sink (tests/harness/sink.py) that Postfix relays to.
- `postfix_factory(**options)`: a started `PostfixInstance` relaying to `sink`
  (options are `PostfixOptions` fields); every instance stops at teardown.
- `socket_dir`: a short 0755 directory the `postfix` user can traverse,
  for the unix sockets Postfix connects to.
- `postwarden_config(...)`: writes a postwarden YAML (see
  `harness.services.write_config`) with Redis on the session server.
- `postwarden_service(config, "milter", "noop")` / `(config, "policyd")`:
  starts `postwarden milter NAME -c FILE` / `postwarden policyd -c FILE` and
  waits for its socket; SIGTERM (then SIGKILL) at teardown.

Every test in this directory is marked `integration`. They need root (Postfix
refuses to start otherwise) and the Debian postfix package.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from postwarden.store.embedded import EmbeddedRedis
from tests.harness.ports import shared_tempdir
from tests.harness.postfix import POSTFIX, PostfixInstance, PostfixOptions
from tests.harness.services import ServiceConfig, ServiceProcess, start_service, write_config
from tests.harness.sink import SmtpSink

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def _postfix_available() -> None:
    # Missing parts fail loudly: `./dev test` installs them, and a skipped
    # end-to-end test would prove nothing.
    if not os.path.exists(POSTFIX):
        pytest.fail("Postfix is not installed: run ./dev test (apt-get install postfix)")
    if os.geteuid() != 0:
        pytest.fail("a private Postfix instance must be started as root: run ./dev test as root")


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture
def postfix_factory(
    _postfix_available: None, sink: SmtpSink
) -> Iterator[Callable[..., PostfixInstance]]:
    started: list[PostfixInstance] = []

    def make(**options: Any) -> PostfixInstance:
        options.setdefault("relayhost", sink.relayhost)
        instance = PostfixInstance(PostfixOptions(**options))
        started.append(instance)
        return instance.start()

    yield make
    for instance in started:
        instance.stop()


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = shared_tempdir("pw-s-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def postwarden_config(
    tmp_path: Path, socket_dir: Path, redis_server: EmbeddedRedis
) -> Callable[..., ServiceConfig]:
    """Factory: `postwarden_config(milters=("noop",), overrides={...})`."""
    # The session server is ours alone: start each test from an empty keyspace.
    client = redis.Redis(unix_socket_path=redis_server.socket)
    client.flushall()
    client.close()

    def make(**kwargs: Any) -> ServiceConfig:
        kwargs.setdefault("redis_socket", redis_server.socket)
        return write_config(tmp_path / "config", socket_dir, **kwargs)

    return make


@pytest.fixture
def postwarden_service(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: `postwarden_service(config, "milter", "noop")` -> ServiceProcess."""
    started: list[ServiceProcess] = []
    log_dir = tmp_path / "service-logs"
    log_dir.mkdir(exist_ok=True)

    def start(config: ServiceConfig | Path, kind: str, name: str | None = None) -> ServiceProcess:
        if not isinstance(config, ServiceConfig):
            config = ServiceConfig(Path(config), yaml.safe_load(Path(config).read_text()))
        service = start_service(config, kind, name, log_dir=log_dir)
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        service.stop()
