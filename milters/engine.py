"""The shape every milter engine has, and the table of engines by name.

An engine is built once from settings (rule files compiled, keys loaded) and
then called once per message with plain data. The adapter under Postfix and
`postwarden scan` offline both call `evaluate`, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from milters.message import Envelope, Message, Verdict
from postwarden.config.errors import ConfigProblem
from postwarden.config.schema import Settings


@dataclass(frozen=True, slots=True)
class Needs:
    """What the engine reads and may do; the adapter negotiates only these
    with Postfix (skipped callbacks save a round trip each).

    `headers`/`body`: whether the message content must be sent at all.
    `change_headers`, `change_body`, `change_recipients`, `quarantine`: the
    modification actions the engine may request (SMFIF_* flags).
    """

    headers: bool = True
    body: bool = True
    add_headers: bool = True
    change_headers: bool = False
    change_body: bool = False
    change_recipients: bool = False
    quarantine: bool = False


class Engine(Protocol):
    name: str
    needs: Needs

    def evaluate(self, msg: Message, env: Envelope) -> Verdict:
        """Decide about one message; may raise (the caller applies on_error)."""
        ...


# `build(settings, problems)` returns None when the milter is disabled or
# cannot run; problems it survived are appended with severity "warning".
Builder = Callable[[Settings, list[ConfigProblem]], "Engine | None"]


def builders() -> dict[str, Builder]:
    """Every milter `postwarden milter NAME` and `postwarden scan` know."""
    from milters import headers, noop

    return {
        "headers": headers.build,
        "noop": noop.build,
    }


# The order `postwarden scan` runs them in: the order of smtpd_milters that
# `postwarden postfix-config` prints.
ORDER = ("headers", "attachments", "dkim", "spam", "noop")
