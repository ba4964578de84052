"""`milters.spam`: settings of the spam milter (milters/spam).

Scores and descriptions of the symbols ship with the checks
(milters/spam/checks/*.py); `symbols` overrides them one by one. Thresholds
are a named set (`Thresholds`): the default one for inbound mail, one for
outbound (authenticated or trusted senders), one for local addresses that
forward outside, and named `profiles` chosen per recipient or domain.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum

from postwarden.config.errors import FieldProblem, Finding
from postwarden.config.fields import setting
from postwarden.config.sections.bayes import BayesSettings
from postwarden.config.sections.common import MilterSettings
from postwarden.config.sections.headers import re2_problem
from postwarden.config.units import Duration, FilePath, Size

SYMBOL_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


class Oversize(StrEnum):
    """What happens to a message larger than max_scan_size.

    truncate: score its first max_scan_size bytes (the Apis 128 KB limit);
    skip: do not score it; both add the symbol SCAN_TRUNCATED / SCAN_SKIPPED.
    """

    TRUNCATE = "truncate"
    SKIP = "skip"


class ZoneKind(StrEnum):
    """What a DNS list is asked about.

    ip: the connecting IP and the IPs of Received headers below the trusted
    boundary (reversed octets, RFC 5782 section 2.1); domain: the domains of
    URLs in the body and the envelope sender domain (RFC 5782 section 2.3).
    """

    IP = "ip"
    DOMAIN = "domain"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Scores at which each action starts; null = never. The strongest action
    whose threshold the score reaches wins (order: add_header,
    rewrite_subject, greylist, quarantine, reject, discard)."""

    greylist: float | None = setting(None, doc="tempfail 451 4.7.1 the first time")
    add_header: float | None = setting(6.0, doc="X-Spam: Yes, X-Spam-Flag: YES")
    rewrite_subject: float | None = setting(None, doc="prefix the Subject")
    quarantine: float | None = setting(None, doc="Postfix HOLD queue")
    reject: float | None = setting(15.0, doc="550 5.7.1 with the score")
    discard: float | None = setting(None, doc="accept and drop (Apis delete threshold)")

    def validate_node(self) -> list[Finding]:
        problems: list[Finding] = []
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and not -1000 <= v <= 10000:
                problems.append(FieldProblem(f.name, f"{v} is out of range -1000..10000"))
        return problems


def _inbound() -> Thresholds:
    # Day one tags and never refuses (issue 15: protect without losing mail);
    # GTUBE still rejects, so the whole path can be tested.
    return Thresholds(greylist=None, add_header=6.0, reject=None)


def _outbound() -> Thresholds:
    return Thresholds(add_header=None, reject=10.0)


def _forwarding() -> Thresholds:
    return Thresholds(add_header=4.0, reject=6.0)


@dataclass(frozen=True, slots=True)
class Profile:
    """A named threshold set (Onlime: minimal ... radical) and who gets it."""

    recipients: tuple[str, ...] = setting(
        factory=tuple, doc="addresses (user@domain) or domains (match subdomains too)"
    )
    thresholds: Thresholds = setting(factory=Thresholds)


@dataclass(frozen=True, slots=True)
class SymbolOverride:
    """An admin's change to one symbol's shipped score or description."""

    score: float | None = setting(None, doc="null = the shipped score")
    description: str = setting("", doc="empty = the shipped description")


@dataclass(frozen=True, slots=True)
class Zone:
    """One DNSBL/URIBL zone (RFC 5782)."""

    zone: str = setting("", doc="the list's DNS zone, e.g. zen.spamhaus.org")
    kind: ZoneKind = setting(ZoneKind.IP)
    symbol: str = setting("", doc="symbol for a listing whose code is not in returns")
    returns: Mapping[str, str] = setting(
        factory=dict, doc="A record (127.0.0.x) -> symbol; other codes give `symbol`"
    )
    score: float = setting(1.0, doc="default score of this zone's symbols")
    enabled: bool = setting(True)

    def validate_node(self) -> list[Finding]:
        problems: list[Finding] = []
        if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+\.?", self.zone):
            problems.append(FieldProblem("zone", f"{self.zone!r} is not a DNS zone name"))
        names = [("symbol", self.symbol), *((f"returns.{c}", s) for c, s in self.returns.items())]
        for label, name in names:
            if not SYMBOL_NAME.match(name):
                problems.append(FieldProblem(label, f"{name!r} is not a symbol name (A-Z, 0-9, _)"))
        for code in self.returns:
            if not re.fullmatch(r"127\.\d{1,3}\.\d{1,3}\.\d{1,3}", code):
                why = f"{code!r} is not a 127.x.y.z answer"
                problems.append(FieldProblem(f"returns.{code}", why, at_key=True))
        return problems


def _zones() -> tuple[Zone, ...]:
    return (
        Zone("zen.spamhaus.org", ZoneKind.IP, "RBL_SPAMHAUS", {
            "127.0.0.2": "RBL_SPAMHAUS_SBL", "127.0.0.3": "RBL_SPAMHAUS_CSS",
            "127.0.0.4": "RBL_SPAMHAUS_XBL", "127.0.0.9": "RBL_SPAMHAUS_DROP",
            "127.0.0.10": "RBL_SPAMHAUS_PBL", "127.0.0.11": "RBL_SPAMHAUS_PBL",
        }, 4.0),
        Zone("bl.spamcop.net", ZoneKind.IP, "RBL_SPAMCOP", {}, 2.0),
        Zone("dbl.spamhaus.org", ZoneKind.DOMAIN, "DBL_SPAM", {
            "127.0.1.2": "DBL_SPAM", "127.0.1.4": "DBL_PHISH", "127.0.1.5": "DBL_MALWARE",
            "127.0.1.6": "DBL_BOTNET", "127.0.1.102": "DBL_ABUSE_REDIR",
        }, 6.0),
        Zone("multi.surbl.org", ZoneKind.DOMAIN, "SURBL_MULTI", {}, 5.0),
        Zone("multi.uribl.com", ZoneKind.DOMAIN, "URIBL_MULTI", {
            "127.0.0.2": "URIBL_BLACK", "127.0.0.4": "URIBL_GREY", "127.0.0.8": "URIBL_RED",
        }, 4.0),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DnsblSettings:
    enabled: bool = setting(True)
    zones: tuple[Zone, ...] = setting(factory=_zones)
    timeout: Duration = setting(
        Duration(3.0), min=0.05, max=60, doc="all lookups of one message, together"
    )
    max_lookups: int = setting(64, min=1, max=1000, doc="queries per message (IPs x zones ...)")
    concurrency: int = setting(16, min=1, max=256, doc="queries in flight per message")
    received_depth: int = setting(3, min=0, max=20, doc="untrusted Received IPs also checked")
    cache_ttl_max: Duration = setting(Duration(3600.0), min=0, doc="cap on the answer's TTL")
    cache_ttl_negative: Duration = setting(Duration(300.0), min=0, doc="for not-listed answers")
    check_sender_domain: bool = setting(True, doc="ask domain zones about MAIL FROM's domain")


@dataclass(frozen=True, slots=True)
class RegexRule:
    """One YAML regex rule: a symbol when an RE2 pattern matches decoded text."""

    symbol: str = setting("", doc="symbol name (A-Z, 0-9, _)")
    header: str = setting("", doc="header name to match (decoded, unfolded)")
    body: bool = setting(False, doc="match the decoded text of the body instead")
    match: str = setting("", doc="RE2 pattern, searched anywhere")
    case_sensitive: bool = setting(False)
    score: float = setting(1.0)
    description: str = setting("")

    def validate_node(self) -> list[Finding]:
        problems: list[Finding] = []
        if not SYMBOL_NAME.match(self.symbol):
            problems.append(
                FieldProblem("symbol", f"{self.symbol!r} is not a symbol name (A-Z, 0-9, _)")
            )
        if bool(self.header) == self.body:
            problems.append("give either header: NAME or body: true")
        if not self.match:
            problems.append("match: a regular expression is required")
        elif why := re2_problem(self.match):
            problems.append(
                FieldProblem("match", f"{self.match!r} is not a valid RE2 pattern: {why}")
            )
        return problems


@dataclass(frozen=True, slots=True)
class HeaderNames:
    spam: str = setting("X-Spam", doc='"Yes" when the add_header threshold is reached')
    flag: str = setting("X-Spam-Flag", doc='"YES" when flagged (maildrop, Apis)')
    score: str = setting("X-Spam-Score", doc="the score, on every scanned message")
    result: str = setting("X-Spamd-Result", doc="action, score/threshold and every symbol")

    def validate_node(self) -> list[Finding]:
        return [FieldProblem(f.name, f"{getattr(self, f.name)!r} is not a header name")
                for f in fields(self)
                if not re.fullmatch(r"[!-9;-~]+", getattr(self, f.name))]  # fmt: skip


@dataclass(frozen=True, slots=True)
class SpamMilterSettings(MilterSettings):
    """Every key is documented in deploy/postwarden.yaml (milters.spam)."""

    thresholds: Thresholds = setting(factory=_inbound, doc="inbound mail, default profile")
    outbound: Thresholds = setting(factory=_outbound, doc="authenticated or trusted senders")
    forwarding: Thresholds = setting(factory=_forwarding, doc="recipients that forward out")
    forwarding_addresses: tuple[str, ...] = setting(factory=tuple)
    forwarding_map: FilePath | None = setting(
        None, doc="file: one address per line (or a Postfix map source)"
    )
    forwarding_lookup: str = setting(
        "", doc='a Postfix map queried with `postmap -q`, e.g. "hash:/etc/postfix/virtual"'
    )
    local_domains: tuple[str, ...] = setting(
        factory=tuple, doc="targets outside these forward out; empty = another domain"
    )
    profiles: Mapping[str, Profile] = setting(factory=dict)
    symbols: Mapping[str, SymbolOverride] = setting(factory=dict)
    subject_prefix: str = setting("[SPAM] ")
    headers: HeaderNames = setting(factory=HeaderNames)
    max_scan_size: Size = setting(Size(512 * 1024), min=1024)
    oversize: Oversize = setting(Oversize.TRUNCATE)
    allow_from: tuple[str, ...] = setting(factory=tuple)
    allow_to: tuple[str, ...] = setting(factory=tuple)
    block_from: tuple[str, ...] = setting(factory=tuple)
    rules: tuple[RegexRule, ...] = setting(factory=tuple)
    url_shorteners: tuple[str, ...] = setting(factory=lambda: (
        "bit.ly", "tinyurl.com", "t.co", "goo.gl", "ow.ly", "is.gd", "buff.ly",
        "rebrand.ly", "cutt.ly", "shorturl.at", "rb.gy", "tiny.cc",
    ))  # fmt: skip
    many_domains: int = setting(10, min=2, doc="distinct URL domains for URL_MANY_DOMAINS")
    authserv_id: str = setting("", doc="our Authentication-Results id; empty = host FQDN")
    dnsbl: DnsblSettings = setting(factory=DnsblSettings)

    bayes: BayesSettings = setting(
        factory=BayesSettings, doc="Bayes classifier (BAYES_SPAM/BAYES_HAM)"
    )

    def validate_node(self) -> list[Finding]:
        problems: list[Finding] = []
        for name in self.symbols:
            if not SYMBOL_NAME.match(name):
                problems.append(FieldProblem(f"symbols.{name}",
                                             f"{name!r} is not a symbol name (A-Z, 0-9, _)",
                                             at_key=True))  # fmt: skip
        for key in ("allow_from", "allow_to", "block_from", "forwarding_addresses"):
            for i, entry in enumerate(getattr(self, key)):
                if not re.fullmatch(r"[^@\s]*@?[A-Za-z0-9.-]+", entry.strip()):
                    problems.append(
                        FieldProblem(f"{key}[{i}]", f"{entry!r} is not an address or domain")
                    )
        return problems
