"""`milters.dkim`: settings of the dkim milter (milters/dkim).

Keys are a list like OpenDKIM's KeyTable and SigningTable in one: each entry
names the signing domain (or `*.domain` for its subdomains), the selector,
the private key file and the algorithm. A key file that is missing,
unreadable or holds the wrong kind of key is refused when the config is
loaded, with the file:line of the entry (`postwarden config check`).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from enum import StrEnum

from postwarden.config.errors import FieldProblem, Finding
from postwarden.config.fields import setting
from postwarden.config.sections.common import MilterSettings
from postwarden.config.units import Duration, FilePath
from postwarden.dkim_keys import ALGORITHMS, KeyFileError, read_private_key

_DOMAIN = re.compile(r"^(\*\.)?([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")
_SELECTOR = re.compile(r"^[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?)*$")

# RFC 6376 section 5.4.1 recommends these; the MIME headers matter because
# changing them changes how the signed body is shown.
DEFAULT_SIGN_HEADERS = (
    "From", "Sender", "Reply-To", "To", "Cc", "Subject", "Date", "Message-ID",
    "In-Reply-To", "References", "MIME-Version", "Content-Type",
    "Content-Transfer-Encoding", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post",
)  # fmt: skip
# Signed once more than they occur, so nobody can add one without breaking
# the signature (RFC 6376 section 8.15).
DEFAULT_OVERSIGN_HEADERS = (
    "From", "Reply-To", "To", "Cc", "Subject", "Date",
    "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
)  # fmt: skip


class DmarcEnforcement(StrEnum):
    """What a DMARC failure under p=reject / p=quarantine gets.

    report: an Authentication-Results entry and a log line only (default);
    enforce: p=reject is rejected (550 5.7.1), p=quarantine held (HOLD).
    """

    REPORT = "report"
    ENFORCE = "enforce"


@dataclass(frozen=True, slots=True)
class DkimKey:
    """One signing key: domain (or *.domain), selector, key file, algorithm."""

    domain: str = setting("", doc="signing domain, or *.domain for its subdomains")
    selector: str = setting("", doc="DNS selector: the key is at SELECTOR._domainkey.DOMAIN")
    key_file: FilePath | None = setting(None, doc="private key (PEM or dkimpy base64 seed)")
    algorithm: str = setting("rsa-sha256", doc="rsa-sha256 | ed25519-sha256")
    not_before: str = setting("", doc='YYYY-MM-DD: signs from this day (rotation); "" = now')

    @property
    def base_domain(self) -> str:
        """The d= domain: the domain without a leading `*.`."""
        return self.domain.removeprefix("*.").lower()

    def starts(self) -> datetime.date | None:
        return datetime.date.fromisoformat(self.not_before) if self.not_before else None

    def validate_node(self) -> list[Finding]:
        problems: list[Finding] = []
        if not _DOMAIN.match(self.domain.lower()):
            problems.append(
                FieldProblem("domain", f"{self.domain!r} is not a domain name (or *.domain)")
            )
        if not _SELECTOR.match(self.selector.lower()):
            problems.append(FieldProblem("selector", f"{self.selector!r} is not a DNS label"))
        if self.algorithm not in ALGORITHMS:
            problems.append(
                FieldProblem(
                    "algorithm", f"{self.algorithm!r} is not one of {', '.join(ALGORITHMS)}"
                )
            )
        if self.not_before:
            try:
                datetime.date.fromisoformat(self.not_before)
            except ValueError:
                problems.append(
                    FieldProblem("not_before", f"{self.not_before!r} is not a date like 2026-12-31")
                )
        if self.key_file is None:
            problems.append("key_file: the private key file is required")
        elif self.algorithm in ALGORITHMS:
            try:
                read_private_key(self.key_file, self.algorithm)
            except KeyFileError as exc:
                problems.append(FieldProblem("key_file", str(exc)))
        return problems


@dataclass(frozen=True, slots=True)
class DkimMilterSettings(MilterSettings):
    """Every key is documented in deploy/postwarden.yaml (milters.dkim)."""

    authserv_id: str = setting("", doc='our Authentication-Results id; "" = host name')
    verify: bool = setting(True, doc="verify inbound mail and write Authentication-Results")
    sign: bool = setting(True, doc="sign outbound mail with `keys`")
    keys: tuple[DkimKey, ...] = setting(factory=tuple)
    sign_authenticated: bool = setting(True, doc="sign for SASL-authenticated clients")
    sign_trusted_networks: bool = setting(True, doc="sign for clients in trusted_networks")
    sign_daemon_names: tuple[str, ...] = setting(
        factory=tuple, doc="sign everything received by these {daemon_name}s"
    )
    sign_headers: tuple[str, ...] = setting(factory=lambda: DEFAULT_SIGN_HEADERS)
    oversign_headers: tuple[str, ...] = setting(factory=lambda: DEFAULT_OVERSIGN_HEADERS)
    signature_ttl: Duration = setting(Duration(0), min=0, doc="x= after t=; 0 = no x=")
    max_signatures: int = setting(5, min=1, max=50, doc="signatures verified per message")
    min_key_bits: int = setting(1024, min=1024, max=16384, doc="smaller RSA keys fail")
    key_cache_ttl: Duration = setting(
        Duration(3600), min=0, doc="longest time a key record stays cached in Redis"
    )
    dmarc: bool = setting(True, doc="evaluate DMARC (RFC 7489) on inbound mail")
    dmarc_enforcement: DmarcEnforcement = setting(DmarcEnforcement.REPORT)
    dmarc_quarantine_hold: bool = setting(True, doc="p=quarantine failures held (HOLD)")
    arc: bool = setting(True, doc="verify ARC chains (RFC 8617) on inbound mail")
    trusted_arc_sealers: tuple[str, ...] = setting(
        factory=tuple, doc="ARC sealer domains whose pass exempts a DMARC failure"
    )
    arc_seal: bool = setting(False, doc="add an ARC set to inbound mail we relay on")
    arc_seal_domain: str = setting("", doc="d= of our ARC sets: a domain in `keys`")
    arc_seal_selector: str = setting("", doc="its selector in `keys` (an rsa-sha256 key)")
    arc_seal_daemon_names: tuple[str, ...] = setting(
        factory=tuple, doc="seal only mail received by these {daemon_name}s; [] = all inbound"
    )

    def validate_node(self) -> list[Finding]:
        problems: list[Finding] = []
        seen: set[tuple[str, str]] = set()
        for key in self.keys:
            ident = (key.domain.lower(), key.selector.lower())
            if ident in seen:
                problems.append(f"keys: {key.domain} selector {key.selector} is listed twice")
            seen.add(ident)
        for name in (*self.sign_headers, *self.oversign_headers):
            if not re.fullmatch(r"[!-9;-~]+", name):
                problems.append(f"{name!r} is not a header name")
        if self.arc_seal:
            match = [
                k
                for k in self.keys
                if k.domain.lower() == self.arc_seal_domain.lower()
                and k.selector == self.arc_seal_selector
            ]
            if not match:
                problems.append(
                    "arc_seal: arc_seal_domain and arc_seal_selector must name an entry of keys"
                )
            elif match[0].algorithm != "rsa-sha256":
                problems.append("arc_seal: ARC sets are signed with rsa-sha256 (RFC 8617 §4.1.3)")
        if "from" not in {h.lower() for h in self.sign_headers}:
            problems.append("sign_headers must include From (RFC 6376 section 5.4)")
        return problems
