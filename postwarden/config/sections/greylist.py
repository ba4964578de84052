"""`policyd.greylist`: postgrey-compatible greylisting.

The options mirror postgrey(8)'s (`--delay`, `--retry-window`, `--max-age`,
`--auto-whitelist-clients`, `--ipv4cidr`/`--ipv6cidr`, `--greylist-action`,
`--greylist-text`, `--x-greylist-header`, `--whitelist-clients`,
`--whitelist-recipients`) so an admin moving from postgrey finds the same
knobs and can point at the same whitelist files.

The line parsers for postgrey's whitelist formats live here (not in the
check) so `validate_node` can refuse a bad inline entry with the config
file's line number, and the check can report a bad file line as a warning.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum

from postwarden.config.errors import FieldProblem, Finding
from postwarden.config.fields import setting
from postwarden.config.sections.common import CheckSettings
from postwarden.config.units import Duration, FilePath


class DeferAction(StrEnum):
    """How a greylisted recipient is refused (Postfix access(5)).

    defer_if_permit: "450 4.7.1" only if the later restrictions would have
    accepted, so a later reject (unknown user, RBL) answers first; what
    postgrey answers. defer: "450 4.7.1" at once, whatever follows.
    """

    DEFER_IF_PERMIT = "defer_if_permit"
    DEFER = "defer"


# -- postgrey whitelist line formats -------------------------------------------

# A host or domain name: LDH labels (underscore tolerated: real PTRs use it).
_HOSTNAME = re.compile(r"^\.?(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_-]{1,63}\.?$")
_PARTIAL_V4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){1,2}$")
_LOOKS_V4 = re.compile(r"^[\d.]+(?:/\d+)?$")


@dataclass(frozen=True, slots=True)
class ClientPattern:
    """One `whitelist_clients` entry.

    kind "regex": matched (case-insensitive, anywhere) against the client's
    verified reverse name; "name": that name or any name below it
    (`example.com` matches `mx1.example.com`); "network": an address, CIDR
    or partial IPv4 address (`192.0.2` = /24, `10.1` = /16).
    """

    kind: str
    value: str
    regex: re.Pattern[str] | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


@dataclass(frozen=True, slots=True)
class RecipientPattern:
    """One `whitelist_recipients` entry (postfix access(5) style, as postgrey).

    kind "regex": matched against the whole recipient; "address":
    `user@domain` (also `user+ext@domain`); "localpart": `user@` in any
    domain; "domain": that domain or any subdomain.
    """

    kind: str
    value: str
    regex: re.Pattern[str] | None = None


def _regex(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"bad regular expression /{text}/: {exc}") from None


def strip_comment(line: str) -> str:
    """postgrey's file rules: `#` starts a comment, surrounding blanks ignored."""
    return line.split("#", 1)[0].strip()


def client_pattern(text: str) -> ClientPattern:
    """Parse one whitelist_clients entry; ValueError with the reason if garbage."""
    entry = text.strip()
    if len(entry) > 2 and entry.startswith("/") and entry.endswith("/"):
        return ClientPattern("regex", entry, regex=_regex(entry[1:-1]))
    if _PARTIAL_V4.match(entry) and entry.count(".") < 3:
        octets = entry.split(".")
        if any(int(o) > 255 for o in octets):
            raise ValueError(f"{entry!r} is not a partial IPv4 address")
        prefix = 8 * len(octets)
        padded = ".".join(octets + ["0"] * (4 - len(octets)))
        return ClientPattern("network", entry, network=ipaddress.ip_network(f"{padded}/{prefix}"))
    if ":" in entry or _LOOKS_V4.match(entry):
        try:
            # Host bits tolerated, as postgrey does: "192.0.2.1/24" = that /24.
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR") from None
        return ClientPattern("network", entry, network=net)
    name = entry.lower()
    if not _HOSTNAME.match(name):
        raise ValueError(f"{entry!r} is not a hostname, domain, /regex/, IP or CIDR")
    return ClientPattern("name", name.strip("."))


def recipient_pattern(text: str) -> RecipientPattern:
    """Parse one whitelist_recipients entry; ValueError with the reason if garbage."""
    entry = text.strip()
    if len(entry) > 2 and entry.startswith("/") and entry.endswith("/"):
        return RecipientPattern("regex", entry, regex=_regex(entry[1:-1]))
    if not entry or any(c.isspace() for c in entry) or entry.count("@") > 1:
        raise ValueError(f"{entry!r} is not an address, user@, domain or /regex/")
    user, at, domain = entry.lower().partition("@")
    if at and domain:
        if not user or not _HOSTNAME.match(domain):
            raise ValueError(f"{entry!r} is not an address like user@example.com")
        return RecipientPattern("address", f"{user}@{domain.strip('.')}")
    if at:
        return RecipientPattern("localpart", user)
    if not _HOSTNAME.match(user):
        raise ValueError(f"{entry!r} is not an address, user@, domain or /regex/")
    return RecipientPattern("domain", user.strip("."))


# -- settings ------------------------------------------------------------------

DEFAULT_TEXT = "Greylisted, please try again in %s seconds"
DEFAULT_HEADER = "X-Greylist: delayed %t seconds by postwarden at %h; %d"


@dataclass(frozen=True, slots=True)
class GreylistSettings(CheckSettings):
    enabled: bool = setting(False)
    delay: Duration = setting(
        Duration(300), min=0, max=86400, doc="a retry before this is deferred again"
    )
    retry_window: Duration = setting(
        Duration(2 * 86400), min=60, doc="a first retry after this starts over"
    )
    max_age: Duration = setting(
        Duration(35 * 86400), min=3600, doc="passed triplets / whitelisted clients kept since use"
    )
    auto_whitelist_clients: int = setting(
        5, min=0, max=1000000, doc="passes before a client network skips greylisting; 0 = off"
    )
    auto_whitelist_interval: Duration = setting(
        Duration(3600), min=0, doc="count at most one pass per client in this long"
    )
    ipv4_prefix: int = setting(24, min=8, max=32, doc="client network width; 32 = exact address")
    ipv6_prefix: int = setting(64, min=16, max=128, doc="client network width; 128 = exact")
    lowercase_addresses: bool = setting(True, doc="compare addresses case-insensitively")
    recipient_delimiter: str = setting("+", doc="Postfix recipient_delimiter characters")
    strip_extension: bool = setting(True, doc="user+ext@d -> user@d (sender and recipient)")
    strip_srs: bool = setting(True, doc="SRS0/SRS1 forwarder senders -> the original sender")
    strip_batv: bool = setting(True, doc="prvs=tag=user@d (BATV bounces) -> user@d")
    mask_sender_numbers: bool = setting(True, doc="VERP numbers in the sender local part -> #")
    action: DeferAction = setting(DeferAction.DEFER_IF_PERMIT)
    reply_text: str = setting(DEFAULT_TEXT, doc="%s = seconds to wait, %r = recipient domain")
    add_header: bool = setting(True, doc="PREPEND a header to mail that waited")
    header: str = setting(DEFAULT_HEADER, doc="%t = seconds delayed, %h = host, %d = date")
    use_default_whitelist: bool = setting(True, doc="the shipped list of pooled big senders")
    whitelist_clients_files: tuple[FilePath, ...] = setting(factory=tuple)
    whitelist_recipients_files: tuple[FilePath, ...] = setting(factory=tuple)
    whitelist_clients: tuple[str, ...] = setting(factory=tuple, doc="same formats, inline")
    whitelist_recipients: tuple[str, ...] = setting(factory=tuple, doc="same formats, inline")
    spf_pass_domains: tuple[str, ...] = setting(
        factory=tuple, doc="skip when SPF passed for these sender domains (and subdomains)"
    )

    def validate_node(self) -> list[Finding]:
        problems: list[Finding] = []
        for i, text in enumerate(self.whitelist_clients):
            try:
                client_pattern(text)
            except ValueError as exc:
                problems.append(FieldProblem(f"whitelist_clients[{i}]", str(exc)))
        for i, text in enumerate(self.whitelist_recipients):
            try:
                recipient_pattern(text)
            except ValueError as exc:
                problems.append(FieldProblem(f"whitelist_recipients[{i}]", str(exc)))
        for i, domain in enumerate(self.spf_pass_domains):
            if "@" in domain or not _HOSTNAME.match(domain.lower()):
                why = f"{domain!r} is not a domain"
                problems.append(FieldProblem(f"spf_pass_domains[{i}]", why))
        if float(self.retry_window) <= float(self.delay):
            problems.append(FieldProblem("retry_window", "must be longer than delay"))
        if float(self.max_age) < float(self.retry_window):
            problems.append(FieldProblem("max_age", "must be at least retry_window"))
        if not self.recipient_delimiter and self.strip_extension:
            problems.append(FieldProblem("strip_extension", "needs a recipient_delimiter"))
        for name, text in (("reply_text", self.reply_text), ("header", self.header)):
            if "\n" in text:
                problems.append(FieldProblem(name, "must be one line"))
        if self.add_header and not re.match(r"^[!-9;-~]+:", self.header):
            problems.append(FieldProblem("header", f"{self.header!r} must start with 'Name:'"))
        return problems
