"""Which threshold set applies to each recipient, and the rule for mixed ones.

Per recipient, first match wins:
1. outbound mail (SASL-authenticated client, or one in `trusted_networks`):
   `outbound` for every recipient -- a compromised account is stopped before
   it harms the server's reputation;
2. `allow_to` lists the recipient: no thresholds (headers only);
3. the recipient forwards to an external mailbox (`forwarding_addresses`,
   `forwarding_map`, or `forwarding_lookup`: Postfix's virtual alias map
   asked with `postmap -q`, an alias counting when one of its targets lies
   outside `local_domains`): `forwarding`, stricter, so spam is refused
   rather than forwarded out (Onlime's rule);
4. a profile lists the address, else the longest listed domain (a domain
   covers its subdomains);
5. `thresholds`.

Mixed recipients (the message is scored once; a milter answers once for
the whole message at end of DATA, it cannot refuse one recipient): tagging
loses no mail, so the message is tagged (headers, subject) when ANY
recipient's set says so; a refusing action (greylist, quarantine, reject,
discard) happens only when EVERY recipient's set refuses, and then the
mildest of those. So no recipient loses mail that another recipient's
profile accepted; the stricter users still get X-Spam: Yes and X-Spam-Score
for their Sieve rules (contrib/dovecot/spam-threshold.sieve).
"""

from __future__ import annotations

import functools
import logging
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from milters.message import Action
from milters.spam.lists import AddressList
from postwarden.config.sections.spam import SpamMilterSettings, Thresholds

log = logging.getLogger("postwarden.milter.spam")

POSTMAP = "/usr/sbin/postmap"
LOOKUP_CACHE = 4096  # recipients remembered per process (a reload starts afresh)
LOOKUP_TIMEOUT = 10.0  # postmap's first start can be slow (host name lookup)

TAGS = (Action.ADD_HEADER, Action.REWRITE_SUBJECT)
REFUSALS = (Action.GREYLIST, Action.QUARANTINE, Action.REJECT, Action.DISCARD)

NO_ACTIONS = Thresholds(None, None, None, None, None, None)


def reached(t: Thresholds, score: float) -> list[Action]:
    """The actions whose threshold `score` reaches, mildest first."""
    pairs = [(Action.ADD_HEADER, t.add_header), (Action.REWRITE_SUBJECT, t.rewrite_subject),
             (Action.GREYLIST, t.greylist), (Action.QUARANTINE, t.quarantine),
             (Action.REJECT, t.reject), (Action.DISCARD, t.discard)]  # fmt: skip
    return [a for a, v in pairs if v is not None and score >= v]


def lowest(t: Thresholds) -> float | None:
    """The score at which this set starts to act (for `score/threshold`)."""
    values = [v for v in (t.add_header, t.rewrite_subject, t.greylist, t.quarantine,
                          t.reject, t.discard) if v is not None]  # fmt: skip
    return min(values) if values else None


@dataclass(frozen=True, slots=True)
class Decision:
    """The message's action, the tags to apply, and who got which set."""

    action: Action
    tags: frozenset[Action]
    profiles: Mapping[str, str]  # recipient -> profile name
    required: float | None


def read_forwarding_map(path: str) -> tuple[list[str], list[tuple[int, str]]]:
    """Addresses from a file: one per line, or a Postfix map source
    (`address  target, ...`: the left-hand side is taken). '#' comments.
    Returns (addresses, [(line, problem)])."""
    out: list[str] = []
    problems: list[tuple[int, str]] = []
    text = Path(path).read_text("utf-8", "replace")
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key = line.split()[0]
        if "@" not in key or key.startswith("@"):
            problems.append((n, f"{key!r} is not an address"))
            continue
        out.append(key)
    return out, problems


class _LookupFailed(Exception):
    """postmap failed: answered "no" this time, not cached."""


def postmap_forwarder(table: str, local_domains: Iterable[str]) -> Callable[[str], bool]:
    """`forwards_out(recipient)`: does the Postfix map `table` alias it to a
    mailbox outside `local_domains` (or, with none given, outside the
    recipient's own domain)? Answers are cached; a failed lookup is "no"
    (logged) and asked again next time."""
    local = {d.lower().lstrip("@").rstrip(".") for d in local_domains}

    @functools.lru_cache(maxsize=LOOKUP_CACHE)
    def cached(recipient: str) -> bool:
        try:
            out = subprocess.run([POSTMAP, "-q", recipient, table], capture_output=True,
                                 text=True, timeout=LOOKUP_TIMEOUT, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise _LookupFailed(str(exc)) from exc
        if out.returncode not in (0, 1):  # 1 = not found
            raise _LookupFailed(out.stderr.strip()[:200])
        own = recipient.rpartition("@")[2]
        for target in out.stdout.replace(",", " ").split():
            domain = target.rpartition("@")[2].lower().rstrip(".") if "@" in target else ""
            if domain and (domain not in local if local else domain != own):
                return True
        return False

    def forwards_out(recipient: str) -> bool:
        try:
            return cached(recipient)
        except _LookupFailed as exc:
            log.warning("spam: postmap -q %s %s failed: %s", recipient, table, exc)
            return False

    return forwards_out


class ProfileMap:
    def __init__(self, s: SpamMilterSettings, forwarding: Iterable[str] = ()) -> None:
        self.s = s
        self.lookup = (postmap_forwarder(s.forwarding_lookup, s.local_domains)
                       if s.forwarding_lookup else None)  # fmt: skip
        self.allow_to = AddressList(s.allow_to)
        self.forwarding = AddressList([*s.forwarding_addresses, *forwarding])
        self.by_address: dict[str, str] = {}
        self.by_domain: dict[str, str] = {}
        for name, p in s.profiles.items():
            for entry in p.recipients:
                e = entry.strip().lower().lstrip("@").rstrip(".")
                if "@" in e:
                    self.by_address.setdefault(e, name)
                else:
                    self.by_domain.setdefault(e, name)

    def thresholds(self, name: str) -> Thresholds:
        if name == "outbound":
            return self.s.outbound
        if name == "forwarding":
            return self.s.forwarding
        if name == "allow_to":
            return NO_ACTIONS
        if name in self.s.profiles:
            return self.s.profiles[name].thresholds
        return self.s.thresholds

    def profile_of(self, recipient: str, outbound: bool) -> str:
        if outbound:
            return "outbound"
        rcpt = recipient.strip().strip("<>").lower()
        if self.allow_to.match(rcpt):
            return "allow_to"
        if "@" in rcpt and (self.forwarding.match(rcpt) or (self.lookup and self.lookup(rcpt))):
            return "forwarding"
        if rcpt in self.by_address:
            return self.by_address[rcpt]
        labels = rcpt.rpartition("@")[2].split(".")
        for i in range(len(labels)):
            name = self.by_domain.get(".".join(labels[i:]))
            if name:
                return name
        return "default"

    def decide(self, recipients: Iterable[str], score: float, outbound: bool) -> Decision:
        rcpts = list(recipients) or [""]
        profiles = {r: self.profile_of(r, outbound) for r in rcpts}
        tags: set[Action] = set()
        refusals: list[Action | None] = []
        requireds: list[float] = []
        for name in set(profiles.values()):
            t = self.thresholds(name)
            acts = reached(t, score)
            tags.update(a for a in acts if a in TAGS)
            refusing = [a for a in acts if a in REFUSALS]
            refusals.append(refusing[-1] if refusing else None)
            low = lowest(t)
            if low is not None:
                requireds.append(low)
        action: Action
        if refusals and all(r is not None for r in refusals):
            action = min((r for r in refusals if r is not None), key=lambda a: a.severity)
        elif tags:
            action = max(tags, key=lambda a: a.severity)
        else:
            action = Action.ACCEPT
        return Decision(action, frozenset(tags), profiles, min(requireds) if requireds else None)
