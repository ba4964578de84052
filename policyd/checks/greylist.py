"""Greylisting, postgrey-compatible, with its state shared through Redis.

A legitimate MTA retries a temporarily refused message; many spam engines do
not (NethServer's email module explains the trade). The first time a
(client network, sender, recipient) triplet is seen the recipient is refused
with 450 4.7.1; a retry after `delay` and within `retry_window` passes, and
the triplet is remembered for `max_age` from its last use. A client network
whose triplets passed `auto_whitelist_clients` times skips greylisting.
These are postgrey(8)'s rules and defaults; its whitelist files
(`whitelist_clients`, `whitelist_recipients`) load unchanged.

Order of tests, first match wins (postgrey's order, plus the skips the
issue asks for):
1. missing client_address or recipient -> no opinion (logged);
2. SASL-authenticated client or `trusted_networks` -> no opinion;
3. client whitelist (reverse name, regex, address/CIDR), then recipient
   whitelist -> no opinion;
4. SPF passed for a sender domain in `spf_pass_domains` -> no opinion;
5. one Lua call (`greylist_check.lua`): auto-whitelist, then the triplet.

SPF (decision): this check does not evaluate SPF itself; evaluating twice
would double the DNS work per message for no gain. The SPF check runs
earlier in the same pipeline (`policyd.order`) and remembers its answer per
message in the per-process `ctx.state`; `spf_mailfrom_result()` reads the
MAIL FROM result from there (an explicit note `ctx.state[SPF_NOTE]`, a
mapping from `spf_note_key(req)` to the result word, if the SPF check
writes one; else the SPF check's per-instance memory). No result means no
skip. `build()` warns when `spf_pass_domains` is set but the SPF check is
disabled or ordered after greylisting, since the option would do nothing.

Sender normalisation keeps list mail and bounces from re-greylisting on
every message: lowercase; strip `+extension`; SRS0/SRS1 forwarder addresses
become the original sender; BATV `prvs=tag=user` becomes `user`; stand-alone
numbers in the local part become `#` (postgrey's VERP handling).
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import math
import re
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar, cast

from policyd.check import RCPT_STATES, BuiltCheck, CheckContext, CheckSpec
from policyd.decision import Decision, Verb
from policyd.protocol import IPAddress, PolicyRequest, unmapped
from postwarden.addresses import domain_listed
from postwarden.config.errors import ConfigProblem
from postwarden.config.files import read_file
from postwarden.config.locations import Locations
from postwarden.config.schema import Settings
from postwarden.config.sections.greylist import (
    ClientPattern,
    DeferAction,
    GreylistSettings,
    RecipientPattern,
    client_pattern,
    recipient_pattern,
    strip_comment,
)
from postwarden.config.units import Network
from postwarden.replies import GREYLISTED
from postwarden.store.client import AsyncStore
from postwarden.store.keys import STAT_TTL

NAME = "greylist"
SCRIPT = "greylist_check"
# `postwarden stat` counter names.
STAT_DEFERRED = "greylisted"
STAT_PASSED = "greylist_passed"
DEFAULT_WHITELIST = "greylist_whitelist_clients"
# Per-process note the SPF check fills (see module docstring).
SPF_NOTE = "spf.mfrom_results"
# Instances that already got the delay header (one header per message, not
# per recipient, as postgrey); bounded so it never grows.
_HEADER_NOTE = "greylist.header_instances"
_HEADER_MEMORY = 1024

log = logging.getLogger("postwarden.policyd.greylist")


def spf_note_key(req: PolicyRequest) -> str:
    """The key under which the SPF check files its MAIL FROM result for `req`."""
    return f"{req.instance}/{req.client_address_raw}/{req.sender.lower()}"


# -- normalisation -------------------------------------------------------------

_BATV_TAG = re.compile(r"^[0-9]{4}[0-9a-f]{6}$", re.IGNORECASE)
_NUMBER = re.compile(r"\b\d+\b")


@dataclass(frozen=True, slots=True)
class Normaliser:
    """Addresses as they go into the triplet (postgrey's sender substitutions)."""

    lowercase: bool = True
    delimiters: str = "+"
    strip_extension: bool = True
    strip_srs: bool = True
    strip_batv: bool = True
    mask_numbers: bool = True

    @classmethod
    def from_settings(cls, g: GreylistSettings) -> Normaliser:
        return cls(g.lowercase_addresses, g.recipient_delimiter, g.strip_extension,
                   g.strip_srs, g.strip_batv, g.mask_sender_numbers)  # fmt: skip

    def sender(self, address: str) -> str:
        return self._normalise(address, self.mask_numbers)

    def recipient(self, address: str) -> str:
        return self._normalise(address, False)

    def _normalise(self, address: str, mask_numbers: bool) -> str:
        addr = address.lower() if self.lowercase else address
        local, at, domain = addr.rpartition("@")
        if not at:
            return addr
        if self.strip_srs:
            local, domain = _unsrs(local, domain)
        if self.strip_batv:
            local = _unbatv(local)
        if self.strip_extension and self.delimiters and local:
            # Postfix splits at the first delimiter character (recipient_delimiter).
            cut = min((i for i in (local.find(d) for d in self.delimiters) if i > 0), default=-1)
            if cut > 0:
                local = local[:cut]
        if mask_numbers:
            local = _NUMBER.sub("#", local)
        return f"{local}@{domain}"


def _unsrs(local: str, domain: str) -> tuple[str, str]:
    """SRS0=HHH=TT=orig.domain=user@fwd and SRS1=HHH=fwd1==HHH=TT=orig.domain=user@fwd
    (the Sender Rewriting Scheme) -> (user, orig.domain); else unchanged."""
    low = local.lower()
    if low.startswith(("srs0=", "srs0+", "srs0-")):
        rest = local[5:]
    elif low.startswith(("srs1=", "srs1+", "srs1-")):
        # The original SRS0 part follows the first "==".
        _, sep, rest = local.partition("==")
        if not sep:
            return local, domain
    else:
        return local, domain
    parts = rest.split("=", 3)
    if len(parts) != 4 or not parts[2] or not parts[3]:
        return local, domain
    return parts[3], parts[2]


def _unbatv(local: str) -> str:
    """BATV prvs=KDDDSSSSSS=user (draft-levine-smtp-batv), also seen reversed."""
    if not local.lower().startswith("prvs="):
        return local
    parts = local.split("=")
    if len(parts) != 3:
        return local
    if _BATV_TAG.match(parts[2]) and not _BATV_TAG.match(parts[1]):
        return parts[1]
    return parts[2]


def client_network(ip: IPAddress, ipv4_prefix: int, ipv6_prefix: int) -> str:
    """The triplet's client part: the address's /24 (IPv4) or /64 (IPv6) by default."""
    ip = unmapped(ip)  # requests come unmapped; addresses typed at the CLI may not
    prefix = ipv4_prefix if ip.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


# -- whitelists ----------------------------------------------------------------


class ClientWhitelist:
    """Client entries compiled for lookups that do not grow with the list."""

    def __init__(self, patterns: Iterable[ClientPattern]) -> None:
        self.names: set[str] = set()
        self.regexes: list[re.Pattern[str]] = []
        # (version, prefix length) -> network addresses as integers: one
        # mask and one set lookup per distinct length, whatever the list size
        # (ipaddress objects per lookup cost more than the Redis call).
        by_len: dict[tuple[int, int], set[int]] = {}
        for p in patterns:
            if p.kind == "name":
                self.names.add(p.value)
            elif p.kind == "regex" and p.regex is not None:
                self.regexes.append(p.regex)
            elif p.network is not None:
                key = (p.network.version, p.network.prefixlen)
                by_len.setdefault(key, set()).add(int(p.network.network_address))
        self.networks: list[tuple[int, int, int, frozenset[int]]] = []
        for (version, prefix), nets in sorted(by_len.items()):
            bits = 32 if version == 4 else 128
            mask = ((1 << bits) - 1) ^ ((1 << (bits - prefix)) - 1)
            self.networks.append((version, prefix, mask, frozenset(nets)))

    def __len__(self) -> int:
        return len(self.names) + len(self.regexes) + sum(len(n[3]) for n in self.networks)

    def match(self, ip: IPAddress, client_name: str) -> str | None:
        """Why this client is whitelisted, or None."""
        value = int(ip)
        for version, prefix, mask, nets in self.networks:
            if ip.version == version and value & mask in nets:
                return f"client {ipaddress.ip_network(f'{ip}/{prefix}', strict=False)}"
        # Postfix sends client_name=unknown when the reverse name did not verify.
        name = client_name.lower().rstrip(".")
        if not name or name == "unknown":
            return None
        labels = name.split(".")
        for i in range(len(labels)):
            if ".".join(labels[i:]) in self.names:
                return f"client name {'.'.join(labels[i:])}"
        for rx in self.regexes:
            if rx.search(name):
                return f"client name /{rx.pattern}/"
        return None


class RecipientWhitelist:
    def __init__(self, patterns: Iterable[RecipientPattern], delimiters: str) -> None:
        self.delimiters = delimiters
        self.addresses: set[str] = set()
        self.localparts: set[str] = set()
        self.domains: set[str] = set()
        self.regexes: list[re.Pattern[str]] = []
        for p in patterns:
            if p.kind == "address":
                self.addresses.add(p.value)
            elif p.kind == "localpart":
                self.localparts.add(p.value)
            elif p.kind == "domain":
                self.domains.add(p.value)
            elif p.regex is not None:
                self.regexes.append(p.regex)

    def __len__(self) -> int:
        return len(self.addresses) + len(self.localparts) + len(self.domains) + len(self.regexes)

    def match(self, recipient: str) -> str | None:
        rcpt = recipient.lower()
        local, _, domain = rcpt.rpartition("@")
        # user@domain and user@ also match user+extension (as postgrey).
        base = local
        for d in self.delimiters:
            i = base.find(d)
            if i > 0:
                base = base[:i]
        if f"{base}@{domain}" in self.addresses or f"{local}@{domain}" in self.addresses:
            return f"recipient {base}@{domain}"
        if base in self.localparts or local in self.localparts:
            return f"recipient {base}@"
        labels = domain.split(".")
        for i in range(len(labels)):
            if ".".join(labels[i:]) in self.domains:
                return f"recipient domain {'.'.join(labels[i:])}"
        for rx in self.regexes:
            if rx.search(rcpt):
                return f"recipient /{rx.pattern}/"
        return None


P = TypeVar("P")


def read_list(
    text: str,
    filename: str,
    key: str,
    parse: Callable[[str], P],
    problems: list[ConfigProblem],
) -> list[P]:
    """Parse a postgrey whitelist file; a bad line is a warning, the rest loads."""
    out: list[P] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        entry = strip_comment(raw)
        if not entry:
            continue
        try:
            out.append(parse(entry))
        except ValueError as exc:
            problems.append(ConfigProblem(filename, lineno, key, f"{exc}; line skipped", "warning"))
    return out


def _read_file(
    path: str,
    key: str,
    parse: Callable[[str], P],
    problems: list[ConfigProblem],
    where: Locations,
) -> list[P]:
    try:
        text = read_file(path).decode("utf-8", errors="replace")
    except OSError as exc:
        # At the config line naming the file (it was readable when the config loaded).
        problems.append(where.problem(key, f"cannot read {path}: {exc.strerror}"))
        return []
    return read_list(text, path, key.rpartition("[")[0], parse, problems)


def default_whitelist_text() -> str:
    """The shipped list of pooled big senders (policyd/data)."""
    return resources.files("policyd").joinpath("data", DEFAULT_WHITELIST).read_text("utf-8")


def load_whitelists(
    settings: Settings, problems: list[ConfigProblem]
) -> tuple[ClientWhitelist, RecipientWhitelist]:
    g = settings.policyd.greylist
    where = settings.locations
    key = "policyd.greylist"
    clients: list[ClientPattern] = []
    if g.use_default_whitelist:
        clients += read_list(default_whitelist_text(), f"policyd/data/{DEFAULT_WHITELIST}",
                             f"{key}.use_default_whitelist", client_pattern, problems)  # fmt: skip
    for i, path in enumerate(g.whitelist_clients_files):
        clients += _read_file(
            path, f"{key}.whitelist_clients_files[{i}]", client_pattern, problems, where
        )
    # Inline entries were validated with the config (errors there).
    clients += [client_pattern(t) for t in g.whitelist_clients]
    recipients: list[RecipientPattern] = []
    for i, path in enumerate(g.whitelist_recipients_files):
        recipients += _read_file(
            path, f"{key}.whitelist_recipients_files[{i}]", recipient_pattern, problems, where
        )
    recipients += [recipient_pattern(t) for t in g.whitelist_recipients]
    return ClientWhitelist(clients), RecipientWhitelist(recipients, g.recipient_delimiter)


# -- the check -----------------------------------------------------------------


def _fill(template: str, values: dict[str, str]) -> str:
    """postgrey's %-placeholders; unknown ones and %% are left alone."""
    return re.sub(r"%([a-z])", lambda m: values.get(m.group(1), m.group(0)), template)


@dataclass(frozen=True)
class _Compiled:
    g: GreylistSettings
    trusted: tuple[Network, ...]
    clients: ClientWhitelist
    recipients: RecipientWhitelist
    normaliser: Normaliser
    spf_domains: frozenset[str]
    hostname: str
    # `postwarden stat` counters are bumped inside the decision's own script
    # (one round trip) unless on Redis Cluster, where they live in other slots.
    stats_in_script: bool = True


def _skip_reason(c: _Compiled, req: PolicyRequest, ip: IPAddress, ctx: CheckContext) -> str:
    """Why greylisting does not apply to this request ("" = it applies)."""
    if req.sasl_username:
        return "authenticated"
    if any(ip in net for net in c.trusted):
        return "trusted network"
    why = c.clients.match(ip, req.client_name)
    if why:
        return f"whitelisted {why}"
    why = c.recipients.match(req.recipient)
    if why:
        return f"whitelisted {why}"
    if (
        c.spf_domains
        and domain_listed(req.sender_domain, c.spf_domains)
        and spf_mailfrom_result(ctx, req, ip) == "pass"
    ):
        return f"SPF pass for {req.sender_domain}"
    return ""


_SPF_REASON = re.compile(r"^spf mailfrom=([a-z]+)$")


def spf_mailfrom_result(ctx: CheckContext, req: PolicyRequest, ip: IPAddress) -> str | None:
    """The SPF check's MAIL FROM result for this message, if it left one.

    First the explicit note (`SPF_NOTE`, see the module docstring); else the
    SPF check's per-message memory (`ctx.state["spf"]`, policyd/checks/spf.py),
    read by shape: `.get(instance)` gives an entry whose `fingerprint` is
    (client ip, lowercased sender, helo) and whose `decision.reason` is
    "spf mailfrom=<result>". Anything else means "unknown": no skip.
    """
    notes = ctx.state.get(SPF_NOTE)
    if isinstance(notes, Mapping):
        result = notes.get(spf_note_key(req))
        if isinstance(result, str):
            return result
    memory = ctx.state.get("spf")
    lookup = getattr(memory, "get", None)
    if not req.instance or lookup is None:
        return None
    remembered = lookup(req.instance)
    fingerprint = getattr(remembered, "fingerprint", None)
    if (
        not isinstance(fingerprint, tuple)
        or len(fingerprint) < 2
        or fingerprint[:2] != (str(ip), req.sender.strip().lower())
    ):
        return None
    m = _SPF_REASON.match(str(getattr(getattr(remembered, "decision", None), "reason", "")))
    return m.group(1) if m else None


def _first_header_for(ctx: CheckContext, instance: str) -> bool:
    """True once per message (Postfix instance) per process."""
    if not instance:
        return True
    seen = cast("OrderedDict[str, None]", ctx.state.setdefault(_HEADER_NOTE, OrderedDict()))
    if instance in seen:
        return False
    seen[instance] = None
    if len(seen) > _HEADER_MEMORY:
        seen.popitem(last=False)
    return True


async def decide(c: _Compiled, req: PolicyRequest, ctx: CheckContext) -> Decision | None:
    g = c.g
    ip = req.client_address
    if ip is None or not req.recipient:
        missing = "client_address" if ip is None else "recipient"
        log.info("greylist: no %s in the request (client=%r); not greylisting",
                 missing, req.client_address_raw)  # fmt: skip
        return None
    skip = _skip_reason(c, req, ip, ctx)
    if skip:
        log.debug("greylist: pass (%s)", skip)
        return None
    store = cast(AsyncStore, ctx.store)
    network = client_network(ip, g.ipv4_prefix, g.ipv6_prefix)
    sender = c.normaliser.sender(req.sender)
    recipient = c.normaliser.recipient(req.recipient)
    now = ctx.clock.now()
    keys = store.keys
    script_keys = [keys.greylist_triplet(network, sender, recipient), keys.greylist_client(network)]
    if c.stats_in_script:
        script_keys += [keys.stat(STAT_DEFERRED), keys.stat(STAT_PASSED)]
    verdict, first_pass, seconds, count = await store.run(
        SCRIPT,
        script_keys,
        [f"{now:.3f}", float(g.delay), float(g.retry_window), float(g.max_age),
         g.auto_whitelist_clients, float(g.auto_whitelist_interval),
         network, sender, recipient, STAT_TTL],
    )  # fmt: skip
    verdict = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
    secs = float(seconds)
    if verdict == "defer":
        if not c.stats_in_script:
            await store.count(STAT_DEFERRED)
        wait = max(1, math.ceil(secs))
        text = _fill(g.reply_text, {"s": str(wait), "r": req.recipient_domain})
        verb = Verb.DEFER if g.action is DeferAction.DEFER else Verb.DEFER_IF_PERMIT
        return Decision(verb, reply=GREYLISTED.with_text(text),
                        reason=f"greylisted {network}, retry in {wait}s")  # fmt: skip
    if verdict == "awl":
        log.debug("greylist: pass (client %s auto-whitelisted after %s passes)", network, count)
        return None
    if int(first_pass) and int(count) == g.auto_whitelist_clients:
        log.info("greylist: client %s (%s) auto-whitelisted after %d passes",
                 network, req.client_name or "unknown", int(count))  # fmt: skip
    if int(first_pass):
        if not c.stats_in_script:
            await store.count(STAT_PASSED)
        if g.add_header and _first_header_for(ctx, req.instance):
            header = _fill(g.header, {
                "t": str(int(secs)), "h": c.hostname, "v": "postwarden",
                "d": email.utils.formatdate(now, usegmt=True),
            })  # fmt: skip
            return Decision(Verb.PREPEND, header=header,
                            reason=f"greylist passed after {int(secs)}s")  # fmt: skip
    return None


def compile_settings(settings: Settings, problems: list[ConfigProblem]) -> _Compiled:
    g = settings.policyd.greylist
    clients, recipients = load_whitelists(settings, problems)
    spf_domains = frozenset(d.lower().strip(".") for d in g.spf_pass_domains)
    if spf_domains:
        order = settings.policyd.order
        spf_first = "spf" in order and order.index("spf") < order.index(NAME)
        if not settings.policyd.spf.enabled or not spf_first:
            problems.append(settings.locations.problem(
                "policyd.greylist.spf_pass_domains",
                "has no effect: policyd.spf must be enabled and run before greylist",
                "warning",
                at_key=True,
            ))  # fmt: skip
    return _Compiled(g, settings.trusted_networks, clients, recipients,
                     Normaliser.from_settings(g), spf_domains, socket.gethostname(),
                     not settings.redis.cluster)  # fmt: skip


def build(settings: Settings, problems: list[ConfigProblem]) -> BuiltCheck | None:
    g = settings.policyd.greylist
    if not g.enabled:
        return None
    compiled = compile_settings(settings, problems)

    async def run(req: PolicyRequest, ctx: CheckContext) -> Decision | None:
        return await decide(compiled, req, ctx)

    return BuiltCheck(NAME, run, g.mode, RCPT_STATES)


# -- inspection and overrides (`postwarden greylist`) -------------------------------


@dataclass(frozen=True, slots=True)
class TripletEntry:
    key: str
    network: str
    sender: str
    recipient: str
    first: float
    last: float
    passed: bool
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class ClientEntry:
    key: str
    network: str
    count: int
    last: float
    manual: bool
    ttl_ms: int


def network_of(text: str, g: GreylistSettings) -> str:
    """An address -> its greylisting network; a CIDR -> itself (normalised).

    Raises ValueError for anything else."""
    if "/" in text:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    return client_network(ipaddress.ip_address(text.strip()), g.ipv4_prefix, g.ipv6_prefix)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def _float(value: object) -> float:
    try:
        return float(_text(value))
    except ValueError:
        return 0.0


def _scan(store: Any, pattern: str, limit: int) -> list[str]:
    keys: list[str] = []
    for key in store.redis.scan_iter(match=pattern, count=1000):
        keys.append(_text(key))
        if len(keys) >= limit:
            break
    return sorted(keys)


def _network_in_key(key: str) -> str:
    return key.partition("{")[2].partition("}")[0]


def _records(store: Any, pattern: str, limit: int) -> list[tuple[str, dict[str, Any], int]]:
    """(key, hash fields, PTTL) of each live record matching `pattern`, in one pipeline."""
    keys = _scan(store, pattern, limit)
    pipe = store.redis.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
        pipe.pttl(key)
    replies = pipe.execute() if keys else []
    out = []
    for i, key in enumerate(keys):
        h = {_text(k): v for k, v in (replies[2 * i] or {}).items()}
        if h:  # empty: expired between SCAN and HGETALL
            out.append((key, h, int(replies[2 * i + 1])))
    return out


def triplets(store: Any, network: str = "*", limit: int = 1000) -> list[TripletEntry]:
    """Triplet records (sync Store), for one network or all; at most `limit`."""
    return [
        TripletEntry(
            key,
            _text(h.get("n")) or _network_in_key(key),
            _text(h.get("s")),
            _text(h.get("r")),
            _float(h.get("first")),
            _float(h.get("last")),
            _text(h.get("passed")) == "1",
            ttl,
        )
        for key, h, ttl in _records(store, store.keys.greylist_pattern(network, "t"), limit)
    ]


def clients(store: Any, network: str = "*", limit: int = 1000) -> list[ClientEntry]:
    """Auto-whitelist records (sync Store)."""
    return [
        ClientEntry(
            key,
            _network_in_key(key),
            int(_float(h.get("count"))),
            _float(h.get("last")),
            _text(h.get("manual")) == "1",
            ttl,
        )
        for key, h, ttl in _records(store, store.keys.greylist_pattern(network, "c"), limit)
    ]


def whitelist_client(store: Any, network: str, now: float, ttl: float) -> str:
    """Whitelist a client network by hand until `ttl` seconds pass without mail."""
    key: str = store.keys.greylist_client(network)
    pipe = store.redis.pipeline(transaction=True)
    pipe.hset(key, mapping={"manual": 1, "last": f"{now:.3f}", "keep": ttl})
    pipe.pexpire(key, int(ttl * 1000))
    pipe.execute()
    return key


def delete_entries(
    store: Any,
    g: GreylistSettings,
    network: str,
    sender: str | None = None,
    recipient: str | None = None,
) -> int:
    """Delete one triplet (sender and recipient given), or everything known
    about a client network (its triplets and its whitelist entry)."""
    if sender is not None and recipient is not None:
        n = Normaliser.from_settings(g)
        key = store.keys.greylist_triplet(network, n.sender(sender), n.recipient(recipient))
        return int(store.redis.delete(key))
    keys = _scan(store, store.keys.greylist_pattern(network, "t"), 10**9)
    keys.append(store.keys.greylist_client(network))
    return sum(int(store.redis.delete(k)) for k in keys)


CHECK = CheckSpec(
    name=NAME,
    build=build,
    position=50,
    description="postgrey-compatible greylisting of unknown triplets",
)
