"""systemd readiness (sd_notify(3)) without a dependency: one datagram."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping


def notify(state: str) -> bool:
    """Send e.g. "READY=1" to $NOTIFY_SOCKET; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state.encode(), address)
        return True
    except OSError:
        return False


class Watchdog:
    """Keeps systemd's WatchdogSec= satisfied: `tick()` from the main loop
    sends WATCHDOG=1 every half interval (sd_watchdog_enabled(3): $WATCHDOG_USEC,
    and $WATCHDOG_PID when set must be ours). A hung loop stops the pings and
    systemd restarts the unit."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        self._clock = clock
        self.interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.interval = int(usec) / 2_000_000
        self._last: float | None = None

    def tick(self) -> bool:
        """Ping when due; True when a ping was sent."""
        if self.interval is None:
            return False
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return notify("WATCHDOG=1")
