"""`policyd.spf`: SPF (RFC 7208) on MAIL FROM and HELO.

What each SPF result does is a table per identity (`mailfrom_actions`,
`helo_actions`). The defaults are those policyd-spf (pypolicyd-spf) ships
(`HELO_reject = Fail`, `Mail_From_reject = Fail`, `PermError_reject =
False`), except temperror, which defers (`451 4.4.3`) so a DNS hiccup at the
sender's side is retried instead of accepted unchecked.
"""

from __future__ import annotations

import string
import types
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from postwarden.config.errors import FieldProblem, Finding
from postwarden.config.fields import setting
from postwarden.config.sections.common import CheckSettings
from postwarden.config.units import Duration, Network


class SpfResult(StrEnum):
    """RFC 7208 section 2.6: the seven results check_host() can return."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    PERMERROR = "permerror"
    TEMPERROR = "temperror"


class SpfAction(StrEnum):
    """What a result does.

    reject: 550 5.7.23 (5.7.24 for permerror/temperror, RFC 7372);
    defer: 451 4.4.3 for temperror (a DNS fault, RFC 3463), else 450 4.7.23 /
    451 4.7.24; quarantine: accept but HOLD in the Postfix queue;
    prepend: accept and add the Received-SPF header; ignore: accept, no header.
    """

    REJECT = "reject"
    DEFER = "defer"
    QUARANTINE = "quarantine"
    PREPEND = "prepend"
    IGNORE = "ignore"


class HeloCheck(StrEnum):
    """When the HELO identity is checked (RFC 7208 section 2.3).

    null_sender: only when MAIL FROM is `<>` (then the HELO identity is what
    section 2.4 checks anyway); always: also for every other message, first,
    with its own result and `helo_actions` (policyd-spf's default).
    """

    NULL_SENDER = "null_sender"
    ALWAYS = "always"


def _actions() -> Mapping[SpfResult, SpfAction]:
    base = {result: SpfAction.PREPEND for result in SpfResult}
    base[SpfResult.FAIL] = SpfAction.REJECT
    base[SpfResult.TEMPERROR] = SpfAction.DEFER
    return types.MappingProxyType(base)


DEFAULT_MAILFROM_ACTIONS = _actions()
DEFAULT_HELO_ACTIONS = _actions()

# Placeholders `reject_text` may use.
REPLY_FIELDS = frozenset({"action", "result", "explanation", "identity", "domain", "ip"})


@dataclass(frozen=True, slots=True)
class SpfWhitelist:
    """Clients never SPF-checked (answered DUNNO, logged).

    Forwarders and secondary MX hosts break SPF (RFC 7208 appendix D), so
    their addresses belong here.
    """

    clients: tuple[Network, ...] = setting(factory=tuple, doc="client IPs/CIDRs")
    helo_names: tuple[str, ...] = setting(
        factory=tuple, doc="HELO names; skipped only when the name resolves to the client IP"
    )
    sender_domains: tuple[str, ...] = setting(
        factory=tuple, doc="MAIL FROM domains; '.example.com' also matches subdomains"
    )

    def validate_node(self) -> list[Finding]:
        problems: list[Finding] = []
        for label, names in (
            ("helo_names", self.helo_names),
            ("sender_domains", self.sender_domains),
        ):
            for i, name in enumerate(names):
                bare = name.lstrip(".")
                if not bare or " " in bare or "@" in bare or ".." in bare:
                    problems.append(FieldProblem(f"{label}[{i}]", f"{name!r} is not a domain name"))
        return problems


@dataclass(frozen=True, slots=True)
class SpfSettings(CheckSettings):
    # On by default: policyd-spf's defaults protect an MX on day one (fail
    # rejected, the rest tagged with Received-SPF) and skip our own users.
    enabled: bool = setting(True)
    helo_check: HeloCheck = setting(HeloCheck.NULL_SENDER)
    mailfrom_actions: Mapping[SpfResult, SpfAction] = setting(
        factory=lambda: DEFAULT_MAILFROM_ACTIONS, doc="SPF result -> action for MAIL FROM"
    )
    helo_actions: Mapping[SpfResult, SpfAction] = setting(
        factory=lambda: DEFAULT_HELO_ACTIONS, doc="SPF result -> action for HELO"
    )
    skip_authenticated: bool = setting(True, doc="SASL clients are ours: no SPF")
    skip_trusted_networks: bool = setting(True, doc="clients in trusted_networks: no SPF")
    whitelist: SpfWhitelist = setting(factory=SpfWhitelist)
    receiver: str = setting("", doc="host name in Received-SPF; empty = this host's FQDN")
    reject_text: str = setting(
        "Message {action} due to: {explanation}",
        doc="reply text; {action} {result} {explanation} {identity} {domain} {ip}",
    )
    cache_ttl: Duration = setting(Duration(300), min=0, max=86400, doc="0 = no Redis cache")
    query_timeout: Duration = setting(Duration(5.0), min=0.05, max=30, doc="per DNS query")
    time_budget: Duration = setting(
        Duration(15.0), min=0.1, max=120, doc="per request, all lookups"
    )
    threads: int = setting(16, min=1, max=512, doc="concurrent SPF evaluations")

    def validate_node(self) -> list[Finding]:
        # Unknown SPF results in the action tables are refused by the loader
        # (the keys are a SpfResult), at the key's own line.
        problems: list[Finding] = []
        try:
            names = {
                f for _, f, _, _ in string.Formatter().parse(self.reject_text) if f is not None
            }
        except ValueError as exc:
            problems.append(FieldProblem("reject_text", str(exc)))
        else:
            unknown = names - REPLY_FIELDS
            if unknown:
                problems.append(FieldProblem(
                    "reject_text",
                    f"unknown placeholder(s) {', '.join(sorted(unknown))} "
                    f"(known: {', '.join(sorted(REPLY_FIELDS))})",
                ))  # fmt: skip
        if self.query_timeout > self.time_budget:
            problems.append(FieldProblem("query_timeout", "must not exceed time_budget"))
        return problems

    def actions_for(self, identity: str) -> Mapping[SpfResult, SpfAction]:
        """The full table for `identity` ("mailfrom" or "helo"): given keys over defaults."""
        table = self.helo_actions if identity == "helo" else self.mailfrom_actions
        default = DEFAULT_HELO_ACTIONS if identity == "helo" else DEFAULT_MAILFROM_ACTIONS
        return {**default, **table}
