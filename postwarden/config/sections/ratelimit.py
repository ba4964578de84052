"""`policyd.ratelimit` and `policyd.sender_login`.

Rate-limit rules are data: what a rule keys on, what it counts, its windows,
who it applies to, per-key overrides and what happens past the limit. The
loader checks every field's type and range (an unknown key type, a zero or
negative limit, an unparsable window are reported with file:line); the
`validate_node` methods add the cross-field rules.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from postwarden.addresses import is_address_pattern
from postwarden.config.errors import FieldProblem, Finding
from postwarden.config.fields import setting
from postwarden.config.sections.common import CheckSettings
from postwarden.config.units import Duration, FilePath, Network

# Rule names appear in Redis keys, replies and `postwarden ratelimit show`.
_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# The first-time-recipient counter uses this name for its keys; rules may not.
FIRST_TIME_NAME = "first_time_recipients"


class RateKey(StrEnum):
    """What a rule counts per: each distinct value gets its own counters."""

    SASL_USERNAME = "sasl_username"
    SENDER = "sender"
    SENDER_DOMAIN = "sender_domain"
    CLIENT_ADDRESS = "client_address"
    RECIPIENT = "recipient"
    RECIPIENT_DOMAIN = "recipient_domain"


class Counts(StrEnum):
    """messages: once per message (Postfix `instance`), at RCPT;
    recipients: once per RCPT; bytes: the `size` at END-OF-MESSAGE."""

    MESSAGES = "messages"
    RECIPIENTS = "recipients"
    BYTES = "bytes"


class AppliesTo(StrEnum):
    """Whether the client authenticated (SASL) decides if a rule applies."""

    AUTHENTICATED = "authenticated"
    UNAUTHENTICATED = "unauthenticated"
    EVERYONE = "everyone"


class LimitAction(StrEnum):
    """defer: 450 4.7.1 (the client retries); reject: 550 5.7.1; hold: accept
    into Postfix's hold queue; log: count and log only, never refuse."""

    DEFER = "defer"
    REJECT = "reject"
    HOLD = "hold"
    LOG = "log"


@dataclass(frozen=True, slots=True)
class Window:
    """At most `limit` units in any interval of length `per`, e.g. `{limit: 30, per: 1m}`."""

    # 0 = "not given": the loader's min=1 refuses an explicit 0 or negative.
    limit: int = setting(0, min=1, doc="units allowed per window")
    per: Duration = setting(Duration(0), min=1, max=366 * 86400, doc="window length")

    def validate_node(self) -> list[Finding]:
        problems: list[Finding] = []
        if self.limit == 0:
            problems.append(
                FieldProblem("limit", "missing or invalid: give a whole number, at least 1")
            )
        if float(self.per) == 0:
            problems.append(
                FieldProblem("per", 'missing or invalid: give a duration like "1m" or "1d"')
            )
        return problems


@dataclass(frozen=True, slots=True)
class RatelimitRule:
    name: str = setting("", doc="shown in replies, logs and keys; default <count>_per_<key>")
    key: RateKey = setting(RateKey.SASL_USERNAME, doc="what the rule counts per")
    count: Counts = setting(Counts.MESSAGES, doc="messages | recipients | bytes")
    windows: tuple[Window, ...] = setting(factory=tuple, doc="one or more {limit, per}")
    applies_to: AppliesTo = setting(AppliesTo.EVERYONE)
    # Optional filters: the rule applies only to these clients / senders.
    clients: tuple[Network, ...] = setting(factory=tuple, doc="client networks; empty = any")
    senders: tuple[str, ...] = setting(factory=tuple, doc="user@domain, @domain or domain")
    # client_address keys count per network of these widths (mox: /32 /26 /21, /64 /48 /32).
    ipv4_prefix: int = setting(32, min=0, max=32)
    ipv6_prefix: int = setting(64, min=0, max=128)
    # key value -> windows that replace `windows` for that value; [] exempts it.
    overrides: Mapping[str, tuple[Window, ...]] = setting(
        factory=lambda: MappingProxyType({}), doc="per-key windows"
    )
    action: LimitAction = setting(LimitAction.DEFER)

    @property
    def label(self) -> str:
        return self.name or f"{self.count.value}_per_{self.key.value}"

    def validate_node(self) -> list[Finding]:
        problems: list[Finding] = []
        if self.name and not _RULE_NAME.match(self.name):
            problems.append(
                FieldProblem("name", f"{self.name!r}: use letters, digits, '_', '.', '-' (max 64)")
            )
        if self.label == FIRST_TIME_NAME:
            problems.append(FieldProblem("name", f"{FIRST_TIME_NAME!r} is reserved"))
        if not self.windows:
            problems.append(FieldProblem("windows", "give at least one {limit: N, per: DURATION}"))
        pers = [float(w.per) for w in self.windows]
        if len(set(pers)) != len(pers):
            problems.append(FieldProblem("windows", "two windows have the same length"))
        if self.count is Counts.BYTES and self.key in (RateKey.RECIPIENT, RateKey.RECIPIENT_DOMAIN):
            # END-OF-MESSAGE carries no single recipient (SMTPD_POLICY_README).
            problems.append(FieldProblem(
                "count", f"bytes cannot key on {self.key.value} (counted per message)"
            ))  # fmt: skip
        for value, windows in self.overrides.items():
            if self.key is RateKey.CLIENT_ADDRESS:
                try:
                    ipaddress.ip_network(value, strict=False)
                except ValueError:
                    problems.append(FieldProblem(
                        f"overrides.{value}", f"{value!r} is not an IP address or CIDR", at_key=True
                    ))  # fmt: skip
            pers = [float(w.per) for w in windows]
            if len(set(pers)) != len(pers):
                problems.append(
                    FieldProblem(f"overrides.{value}", "two windows have the same length")
                )
        return problems


@dataclass(frozen=True, slots=True)
class FirstTimeRecipients:
    """Authenticated senders may mail at most `limit` new recipients per `per`
    (mox: 200 a day), so a stolen password can spray few new addresses."""

    enabled: bool = setting(True)
    limit: int = setting(200, min=1)
    per: Duration = setting(Duration(86400), min=1, max=366 * 86400)
    remember: Duration = setting(
        Duration(90 * 86400), min=1, doc="how long a recipient stays known"
    )
    action: LimitAction = setting(LimitAction.DEFER)


@dataclass(frozen=True, slots=True)
class RatelimitSettings(CheckSettings):
    enabled: bool = setting(False)
    rules: tuple[RatelimitRule, ...] = setting(factory=tuple)
    first_time_recipients: FirstTimeRecipients = setting(factory=FirstTimeRecipients)

    def validate_node(self) -> list[Finding]:
        problems: list[Finding] = []
        seen: set[str] = set()
        for i, rule in enumerate(self.rules):
            if rule.label in seen:
                why = f"rule names must be distinct; {rule.label} given twice (set name:)"
                problems.append(FieldProblem(f"rules[{i}]", why))
            seen.add(rule.label)
        return problems


@dataclass(frozen=True, slots=True)
class SenderLoginSettings(CheckSettings):
    """An authenticated user may use only MAIL FROM addresses mapped to them."""

    enabled: bool = setting(False)
    # login -> addresses it may send as; `@domain` allows the whole domain.
    map: Mapping[str, tuple[str, ...]] = setting(
        factory=lambda: MappingProxyType({}), doc="login -> addresses"
    )
    map_file: FilePath | None = setting(None, doc='lines "login addr, @domain ..."')
    # A login spelled like an address (Dovecot's user@domain) may send as itself.
    login_is_address: bool = setting(True)
    # Bounces and auto-replies use the null sender <>; no one owns it.
    allow_null_sender: bool = setting(True)

    def validate_node(self) -> list[Finding]:
        problems: list[Finding] = []
        for login, addresses in self.map.items():
            for i, addr in enumerate(addresses):
                if not is_address_pattern(addr):
                    problems.append(
                        FieldProblem(f"map.{login}[{i}]", f"{addr!r} is not user@domain or @domain")
                    )
        return problems
