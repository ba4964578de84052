"""Settings every service block shares: on/off, socket, failure behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from postwarden.config.fields import setting
from postwarden.config.units import Duration, Size, SocketAddress


class OnError(StrEnum):
    """What a message gets when a dependency (Redis, DNS) fails or a bug hits.

    accept: as `milter_default_action = accept` in the seed's Postfix setup;
    tempfail: the client retries later (Postfix's own default for milters).
    """

    ACCEPT = "accept"
    TEMPFAIL = "tempfail"


class Mode(StrEnum):
    """enforce: act; warn: log and add a header saying what would have happened."""

    ENFORCE = "enforce"
    WARN = "warn"


@dataclass(frozen=True, slots=True)
class CheckSettings:
    """Base of every policy check's block under `policyd:`.

    A field of `PolicydSettings` whose type derives from this is a check:
    `policyd.order` may name it and the policy daemon looks up its builder
    by that name (the `CHECK` spec in `policyd/checks/<name>.py`).
    """

    enabled: bool = setting(False)
    mode: Mode = setting(Mode.ENFORCE)


@dataclass(frozen=True, slots=True)
class MilterSettings:
    enabled: bool = setting(True)
    socket: SocketAddress = setting(
        SocketAddress("unix", path="/var/spool/postfix/postwarden/milter.sock")
    )
    on_error: OnError = setting(OnError.ACCEPT)
    mode: Mode = setting(Mode.ENFORCE)
    max_body_size: Size = setting(Size(10 * 1024 * 1024), min=0, doc="bytes kept for checks")
    timeout: Duration = setting(Duration(30.0), min=1, doc="libmilter I/O timeout")
    budget: Duration = setting(
        Duration(20.0), min=0.1, max=250, doc="time for one message's decision"
    )
    on_timeout: OnError = setting(OnError.TEMPFAIL, doc="what a message gets past its budget")
