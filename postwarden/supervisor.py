"""`postwarden run`: start every enabled service, keep them running.

One child process per service (`postwarden milter NAME`, `postwarden
policyd`), started from the same executable so the children are exactly what
an admin would run by hand. The supervisor:
- starts the embedded redis-server first when `redis.url` is not set, and
  stops it last;
- restarts a child that dies, with exponential backoff (1 s doubling to
  60 s, reset once a child has stayed up for a minute), logging each death;
- on SIGTERM/SIGINT, forwards SIGTERM and waits for the children (in-flight
  messages finish or get their fallback), then stops Redis;
- on SIGHUP, validates the config file first: a bad file is refused with
  its problems and nothing changes; a good one is forwarded as SIGHUP to
  every child (they reload in place), and services newly enabled or
  disabled are started or stopped.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from postwarden import metrics, privileges, sdnotify
from postwarden.config import ConfigError, Settings, load_config
from postwarden.store.embedded import EmbeddedRedis, answers, socket_path

log = logging.getLogger("postwarden.supervisor")

BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
STABLE_AFTER = 60.0
STOP_DEADLINE = 30.0
CHECK_DEADLINE = 120.0  # `config check` on reload compiles every rule table


# Settings -> the services to run, as `postwarden` arguments (("milter", "headers"),
# ("policyd",)). The CLI passes it in: which milters exist is the services'
# business, and the core imports no service.
ServiceList = Callable[[Settings], list[tuple[str, ...]]]


@dataclass
class Child:
    service: tuple[str, ...]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = BACKOFF_START
    restart_at: float = 0.0
    deaths: int = 0

    @property
    def name(self) -> str:
        return " ".join(self.service)


@dataclass
class Supervisor:
    config_path: str
    settings: Settings
    enabled_services: ServiceList
    children: dict[tuple[str, ...], Child] = field(default_factory=dict)
    redis: EmbeddedRedis | None = None
    _stop: bool = False
    _reload: bool = False

    def command(self, service: tuple[str, ...]) -> list[str]:
        return [sys.executable, "-m", "postwarden", *service, "-c", self.config_path]

    def start_child(self, child: Child) -> None:
        # Only the supervisor speaks to systemd; a child's READY=1 would be premature.
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        child.process = subprocess.Popen(
            self.command(child.service), stdin=subprocess.DEVNULL, env=env
        )
        child.started = time.monotonic()
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def run(self) -> int:
        s = self.settings
        privileges.own_dir(s.state_dir, privileges.effective(s.privileges), 0o750, adopt=False)
        if s.redis.url is None and s.redis.sentinel is None:
            if answers(socket_path(s.state_dir)):
                log.info("reusing the Redis that answers on %s", socket_path(s.state_dir))
            else:
                run_as = privileges.effective(s.privileges)  # redis as the service user
                self.redis = EmbeddedRedis(s.state_dir, run_as=run_as)
                sock = self.redis.start()
                log.info("embedded redis-server on %s", sock)
        if s.metrics.enabled:
            mdir = os.path.join(s.state_dir, "metrics")
            shutil.rmtree(mdir, ignore_errors=True)
            privileges.own_dir(mdir, privileges.effective(s.privileges), 0o755)
            os.environ[metrics.MULTIPROC_ENV] = mdir
            metrics.serve(s.metrics.listen)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        for service in self.enabled_services(s):
            child = Child(service)
            self.children[service] = child
            self.start_child(child)
        sdnotify.notify("READY=1")
        watchdog = sdnotify.Watchdog()
        try:
            while not self._stop:
                watchdog.tick()
                if self._reload:
                    self._reload = False
                    self.reload()
                self.reap()
                time.sleep(0.2)
        finally:
            sdnotify.notify("STOPPING=1")
            self.stop_all()
            if self.redis is not None:
                self.redis.stop()
        return 0

    def _on_stop(self, signum: int, frame: object) -> None:
        self._stop = True

    def _on_hup(self, signum: int, frame: object) -> None:
        self._reload = True

    def reap(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            proc = child.process
            if proc is None:
                if child.restart_at and now >= child.restart_at:
                    child.restart_at = 0.0
                    self.start_child(child)
                continue
            code = proc.poll()
            if code is None:
                if now - child.started > STABLE_AFTER:
                    child.backoff = BACKOFF_START
                continue
            child.process = None
            child.deaths += 1
            if os.environ.get(metrics.MULTIPROC_ENV):
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
            child.restart_at = now + child.backoff
            log.warning(
                "%s exited with status %s; restarting in %.0fs", child.name, code, child.backoff
            )
            child.backoff = min(child.backoff * 2, BACKOFF_MAX)

    def validate(self) -> Settings | None:
        """The new config if `postwarden config check` (what every service will
        load and build) accepts it, else None with its problems logged."""
        try:
            check = subprocess.run(
                [sys.executable, "-m", "postwarden", "config", "check", "-c", self.config_path],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
                timeout=CHECK_DEADLINE,
            )
        except subprocess.TimeoutExpired:
            log.error("reload refused: config check took over %.0fs", CHECK_DEADLINE)
            return None
        if check.returncode != 0:
            log.error("reload refused, services keep the running config:\n%s", check.stderr.strip())
            return None
        try:
            return load_config(self.config_path)
        except ConfigError as exc:  # changed again since the check
            log.error("reload refused, services keep the running config:\n%s", exc)
            return None

    def reload(self) -> None:
        new = self.validate()
        if new is None:
            return
        self.settings = new
        wanted = set(self.enabled_services(new))
        for service in list(self.children):
            if service not in wanted:
                child = self.children.pop(service)
                self._terminate([child])
                log.info("stopped %s (disabled in config)", child.name)
        for service in wanted:
            if service not in self.children:
                child = Child(service)
                self.children[service] = child
                self.start_child(child)
            else:
                proc = self.children[service].process
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGHUP)
        log.info("config reloaded")

    def stop_all(self) -> None:
        self._terminate(list(self.children.values()))

    def _terminate(self, children: list[Child]) -> None:
        live = [c for c in children if c.process is not None and c.process.poll() is None]
        for c in live:
            assert c.process is not None
            c.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_DEADLINE
        for c in live:
            assert c.process is not None
            try:
                c.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", c.name, STOP_DEADLINE)
                c.process.kill()
                c.process.wait()
