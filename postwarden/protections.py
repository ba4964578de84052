"""Which protections a config turns on, in words an admin checks at a glance.

`postwarden config check` prints this after the summary, so a fresh install
shows what it protects (and what it does not) before it carries any mail.
Milter-specific details (rules, classes, keys) are each milter's business;
here every milter gets its state, mode and fallback.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from postwarden.config import Settings
from postwarden.config.sections.spf import DEFAULT_MAILFROM_ACTIONS, SpfAction, SpfResult


def _spf_table(actions: Mapping[SpfResult, SpfAction]) -> str:
    """Like "fail -> reject, temperror -> defer, others -> prepend"."""
    by_action: dict[str, list[str]] = {}
    for result, action in actions.items():
        by_action.setdefault(action.value, []).append(result.value)
    common = max(by_action, key=lambda a: len(by_action[a]))
    parts = [
        f"{'/'.join(results)} -> {action}"
        for action, results in by_action.items()
        if action != common
    ]
    parts.append(
        f"others -> {common} (Received-SPF)" if common == "prepend" else f"others -> {common}"
    )
    return ", ".join(parts)


def _mode(mode: object) -> str:
    return (
        " (warn only: logs and tags, never refuses)"
        if str(getattr(mode, "value", mode)) == "warn"
        else ""
    )


def summary(settings: Settings, served_milters: Collection[str]) -> list[str]:
    """One line per protection: on or off, and what it does when on.
    `served_milters`: the milters this version has (enabled others do nothing)."""
    lines = ["  protections:"]
    p = settings.policyd
    if not p.enabled:
        lines.append("    policy service off: no access rules, SPF, greylisting or rate limits")
    else:
        rules = len(p.access.rules)
        access = f"on, {rules} rule(s)" if p.access.enabled and rules else "no rules"
        lines.append(f"    access rules        {access}{_mode(p.access.mode)}")
        if p.spf.enabled:
            spf_table = {**DEFAULT_MAILFROM_ACTIONS, **p.spf.mailfrom_actions}
            lines.append(f"    SPF                 on: {_spf_table(spf_table)}{_mode(p.spf.mode)}")
        else:
            lines.append("    SPF                 off")
        if p.greylist.enabled:
            lines.append(
                f"    greylisting         on: delay {float(p.greylist.delay):g}s"
                f"{_mode(p.greylist.mode)}"
            )
        else:
            lines.append("    greylisting         off")
        if p.ratelimit.enabled:
            n = len(p.ratelimit.rules)
            lines.append(f"    rate limits         on: {n} rule(s){_mode(p.ratelimit.mode)}")
        else:
            lines.append("    rate limits         off")
        lines.append(
            "    sender/login match  "
            + (f"on{_mode(p.sender_login.mode)}" if p.sender_login.enabled else "off")
        )
    for name, m in settings.milters.by_name().items():
        if name == "noop":
            continue
        if not m.enabled:
            state = "off"
        elif name not in served_milters:
            state = "enabled, but not part of this version: nothing runs"
        else:
            state = f"on, on_error {m.on_error.value}{_mode(m.mode)}"
        lines.append(f"    milter {name:<12} {state}")
    return lines
