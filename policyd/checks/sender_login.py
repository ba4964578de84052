"""Sender/login match: an authenticated user sends only as addresses they own.

The map says, per SASL login, which MAIL FROM addresses it may use:
`user@domain` exactly, or `@domain` for any address in that domain
(case-insensitive; RFC 5321 section 2.4 leaves local-part case to the
receiving host, and mail systems treat it as case-insensitive). It comes
inline from `policyd.sender_login.map` and/or from `map_file`, one login per
line: `login  addr1, addr2 @domain` (`#` starts a comment; a trailing `:` on
the login is allowed). A mismatch is refused with `553 5.7.1`, as Postfix's
`reject_sender_login_mismatch` answers (postconf(5)), naming the login and
the address. Unlike Postfix's `smtpd_sender_login_maps` (address -> owners)
the map is keyed by login, which is how NethServer-style setups describe
users. Unauthenticated clients are not this check's business.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from policyd.check import BuiltCheck, CheckContext, CheckSpec
from policyd.decision import Decision, Verb
from policyd.protocol import PolicyRequest, ProtocolState
from postwarden.addresses import is_address_pattern
from postwarden.config.errors import ConfigProblem
from postwarden.config.files import read_file
from postwarden.config.locations import Locations
from postwarden.config.schema import Settings
from postwarden.config.sections.ratelimit import SenderLoginSettings
from postwarden.replies import SENDER_LOGIN_MISMATCH, printable

NAME = "sender_login"
# MAIL when called from smtpd_sender_restrictions, RCPT from the recipient ones.
STATES = frozenset({ProtocolState.MAIL, ProtocolState.RCPT})
KEY = "policyd.sender_login.map_file"

log = logging.getLogger("postwarden.policyd.sender_login")


@dataclass
class Owned:
    """What one login may send as."""

    addresses: set[str] = field(default_factory=set)
    domains: set[str] = field(default_factory=set)

    def add(self, pattern: str) -> None:
        p = pattern.strip().lower()
        if p.startswith("@"):
            self.domains.add(p[1:])
        else:
            self.addresses.add(p)

    def allows(self, sender: str) -> bool:
        return sender in self.addresses or sender.rpartition("@")[2] in self.domains


def parse_map_file(
    path: str, problems: list[ConfigProblem], where: Locations | None = None
) -> dict[str, list[str]]:
    """Read `login addr, @domain ...` lines; a bad line is skipped with a warning."""
    out: dict[str, list[str]] = {}
    try:
        text = read_file(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        # At the config line naming the file (it was readable when the config loaded).
        problems.append((where or Locations()).problem(KEY, f"cannot read {path}: {exc}"))
        return out
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        login, _, rest = line.partition(" ") if " " in line else line.partition("\t")
        login = login.rstrip(":").strip()
        patterns = rest.replace(",", " ").split()
        if not login or not patterns:
            message = "expected 'login address ...'; line skipped"
            problems.append(ConfigProblem(path, lineno, KEY, message, "warning"))
            continue
        bad = [p for p in patterns if not is_address_pattern(p)]
        if bad:
            problems.append(ConfigProblem(path, lineno, KEY,
                                          f"{bad[0]!r} is not user@domain or @domain; line skipped",
                                          "warning"))  # fmt: skip
            continue
        out.setdefault(login, []).extend(patterns)
    return out


def compile_map(*maps: Mapping[str, Iterable[str]]) -> dict[str, Owned]:
    owned: dict[str, Owned] = {}
    for m in maps:
        for login, patterns in m.items():
            entry = owned.setdefault(login.strip().lower(), Owned())
            for p in patterns:
                entry.add(p)
    return owned


def evaluate(
    cfg: SenderLoginSettings, owned: Mapping[str, Owned], req: PolicyRequest
) -> Decision | None:
    """The whole decision, pure: None when allowed, else a 553 refusal."""
    login = req.sasl_username.strip()
    if not login:
        return None
    key = login.lower()
    sender = req.sender.strip().lower()
    if not sender:
        if cfg.allow_null_sender:
            return None
        text = f"Null sender not allowed for login {printable(login)}"
    else:
        entry = owned.get(key)
        if entry is not None and entry.allows(sender):
            return None
        if cfg.login_is_address and "@" in key and sender == key:
            return None
        text = f"Sender address <{printable(sender)}> not owned by login {printable(login)}"
    return Decision(
        Verb.REJECT,
        reply=SENDER_LOGIN_MISMATCH.with_text(text),
        reason=f"login {login} may not use sender {sender or '<>'}",
        check=NAME,
    )


def build(settings: Settings, problems: list[ConfigProblem]) -> BuiltCheck | None:
    cfg = settings.policyd.sender_login
    if not cfg.enabled:
        return None
    from_file = parse_map_file(cfg.map_file, problems, settings.locations) if cfg.map_file else {}
    owned = compile_map(cfg.map, from_file)
    if not owned and not cfg.login_is_address:
        log.info("sender_login: empty map; every authenticated sender will be refused")

    async def run(req: PolicyRequest, ctx: CheckContext) -> Decision | None:
        return evaluate(cfg, owned, req)

    return BuiltCheck(NAME, run, cfg.mode, STATES)


CHECK = CheckSpec(
    name=NAME,
    build=build,
    position=20,
    description="an authenticated login may use only the MAIL FROM addresses it owns",
)
