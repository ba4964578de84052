"""`postwarden metrics`: the one /metrics endpoint of `postwarden run`.

The supervisor starts it as a child like the services, so the HTTP server
runs as the service user and not inside the root supervisor (as Postfix's
master keeps its own work minimal). It binds `metrics.listen`, drops root,
and serves the services' multiprocess files, the supervisor's restart
counts (from the status file the supervisor keeps for `postwarden stat`)
and the Bayes statistics (from Redis, at scrape time).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Mapping
from typing import Any

import click

from postwarden import metrics, parentdeath, privileges
from postwarden.cli import startup
from postwarden.cli.options import EX_CONFIG, config_option, load_or_exit
from postwarden.config import Settings
from postwarden.errors import StartupError


def restart_counts(state_dir: str) -> Mapping[str, int]:
    """Restarts per service label ("redis", "policyd", a milter's name) as the
    supervisor last wrote them; nothing while no supervisor runs."""
    from postwarden.supervisor import read_status

    status = read_status(state_dir) or {}
    services: Mapping[str, Any] = status.get("services") or {}
    return {name.split()[-1]: int(info.get("restarts", 0)) for name, info in services.items()}


class _Bayes:
    """The global statistics and svm model state, one Redis connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Any = None

    def __call__(self) -> metrics.BayesSnapshot:
        from postwarden.bayes.store import GLOBAL_SCOPE, BayesStore
        from postwarden.store.client import open_configured_store

        if self._store is None:
            self._store = open_configured_store(self.settings)
        b = self.settings.milters.spam.bayes
        bstore = BayesStore(self._store, b)
        state = bstore.state(GLOBAL_SCOPE)
        active = b.enabled and state.spam >= b.min_learns and state.ham >= b.min_learns
        model = bstore.model_info(GLOBAL_SCOPE)
        if model is None:
            return metrics.BayesSnapshot(state.spam, state.ham, active)
        stale = model.changes != bstore.changes(GLOBAL_SCOPE)
        return metrics.BayesSnapshot(state.spam, state.ham, active, model.fitted_at, stale)


@click.command(name="metrics", hidden=True)
@config_option
def metrics_server(config_file: str | None) -> None:
    """Serve /metrics for `postwarden run` (which starts it)."""
    parentdeath.follow_supervisor()
    _path, settings = load_or_exit(config_file)
    startup.setup_logging(settings)
    state_dir = settings.state_dir
    try:
        metrics.serve(
            settings.metrics.listen,
            [
                metrics.RestartsCollector(lambda: restart_counts(state_dir)),
                metrics.BayesCollector(_Bayes(settings)),
            ],
        )
        privileges.drop(settings.privileges)
    except StartupError as exc:
        click.echo(f"postwarden: {exc}", err=True)
        sys.exit(EX_CONFIG)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # A reload changes nothing here that matters before the next start: the
    # supervisor restarts this child when the metrics block changes.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while not stop.wait(1.0):
        pass
