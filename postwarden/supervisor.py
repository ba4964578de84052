"""`postwarden run`: start every enabled service, keep them running.

One child process per service (`postwarden milter NAME`, `postwarden
policyd`), started from the same executable so the children are exactly what
an admin would run by hand. The supervisor:
- holds `state_dir/postwarden.pid` locked (pidlock.py): a second `run` for
  the same state_dir is refused while this one lives;
- keeps the last config that passed validation in `state_dir/running.yaml`
  (relative file paths made absolute) and starts every child with that
  file, never the admin's path: a child restarted after a refused reload
  runs what was validated, not the broken file;
- starts the embedded redis-server first when `redis.url` is not set, and
  supervises it like any child: a death is noticed (reaped, no zombie),
  logged as an error, and restarted with backoff; the services reconnect on
  their own, nobody else restarts;
- restarts a child that dies, with exponential backoff (1 s doubling to
  60 s, reset once a child has stayed up for a minute), logging each death;
  restarts are counted in `postwarden_supervisor_restarts_total{service}`
  and in `state_dir/supervisor.json`, which `postwarden stat` shows;
- with metrics on, runs the one /metrics endpoint as a child too
  (`postwarden metrics`, cli/metrics_server.py), so no HTTP server runs
  in this root process; it reads the services' multiprocess files, the
  restart counts from `supervisor.json` and Bayes from Redis;
- makes its children die with it (parentdeath.py), so a killed supervisor
  leaves no orphans behind to disturb the next one;
- on SIGTERM/SIGINT, forwards SIGTERM and waits for the children (in-flight
  messages finish or get their fallback), then stops Redis;
- on SIGHUP, validates the file first by running `postwarden config check`
  on a copy (exactly what every service will load and build): a bad file is
  refused with its problems and nothing changes; a good one becomes
  `running.yaml`, is forwarded as SIGHUP to every child (they reload in
  place), and services newly enabled or disabled are started or stopped.

The core imports no service: which services to run for a config is a
function the CLI passes in.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from postwarden import metrics, parentdeath, privileges, sdnotify
from postwarden.config import ConfigError, Settings
from postwarden.config.load import ENV_VAR, load_pinned, read_config_text
from postwarden.errors import EmbeddedRedisError, PostwardenError
from postwarden.pidlock import PidLock
from postwarden.store.embedded import EmbeddedRedis, answers, socket_path

log = logging.getLogger("postwarden.supervisor")

BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
STABLE_AFTER = 60.0
STOP_DEADLINE = 30.0
CHECK_DEADLINE = 120.0  # `config check` on reload compiles every rule table
ORPHAN_REDIS_WAIT = 15.0

RUNNING_CONFIG = "running.yaml"
CANDIDATE_CONFIG = "candidate.yaml"
STATUS_FILE = "supervisor.json"
REDIS = "redis"
METRICS = ("metrics",)

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

    @property
    def label(self) -> str:
        """The metric label: the milter's name, or the service's."""
        return self.service[-1]


@dataclass
class Supervisor:
    config_path: str
    settings: Settings
    enabled_services: ServiceList
    # The text `settings` were loaded from (the CLI read it once); None: read it.
    config_text: str | None = None
    children: dict[tuple[str, ...], Child] = field(default_factory=dict)
    redis: EmbeddedRedis | None = None
    restarts: dict[str, int] = field(default_factory=dict)
    _redis_backoff: float = BACKOFF_START
    _redis_restart_at: float = 0.0
    _redis_started: float = 0.0
    _stop: bool = False
    _reload: bool = False

    @property
    def state_dir(self) -> str:
        return self.settings.state_dir

    @property
    def running_config(self) -> str:
        """The last config that passed validation: what every child runs."""
        return os.path.join(self.state_dir, RUNNING_CONFIG)

    def command(self, service: tuple[str, ...]) -> list[str]:
        return [sys.executable, "-m", "postwarden", *service, "-c", self.running_config]

    def start_child(self, child: Child) -> None:
        # Only the supervisor speaks to systemd; a child's READY=1 would be premature.
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", ENV_VAR)}
        env[parentdeath.SUPERVISOR_ENV] = str(os.getpid())
        child.process = subprocess.Popen(
            self.command(child.service), stdin=subprocess.DEVNULL, env=env
        )
        child.started = time.monotonic()
        log.info("started %s (pid %d)", child.name, child.process.pid)
        self.write_status()

    def run(self) -> int:
        lock = PidLock(self.state_dir)
        lock.acquire()
        try:
            return self._run()
        finally:
            lock.release()

    def _run(self) -> int:
        text = self.config_text
        if text is None:
            text = read_config_text(self.config_path)
        self.settings, pinned = load_pinned(text, self.config_path)
        try:
            _write_private(
                self.running_config, pinned, privileges.effective(self.settings.privileges)
            )
        except OSError as exc:
            raise PostwardenError(f"cannot write {self.running_config}: {exc.strerror}") from None
        s = self.settings
        privileges.own_dir(s.state_dir, privileges.effective(s.privileges), 0o750, adopt=False)
        if s.redis.url is None and s.redis.sentinel is None:
            self._start_embedded_redis()
        if s.metrics.enabled:
            mdir = os.path.join(s.state_dir, "metrics")
            shutil.rmtree(mdir, ignore_errors=True)
            privileges.own_dir(mdir, privileges.effective(s.privileges), 0o755)
            os.environ[metrics.MULTIPROC_ENV] = mdir
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        for service in self.services(s):
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
                self.watch_redis()
                self.reap()
                time.sleep(0.2)
        finally:
            sdnotify.notify("STOPPING=1")
            self.stop_all()
            if self.redis is not None:
                self.redis.stop()
            self.write_status(stopped=True)
        return 0

    def _on_stop(self, signum: int, frame: object) -> None:
        self._stop = True

    def _on_hup(self, signum: int, frame: object) -> None:
        self._reload = True

    # -- the embedded Redis ---------------------------------------------------
    def _start_embedded_redis(self) -> None:
        sock = socket_path(self.state_dir)
        # We hold the state_dir lock, so a Redis answering here is an orphan of
        # a killed supervisor (stopping on its parent-death signal) or one a
        # service started alone; give an orphan the time to go.
        deadline = time.monotonic() + ORPHAN_REDIS_WAIT
        while answers(sock) and time.monotonic() < deadline:
            time.sleep(0.1)
        if answers(sock):
            log.warning("reusing the Redis that answers on %s (not supervised)", sock)
            return
        run_as = privileges.effective(self.settings.privileges)  # redis as the service user
        self.redis = EmbeddedRedis(self.state_dir, run_as=run_as)
        self.redis.start()
        self._redis_started = time.monotonic()
        log.info("embedded redis-server on %s (pid %s)", sock, self._redis_pid())

    def _redis_pid(self) -> int | None:
        proc = self.redis.process if self.redis is not None else None
        return proc.pid if proc is not None else None

    def watch_redis(self) -> None:
        """Notice the embedded Redis dying (reaping it), restart it with backoff."""
        if self.redis is None:
            return
        now = time.monotonic()
        proc = self.redis.process
        if proc is not None:
            code = proc.poll()  # reaps it: no zombie
            if code is None:
                if now - self._redis_started > STABLE_AFTER:
                    self._redis_backoff = BACKOFF_START
                return
            self.redis.process = None
            self._count_restart(REDIS)
            self._redis_restart_at = now + self._redis_backoff
            log.error(
                "embedded redis-server (pid %d) exited with status %s: greylisting, rate"
                " limits and counters answer with on_error until it is back;"
                " restarting in %.0fs",
                proc.pid,
                code,
                self._redis_backoff,
            )
            self._redis_backoff = min(self._redis_backoff * 2, BACKOFF_MAX)
            self.write_status()
            return
        if now < self._redis_restart_at:
            return
        try:
            self.redis.start()
        except EmbeddedRedisError as exc:
            self._redis_restart_at = time.monotonic() + self._redis_backoff
            log.error(
                "embedded redis-server did not restart: %s; next try in %.0fs",
                exc,
                self._redis_backoff,
            )
            self._redis_backoff = min(self._redis_backoff * 2, BACKOFF_MAX)
            return
        self._redis_started = time.monotonic()
        log.warning(
            "embedded redis-server restarted (pid %s, restart %d)",
            self._redis_pid(),
            self.restarts.get(REDIS, 0),
        )
        self.write_status()

    # -- children ---------------------------------------------------------------
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
            self._count_restart(child.label)
            if os.environ.get(metrics.MULTIPROC_ENV):
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
            child.restart_at = now + child.backoff
            log.warning(
                "%s exited with status %s; restarting in %.0fs", child.name, code, child.backoff
            )
            child.backoff = min(child.backoff * 2, BACKOFF_MAX)
            self.write_status()

    def _count_restart(self, label: str) -> None:
        self.restarts[label] = self.restarts.get(label, 0) + 1

    def services(self, settings: Settings) -> list[tuple[str, ...]]:
        """The children for `settings`: the enabled services and, with
        metrics on, the endpoint (`postwarden metrics`, run as the service
        user rather than inside this root process)."""
        wanted = list(self.enabled_services(settings))
        if settings.metrics.enabled:
            wanted.append(METRICS)
        return wanted

    # -- reload -----------------------------------------------------------------
    def validate(self) -> tuple[Settings, str] | None:
        """The new config and its pinned text if `postwarden config check`
        (what every service will load and build) accepts a copy of it; else
        None with its problems logged. The copy is what gets checked and then
        kept, so a file changing meanwhile cannot slip through unchecked."""
        try:
            text = read_config_text(self.config_path)
            new, pinned = load_pinned(text, self.config_path)
        except ConfigError as exc:
            log.error("reload refused, services keep the running config:\n%s", exc)
            return None
        if new.state_dir != self.state_dir:
            log.error(
                "reload refused: state_dir changed from %s to %s; restart `postwarden run`",
                self.state_dir,
                new.state_dir,
            )
            return None
        candidate = os.path.join(self.state_dir, CANDIDATE_CONFIG)
        try:
            _write_private(candidate, pinned)
        except OSError as exc:
            log.error("reload refused: cannot write %s: %s", candidate, exc.strerror)
            return None
        try:
            check = subprocess.run(
                [sys.executable, "-m", "postwarden", "config", "check", "-c", candidate],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=CHECK_DEADLINE,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log.error("reload refused: config check did not finish in %.0fs", CHECK_DEADLINE)
            return None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(candidate)
        if check.returncode != 0:
            problems = check.stderr.strip().replace(candidate, self.config_path)
            log.error("reload refused, services keep the running config:\n%s", problems)
            return None
        return new, pinned

    def reload(self) -> None:
        validated = self.validate()
        if validated is None:
            return
        new, pinned = validated
        try:
            _write_private(self.running_config, pinned, privileges.effective(new.privileges))
        except OSError as exc:
            log.error("reload refused: cannot write %s: %s", self.running_config, exc.strerror)
            return
        old, self.settings = self.settings, new
        wanted = set(self.services(new))
        if _metrics_inputs(old) != _metrics_inputs(new) and METRICS in self.children:
            self._terminate([self.children.pop(METRICS)])  # started anew below
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
        log.info("config reloaded; each service logs its own reload or why it refused")
        self.write_status()

    # -- stop -------------------------------------------------------------------
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

    # -- status for `postwarden stat` ---------------------------------------------
    def write_status(self, stopped: bool = False) -> None:
        services: dict[str, dict[str, Any]] = {}
        if self.redis is not None:
            services[REDIS] = {"pid": self._redis_pid(), "restarts": self.restarts.get(REDIS, 0)}
        for child in self.children.values():
            proc = child.process
            services[child.name] = {
                "pid": proc.pid if proc is not None else None,
                "restarts": self.restarts.get(child.label, 0),
            }
        status = {
            "pid": None if stopped else os.getpid(),
            "config": os.path.abspath(self.config_path),
            "running_config": self.running_config,
            "services": services,
        }
        try:
            _write_private(
                os.path.join(self.state_dir, STATUS_FILE),
                json.dumps(status),
                privileges.effective(self.settings.privileges),
            )
        except OSError as exc:
            log.debug("cannot write %s: %s", STATUS_FILE, exc)


def _metrics_inputs(settings: Settings) -> tuple[object, ...]:
    """What the metrics child reads at start; a reload changing it restarts it."""
    return (settings.metrics, settings.redis, settings.milters.spam.bayes, settings.privileges)


def read_status(state_dir: str) -> dict[str, Any] | None:
    """What the supervisor of `state_dir` last wrote, if it is still running."""
    try:
        with open(os.path.join(state_dir, STATUS_FILE), encoding="utf-8") as fh:
            status = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict):
        return None
    pid = status.get("pid")
    if not isinstance(pid, int) or not os.path.exists(f"/proc/{pid}"):
        return None
    return dict(status)


def _write_private(path: str, text: str, reader: privileges.Identity | None = None) -> None:
    """Write atomically, readable by the owner only (the config may hold a
    Redis password) and, when the children drop to `reader`, by its group:
    a child reloads (SIGHUP) by reading this file as that user."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        if reader is not None and reader.uid != os.geteuid():
            os.fchown(fh.fileno(), -1, reader.gid)
            os.fchmod(fh.fileno(), 0o640)
        fh.write(text)
    os.replace(tmp, path)
