"""Rate limits: messages, recipients, bytes and first-time recipients per key.

Algorithm: a sliding-window log per (rule, window, key value). Every counted
event is a member of a Redis ZSET scored by its time in milliseconds; a
request first drops events at or before `now - per`, then compares what is
left plus its own weight with the limit. Error bound: none within the
window's resolution — at any instant `now` the events in `(now - per, now]`
never sum to more than `limit` (a fixed-window counter may let 2x through
across a boundary, GCRA lets up to 2*limit-1 through in a window of length
`per`). Times are whole milliseconds from the injected Clock, so events less
than 1 ms apart share a timestamp; nothing else is approximated. Hosts sharing
one Redis each stamp events with their own clock: a skew of s seconds between
them shifts a window by s for the lagging host (run NTP). Memory is
one ZSET member per counted event still in the window (at most `limit` for
messages/recipients, one per message for bytes).

Atomicity: every counter a request touches is decided in one call of
`ratelimit_check.lua` (check all, then consume all or nothing), so a refused
request consumes no quota and concurrent policyd instances sharing one Redis
can neither lose nor double-count an event. Keys of one subject (a login, an
address, a client network) share one hash tag. On Redis Cluster
(`redis.cluster: true`) keys of different subjects live in different slots,
so the counters are split into one call per subject, sent together; if any
call refuses, `ratelimit_undo.lua` removes exactly the events the other calls
added. Counts stay exact; a concurrent request may transiently see those
events and be refused early (conservative, never over-admitting).

Counting (Postfix SMTPD_POLICY_README attributes): `messages` once per
message at RCPT, identified by `instance` (the log member is the instance, so
later RCPTs of the same message find it and add nothing — as long as they
arrive within one window of the first); `recipients` once per RCPT; `bytes`
at END-OF-MESSAGE from `size`. First-time recipients (mox's idea): for
authenticated senders, a RCPT to an address the login has not mailed within
`remember` counts against `first_time_recipients`; known recipients live in
a ZSET (recipient digest -> last use) with that TTL.

A request that lacks what a rule needs (no SASL login, null sender, no
instance...) is not counted by that rule; that is logged at debug.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from policyd.check import BuiltCheck, CheckContext, CheckSpec
from policyd.decision import Decision, Verb
from policyd.protocol import PolicyRequest, ProtocolState, unmapped
from postwarden.addresses import address_matcher
from postwarden.config.errors import ConfigProblem
from postwarden.config.schema import Settings
from postwarden.config.sections.ratelimit import (
    FIRST_TIME_NAME,
    AppliesTo,
    Counts,
    FirstTimeRecipients,
    LimitAction,
    RateKey,
    RatelimitRule,
    RatelimitSettings,
    Window,
)
from postwarden.config.units import Network
from postwarden.replies import RATE_LIMITED, RATE_LIMITED_PERMANENT
from postwarden.store.keys import Keys, digest

NAME = "ratelimit"
STATES = frozenset({ProtocolState.RCPT, ProtocolState.END_OF_MESSAGE})

log = logging.getLogger("postwarden.policyd.ratelimit")

# ---------------------------------------------------------------- planning


@dataclass(frozen=True, slots=True)
class Counter:
    """One window of one rule for one subject, as this request would touch it."""

    rule: str
    subject: str  # "<key type>:<value>", e.g. "sasl_username:alice"
    kind: str  # 'c' unit events, 'w' weighted (bytes), 'f' first-time recipient
    per_ms: int
    limit: int
    weight: int
    member: str
    action: LimitAction
    unit: str  # "messages", "recipients", "bytes", "first-time recipients"
    gate: str = ""  # 'f': recipient digest in the known set
    gate_ttl_ms: int = 0

    @property
    def enforce(self) -> bool:
        return self.action is not LimitAction.LOG

    @property
    def window(self) -> str:
        return str(self.per_ms)

    def keys(self, keys: Keys) -> list[str]:
        out = [keys.ratelimit(self.subject, self.rule, self.window)]
        if self.kind == "w":
            out.append(keys.ratelimit_sum(self.subject, self.rule, self.window))
        elif self.kind == "f":
            out.append(keys.known_recipients(self.subject))
        return out

    def spec(self) -> str:
        """The counter as ratelimit_check.lua reads it: one tab-separated ARGV."""
        enforce = "1" if self.enforce else "0"
        return (f"{self.kind}\t{self.per_ms}\t{self.limit}\t{self.weight}\t{enforce}\t"
                f"{self.gate_ttl_ms}\t{self.gate}\t{self.member}")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Result:
    counter: Counter
    counted: int  # units this request added (0 when refused or already counted)
    total: int  # units in the window before this request
    exceeded: bool
    retry_ms: int  # -1: the request alone is over the limit


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class CompiledRule:
    """A rule with its filters and overrides ready for matching."""

    def __init__(self, rule: RatelimitRule) -> None:
        self.rule = rule
        self.name = rule.label
        self.state = (
            ProtocolState.END_OF_MESSAGE if rule.count is Counts.BYTES else ProtocolState.RCPT
        )
        self.senders = [address_matcher(s) for s in rule.senders]
        self.by_value: dict[str, tuple[Window, ...]] = {}
        self.by_network: list[tuple[Network, tuple[Window, ...]]] = []
        for value, windows in rule.overrides.items():
            if rule.key is RateKey.CLIENT_ADDRESS:
                self.by_network.append((ipaddress.ip_network(value, strict=False), windows))
            else:
                self.by_value[value.strip().lower()] = windows

    def subject_value(self, req: PolicyRequest) -> str:
        """The value this rule counts per, or "" when the request lacks it."""
        key = self.rule.key
        if key is RateKey.CLIENT_ADDRESS:
            ip = req.client_address
            if ip is None:
                return ""
            prefix = self.rule.ipv4_prefix if ip.version == 4 else self.rule.ipv6_prefix
            return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
        return subject_text(key, req)

    def windows_for(self, value: str, req: PolicyRequest) -> tuple[Window, ...]:
        if self.rule.key is RateKey.CLIENT_ADDRESS:
            ip = req.client_address
            for net, windows in self.by_network:
                if ip is not None and ip.version == net.version and ip in net:
                    return windows
            return self.rule.windows
        found = self.by_value.get(value)
        if found is None and "@" in value:
            found = self.by_value.get("@" + value.rpartition("@")[2])
        return self.rule.windows if found is None else found

    def applies(self, req: PolicyRequest) -> bool:
        r = self.rule
        if r.applies_to is AppliesTo.AUTHENTICATED and not req.authenticated:
            return False
        if r.applies_to is AppliesTo.UNAUTHENTICATED and req.authenticated:
            return False
        if r.clients:
            ip = req.client_address
            if ip is None or not any(ip.version == n.version and ip in n for n in r.clients):
                return False
        return not self.senders or any(m(req.sender.lower()) for m in self.senders)


def subject_text(key: RateKey, req: PolicyRequest) -> str:
    if key is RateKey.SASL_USERNAME:
        return req.sasl_username.strip().lower()
    if key is RateKey.SENDER:
        return req.sender.strip().lower()
    if key is RateKey.SENDER_DOMAIN:
        return req.sender_domain
    if key is RateKey.RECIPIENT:
        return req.recipient.strip().lower()
    if key is RateKey.RECIPIENT_DOMAIN:
        return req.recipient_domain
    return req.client_address_raw


def plan(
    rules: Sequence[CompiledRule],
    first_time: FirstTimeRecipients,
    req: PolicyRequest,
    request_id: str,
) -> list[Counter]:
    """The counters this request touches, in rule order (first-time last). Pure."""
    counters: list[Counter] = []
    for rule in rules:
        r = rule.rule
        if req.protocol_state is not rule.state or not rule.applies(req):
            continue
        value = rule.subject_value(req)
        if not value:
            log.debug("ratelimit rule %s does not apply: request has no %s", rule.name, r.key)
            continue
        if r.count is Counts.MESSAGES:
            if not req.instance:
                log.debug("ratelimit rule %s does not apply: request has no instance", rule.name)
                continue
            kind, weight, member = "c", 1, f"i:{req.instance}"
        elif r.count is Counts.RECIPIENTS:
            kind, weight, member = "c", 1, request_id
        else:
            if req.size <= 0:
                log.debug("ratelimit rule %s does not apply: request has no size", rule.name)
                continue
            kind, weight, member = "w", req.size, f"{request_id}:{req.size}"
        subject = f"{r.key.value}:{value}"
        for w in rule.windows_for(value, req):
            counters.append(Counter(rule.name, subject, kind, _ms(w.per), w.limit, weight,
                                    member, r.action, r.count.value))  # fmt: skip
    if first_time.enabled and req.protocol_state is ProtocolState.RCPT and req.authenticated:
        rcpt = req.recipient.strip().lower()
        if rcpt:
            counters.append(Counter(
                FIRST_TIME_NAME, f"sasl_username:{req.sasl_username.strip().lower()}", "f",
                _ms(first_time.per), first_time.limit, 1, request_id, first_time.action,
                "first-time recipients", gate=digest(rcpt), gate_ttl_ms=_ms(first_time.remember),
            ))  # fmt: skip
        else:
            log.debug("first-time recipient limit does not apply: request has no recipient")
    return counters


# ---------------------------------------------------------------- deciding


async def _check(store: Any, now_ms: int, counters: Sequence[Counter]) -> list[int]:
    keys: list[str] = []
    args: list[Any] = [now_ms]
    for c in counters:
        keys.extend(c.keys(store.keys))
        args.append(c.spec())
    return [int(v) for v in await store.run("ratelimit_check", keys, args)]


async def _undo(store: Any, counters: Sequence[Counter], raw: Sequence[int]) -> None:
    keys: list[str] = []
    args: list[Any] = [len(counters)]
    for i, c in enumerate(counters):
        counted = raw[1 + 4 * i]
        keys.extend(c.keys(store.keys))
        member = c.member if counted else ""
        args.extend([c.kind, member, counted, c.gate if (c.kind == "f" and counted) else ""])
    await store.run("ratelimit_undo", keys, args)


def _results(counters: Sequence[Counter], raw: Sequence[int]) -> list[Result]:
    allowed = raw[0] == 1
    out = []
    for i, c in enumerate(counters):
        weight, total, exceeded, retry = raw[1 + 4 * i : 5 + 4 * i]
        out.append(Result(c, weight if allowed else 0, total, bool(exceeded), retry))
    return out


async def decide(
    store: Any, now: float, counters: Sequence[Counter], *, split: bool = False
) -> tuple[bool, list[Result]]:
    """Check all counters and consume them only if none refuses.

    `split` (Redis Cluster): one script call per subject, i.e. per hash tag,
    sent concurrently; on a refusal the calls that consumed are undone.
    """
    if not counters:
        return True, []
    now_ms = _ms(now)
    if not split:
        raw = await _check(store, now_ms, counters)
        return raw[0] == 1, _results(counters, raw)
    groups: dict[str, list[Counter]] = {}
    for c in counters:
        groups.setdefault(c.subject, []).append(c)
    parts = list(groups.values())
    raws = await asyncio.gather(*(_check(store, now_ms, g) for g in parts))
    allowed = all(r[0] == 1 for r in raws)
    if not allowed:
        undo = [(g, r) for g, r in zip(parts, raws, strict=True) if r[0] == 1]
        await asyncio.gather(*(_undo(store, g, r) for g, r in undo))
    by_counter: dict[int, Result] = {}
    for g, r in zip(parts, raws, strict=True):
        for c, res in zip(g, _results(g, r), strict=True):
            counted = res.counted if allowed else 0
            by_counter[id(c)] = Result(c, counted, res.total, res.exceeded, res.retry_ms)
    return allowed, [by_counter[id(c)] for c in counters]


# ---------------------------------------------------------------- replying


def window_text(per_ms: int) -> str:
    """60000 -> "1m", 86400000 -> "1d", 90000 -> "90s" (the config's own units)."""
    seconds = per_ms / 1000
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def limit_text(res: Result) -> str:
    """Names the limit and window, so the sender's admin can find the setting."""
    c = res.counter
    what = "login" if c.rule == FIRST_TIME_NAME else c.subject.partition(":")[0]
    text = (f"Rate limit exceeded: {c.limit} {c.unit} per {window_text(c.per_ms)} "
            f"per {what} (policyd.ratelimit {c.rule})")  # fmt: skip
    if res.retry_ms >= 0 and c.action is LimitAction.DEFER:
        text += f", try again in {max(1, -(-res.retry_ms // 1000))}s"
    elif res.retry_ms < 0:
        text += ", and this message alone is over it"
    return text


def refusal(res: Result) -> Decision:
    c = res.counter
    text = limit_text(res)
    why = f"{c.rule}: {res.total}+{c.weight} > {c.limit} {c.unit} per {window_text(c.per_ms)}"
    if c.action is LimitAction.REJECT:
        return Decision(Verb.REJECT, reply=RATE_LIMITED_PERMANENT.with_text(text), reason=why,
                        check=NAME)  # fmt: skip
    if c.action is LimitAction.HOLD:
        return Decision(Verb.HOLD, text=text, reason=why, check=NAME)
    return Decision(Verb.DEFER, reply=RATE_LIMITED.with_text(text), reason=why, check=NAME)


def _log_only(results: Iterable[Result]) -> None:
    for res in results:
        c = res.counter
        if res.exceeded and not c.enforce:
            log.info("ratelimit log-only rule exceeded rule=%s subject=%s used=%d/%d window=%s",
                     c.rule, c.subject, res.total + c.weight, c.limit,
                     window_text(c.per_ms))  # fmt: skip


# ---------------------------------------------------------------- building


def build(settings: Settings, problems: list[ConfigProblem]) -> BuiltCheck | None:
    cfg = settings.policyd.ratelimit
    if not cfg.enabled:
        return None
    rules = tuple(CompiledRule(r) for r in cfg.rules)
    first_time = cfg.first_time_recipients
    split = settings.redis.cluster

    async def run(req: PolicyRequest, ctx: CheckContext) -> Decision | None:
        counters = plan(rules, first_time, req, secrets.token_hex(8))
        allowed, results = await decide(ctx.store, ctx.clock.now(), counters, split=split)
        if allowed:
            _log_only(results)
            return None
        refused = next(r for r in results if r.exceeded and r.counter.enforce)
        return refusal(refused)

    return BuiltCheck(NAME, run, cfg.mode, STATES)


# ---------------------------------------------------------------- inspecting
# For `postwarden ratelimit show|reset KEY` (sync Store): read-only views of
# the same logs, and deleting one subject's counters.


@dataclass(frozen=True, slots=True)
class WindowState:
    rule: str
    subject: str
    unit: str
    limit: int
    per_ms: int
    used: int
    next_free_ms: int  # until the oldest event leaves the window (0: empty)
    reset_ms: int  # until the window is empty


def subjects(
    settings: RatelimitSettings, text: str
) -> list[tuple[str, str, tuple[Window, ...], str]]:
    """(rule, subject, windows, unit) for every rule KEY could name.

    KEY is `TYPE:VALUE` (e.g. `sasl_username:alice`, `client_address:192.0.2.7`)
    or a bare value matched against every rule whose key type it fits.
    """
    typed, sep, rest = text.partition(":")
    wanted: set[RateKey] | None = None
    value = text.strip()
    if sep and typed in {k.value for k in RateKey}:
        wanted, value = {RateKey(typed)}, rest.strip()
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    net: Network | None = None
    try:
        net = ipaddress.ip_network(value, strict=False)
        ip = unmapped(net.network_address)
        if ip.version != net.version:  # ::ffff:192.0.2.7 typed at the CLI
            net = ipaddress.ip_network(ip)
    except ValueError:
        pass
    out: list[tuple[str, str, tuple[Window, ...], str]] = []
    for rule in (CompiledRule(r) for r in settings.rules):
        key = rule.rule.key
        if wanted is not None and key not in wanted:
            continue
        if key is RateKey.CLIENT_ADDRESS:
            if ip is None or net is None:
                continue
            fake = PolicyRequest(client_address=ip, client_address_raw=str(ip))
            v = rule.subject_value(fake) if net.num_addresses == 1 else str(net)
            windows = rule.windows_for(v, fake)
        else:
            if ip is not None and wanted is None:
                continue
            if key in (RateKey.SENDER, RateKey.RECIPIENT) and "@" not in value:
                continue
            if key in (RateKey.SENDER_DOMAIN, RateKey.RECIPIENT_DOMAIN) and "@" in value:
                continue
            v = value.lower()
            windows = rule.windows_for(v, PolicyRequest())
        out.append((rule.name, f"{key.value}:{v}", windows, rule.rule.count.value))
    ft = settings.first_time_recipients
    if ft.enabled and ip is None and (wanted is None or RateKey.SASL_USERNAME in wanted):
        window = Window(limit=ft.limit, per=ft.per)
        out.append((FIRST_TIME_NAME, f"sasl_username:{value.lower()}", (window,),
                    "first-time recipients"))  # fmt: skip
    return out


def inspect(store: Any, settings: RatelimitSettings, text: str, now: float) -> list[WindowState]:
    """Current use of every window KEY names, without changing anything."""
    now_ms = _ms(now)
    rows = []
    for rule, subject, windows, unit in subjects(settings, text):
        for w in windows:
            per_ms = _ms(w.per)
            key = store.keys.ratelimit(subject, rule, str(per_ms))
            events = store.redis.zrangebyscore(key, f"({now_ms - per_ms}", "+inf", withscores=True)
            if unit == Counts.BYTES.value:
                used = sum(int(m.rpartition(b":")[2]) for m, _ in events)
            else:
                used = len(events)
            next_free = int(events[0][1]) + per_ms - now_ms if events else 0
            reset = int(events[-1][1]) + per_ms - now_ms if events else 0
            rows.append(WindowState(rule, subject, unit, w.limit, per_ms, used, next_free, reset))
    return rows


def known_recipients(store: Any, settings: RatelimitSettings, login: str, now: float) -> int:
    remember_ms = _ms(settings.first_time_recipients.remember)
    key = store.keys.known_recipients(f"sasl_username:{login.strip().lower()}")
    return int(store.redis.zcount(key, f"({_ms(now) - remember_ms}", "+inf"))


def reset(store: Any, settings: RatelimitSettings, text: str) -> int:
    """Delete every counter of the subjects KEY names (known recipients stay)."""
    deleted = 0
    for subject in sorted({s for _, s, _, _ in subjects(settings, text)}):
        known = store.keys.known_recipients(subject)
        pattern = store.keys.ratelimit(subject, "*", "*")
        for key in list(store.redis.scan_iter(match=pattern, count=1000)):
            name = key.decode() if isinstance(key, bytes) else key
            if name != known:
                deleted += int(store.redis.delete(name))
    return deleted


CHECK = CheckSpec(
    name=NAME,
    build=build,
    position=30,
    description="per-login/sender/client/recipient message, recipient and byte limits",
)
