"""Run the policy daemon in the foreground: `postwarden policyd`.

Wires settings, store and checks into a PolicyServer, then handles
signals: SIGTERM/SIGINT stop gracefully; SIGHUP reloads the config file and
keeps the old one when the new one is invalid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Sequence

from policyd.check import BuiltCheck, CheckContext
from policyd.pipeline import build_pipeline
from policyd.server import PolicyServer
from postwarden import metrics, privileges, sdnotify, sockets
from postwarden.clock import SystemClock
from postwarden.config import ConfigError, Settings, load_config
from postwarden.config.errors import ConfigProblem
from postwarden.stats import FLUSH_INTERVAL
from postwarden.store import embedded
from postwarden.store.client import AsyncStore, open_configured_async_store, uses_embedded

log = logging.getLogger("postwarden.policyd")


def compile_checks(settings: Settings) -> list[BuiltCheck]:
    """Build the pipeline; raise ConfigError on fatal problems, log warnings."""
    problems: list[ConfigProblem] = []
    checks = build_pipeline(settings, problems)
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        if p.severity != "error":
            log.warning("%s", p)
    if errors:
        raise ConfigError(errors)
    return checks


def load_checks(config_path: str) -> tuple[Settings, list[BuiltCheck]]:
    """Read the file and build its checks (blocking: file I/O, regex compiling)."""
    settings = load_config(config_path)
    return settings, compile_checks(settings)


Loader = Callable[[str], tuple[Settings, list[BuiltCheck]]]
Apply = Callable[[Settings, Sequence[BuiltCheck]], None]


async def reload_config(config_path: str, apply: Apply, load: Loader = load_checks) -> bool:
    """SIGHUP: load and compile on a worker thread, so requests keep flowing
    meanwhile; apply the result on the loop, or keep the running config."""
    try:
        new, checks = await asyncio.to_thread(load, config_path)
    except ConfigError as exc:
        log.error("reload refused, keeping the running config:\n%s", exc)
        return False
    apply(new, checks)
    return True


async def _watchdog(watchdog: sdnotify.Watchdog) -> None:
    """WATCHDOG=1 from the event loop itself (alone under systemd with
    WatchdogSec=): a loop blocked by a stuck call stops the pings and systemd
    restarts the service."""
    if watchdog.interval is None:
        return
    while True:
        watchdog.tick()
        await asyncio.sleep(min(1.0, watchdog.interval / 2))


async def serve(config_path: str, settings: Settings) -> int:
    checks = compile_checks(settings)
    owned = None
    if uses_embedded(settings):
        # Starting redis-server polls until it answers: not on the event loop.
        # Started by root, it runs as the service user (privileges).
        run_as = privileges.effective(settings.privileges)
        _, owned = await asyncio.to_thread(embedded.ensure, settings.state_dir, run_as=run_as)
    store = open_configured_async_store(settings)
    ctx = CheckContext(settings=settings, store=store, clock=SystemClock())
    server = PolicyServer(settings, checks, ctx)
    if settings.metrics.enabled and not os.environ.get(metrics.MULTIPROC_ENV):
        metrics.serve(settings.metrics.listen)  # alone; under `run` the supervisor serves
    with sockets.private_umask():  # 0600 until granted to Postfix's group
        await server.start()
    sockets.grant(settings.policyd.socket, settings.privileges)
    privileges.drop(settings.privileges)  # before the first request is read
    flusher = asyncio.create_task(_flush_stats(ctx, store))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        task = loop.create_task(reload_config(config_path, server.reload))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    sdnotify.notify("READY=1")
    pinger = asyncio.create_task(_watchdog(sdnotify.Watchdog()))
    try:
        await stop.wait()
    finally:
        pinger.cancel()
        sdnotify.notify("STOPPING=1")
        log.info("policyd stopping")
        for task in list(reloads):
            task.cancel()
        await server.stop()
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await ctx.stats.flush_async(store.redis, store.keys)
        await store.close()
        if owned is not None:
            await asyncio.to_thread(owned.stop)
    return 0


async def _flush_stats(ctx: CheckContext, store: AsyncStore) -> None:
    while True:
        await asyncio.sleep(FLUSH_INTERVAL)
        await ctx.stats.flush_async(store.redis, store.keys)


def run(config_path: str, settings: Settings) -> int:
    return asyncio.run(serve(config_path, settings))
