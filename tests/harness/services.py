"""postwarden services as real subprocesses, and the config files they read.

Tests start the shipped entry point (`.venv/bin/postwarden milter NAME -c
FILE`, `postwarden policyd -c FILE`), which also proves that the command
starts at all. Readiness is "the socket accepts a connection", polled; the
process's stderr goes to a file the test can read and search.

Permissions: Postfix's smtpd runs as user `postfix` and connects to these
sockets. The socket directory is a 0755 temp dir whose parents are searchable
(`ports.shared_tempdir`); the services give their sockets to group postfix,
mode 0660 (`postwarden.sockets`), and `ServiceProcess.start` checks that
they did.
"""

from __future__ import annotations

import copy
import grp
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from milters.service import STOP_DEADLINE
from postwarden.config.sections.policyd import CHECK_NAMES
from tests.harness.ports import free_port, wait_for_tcp, wait_for_unix_socket

REPO = Path(__file__).resolve().parents[2]
POSTWARDEN = REPO / ".venv" / "bin" / "postwarden"

MILTER_NAMES = ("headers", "attachments", "dkim", "spam", "noop")


def postwarden_argv() -> list[str]:
    """The console script if installed, else the same CLI through python -m."""
    if POSTWARDEN.exists():
        return [str(POSTWARDEN)]
    return [sys.executable, "-c", "from postwarden.cli import main; main()"]


def deep_merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge `overrides` into a copy of `base` (mappings merge)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class ServiceConfig:
    """A postwarden YAML file written for one test, and where its sockets are."""

    path: Path
    data: dict[str, Any]

    def socket(self, service: str) -> str:
        """Postfix notation of a service's socket: "policyd" or a milter name."""
        if service == "policyd":
            return str(self.data["policyd"]["socket"])
        return str(self.data["milters"][service]["socket"])

    def rewrite(self, overrides: Mapping[str, Any]) -> ServiceConfig:
        """Merge `overrides` into the file (for SIGHUP reload tests)."""
        data = deep_merge(self.data, overrides)
        self.path.write_text(yaml.safe_dump(data, sort_keys=False))
        return ServiceConfig(self.path, data)


def write_config(
    directory: Path,
    socket_dir: Path,
    redis_socket: str,
    *,
    milters: Sequence[str] = (),
    checks: Sequence[str] = ("access",),
    inet: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
    name: str = "postwarden.yaml",
) -> ServiceConfig:
    """Write a postwarden config for a test and return it.

    Everything is off except the milters in `milters` and the policyd checks
    in `checks`, so a test exercises only what it names. Redis is the
    session's private server. Services in `inet` (a milter name or
    "policyd") listen on a free loopback TCP port instead of a unix socket.
    """
    directory.mkdir(parents=True, exist_ok=True)

    def sock(service: str) -> str:
        if service in inet:
            return f"inet:127.0.0.1:{free_port()}"
        return f"unix:{socket_dir / f'{service}.sock'}"

    data: dict[str, Any] = {
        "redis": {"url": f"unix://{redis_socket}", "prefix": "pwit:"},
        "state_dir": str(directory / "state"),
        "log": {"level": "debug", "format": "text"},
        # Tests run as root and stay root (no postwarden user on CI machines);
        # sockets go to group postfix 0660, as in production.
        "privileges": {"user": None, "allow_root": True},
        "milters": {
            name_: {"enabled": name_ in milters, "socket": sock(name_)} for name_ in MILTER_NAMES
        },
        "policyd": {
            "enabled": True,
            "socket": sock("policyd"),
            **{check: {"enabled": check in checks} for check in CHECK_NAMES},
        },
    }
    if overrides:
        data = deep_merge(data, overrides)
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return ServiceConfig(path, data)


@dataclass
class ServiceProcess:
    """One `postwarden ...` subprocess, with its stderr in a file."""

    argv: list[str]
    socket: str  # Postfix notation: where readiness is polled
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        env = {**os.environ, **self.env}
        env.pop("POSTWARDEN_CONFIG", None)  # the test's -c is the only config
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
                start_new_session=True,  # a stray signal to our group misses it
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{' '.join(self.argv)} exited {self.proc.returncode} before"
                    f" listening:\n{self.log_text()}"
                )
            left = min(0.5, deadline - time.monotonic())
            if left <= 0:
                raise TimeoutError(
                    f"{' '.join(self.argv)} not listening on {self.socket}:\n{self.log_text()}"
                )
            try:
                self._probe(left)
                break
            except TimeoutError:
                continue
        if self.socket.startswith("unix:"):
            # A service binds its socket 0600 and then opens it to group
            # postfix (postwarden.sockets); root connects before that.
            postfix = grp.getgrnam("postfix").gr_gid
            while True:
                st = Path(self.socket[5:]).stat()
                if st.st_gid == postfix and st.st_mode & 0o060 == 0o060:
                    break
                if st.st_mode & 0o006 == 0o006:
                    break
                if time.monotonic() >= deadline or self.proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.socket} is {stat.filemode(st.st_mode)}: Postfix's smtpd (user"
                        f" postfix) could not connect to it:\n{self.log_text()}"
                    )
                time.sleep(0.01)

    def _probe(self, timeout: float) -> None:
        kind, _, rest = self.socket.partition(":")
        if kind == "unix":
            wait_for_unix_socket(Path(rest), timeout)
        else:
            host, _, port = rest.rpartition(":")
            wait_for_tcp(host.strip("[]"), int(port), timeout)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = STOP_DEADLINE + 5.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit status. The default
        wait outlasts the milter's own drain deadline, so a clean stop (and
        its last stats flush) is never cut short by the harness."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, needle: str, timeout: float = 30.0, start: int = 0) -> str:
        """Poll the captured stderr for `needle` (after character `start`)."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            text = self.log_text()[start:]
            for line in text.splitlines():
                if needle in line:
                    return line
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{needle!r} not logged within {timeout}s:\n{text[-3000:]}")
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


def service_argv(config: ServiceConfig, kind: str, name: str | None = None) -> list[str]:
    """argv for `postwarden milter NAME -c FILE` or `postwarden policyd -c FILE`."""
    if kind == "milter":
        if name is None:
            raise ValueError("a milter service needs a NAME")
        return [*postwarden_argv(), "milter", name, "-c", str(config.path)]
    if kind == "policyd":
        return [*postwarden_argv(), "policyd", "-c", str(config.path)]
    raise ValueError(f"unknown service kind {kind!r}")


def start_service(
    config: ServiceConfig, kind: str, name: str | None = None, *, log_dir: Path
) -> ServiceProcess:
    """Start a service from `config` and wait until its socket accepts."""
    label = name if kind == "milter" and name else kind
    service = ServiceProcess(
        argv=service_argv(config, kind, name),
        socket=config.socket(label),
        log_path=log_dir / f"{label}.stderr.log",
    )
    return service.start()


def start_supervisor(cfg: ServiceConfig, log_path: Path) -> ServiceProcess:
    """`postwarden run -c cfg`, started and ready (its policyd answers)."""
    return ServiceProcess(
        [*postwarden_argv(), "run", "-c", str(cfg.path)], cfg.socket("policyd"), log_path
    ).start()
