"""Run the policy daemon in the foreground: `postwarden policyd`.

Wires settings, store, resolver and checks into a PolicyServer, then handles
signals: SIGTERM/SIGINT stop gracefully; SIGHUP reloads the config file and
keeps the old one when the new one is invalid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from policyd.pipeline import BuiltCheck, CheckContext, build_pipeline
from policyd.server import PolicyServer
from postwarden import metrics, privileges, sdnotify, sockets
from postwarden.clock import SystemClock
from postwarden.config import ConfigError, Settings, load_config
from postwarden.config.errors import ConfigProblem
from postwarden.resolver import make_async_resolver
from postwarden.stats import FLUSH_INTERVAL
from postwarden.store import embedded
from postwarden.store.client import AsyncStore, open_async_store

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


async def serve(config_path: str, settings: Settings) -> int:
    checks = compile_checks(settings)
    owned = None
    socket_path = None
    if settings.redis.url is None and settings.redis.sentinel is None:
        run_as = privileges.effective(settings.privileges)
        socket_path, owned = embedded.ensure(settings.state_dir, run_as=run_as)
    store = open_async_store(settings.redis, socket_path)
    ctx = CheckContext(
        settings=settings,
        store=store,
        clock=SystemClock(),
        resolver=make_async_resolver(settings.dns),
    )
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

    def reload() -> None:
        try:
            new = load_config(config_path)
            new_checks = compile_checks(new)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config:\n%s", exc)
            return
        ctx.resolver = make_async_resolver(new.dns)
        server.reload(new, new_checks)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    sdnotify.notify("READY=1")
    try:
        await stop.wait()
    finally:
        sdnotify.notify("STOPPING=1")
        log.info("policyd stopping")
        await server.stop()
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await ctx.stats.flush_async(store.redis, store.keys)
        await store.close()
        if owned is not None:
            owned.stop()
    return 0


async def _flush_stats(ctx: CheckContext, store: AsyncStore) -> None:
    while True:
        await asyncio.sleep(FLUSH_INTERVAL)
        await ctx.stats.flush_async(store.redis, store.keys)


def run(config_path: str, settings: Settings) -> int:
    return asyncio.run(serve(config_path, settings))
