"""The greylisting triplet, shared by the policy daemon and the spam milter.

A triplet is (client network, sender, recipient) after postgrey's
normalisation; policyd/checks/greylist.py greylists at RCPT with it and the
spam milter's greylist action (milters/spam/greylisting.py) at end of DATA,
through the same Lua script and keys, so a triplet that passed one passes
the other.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from postwarden.addresses import without_extension
from postwarden.config.sections.greylist import GreylistSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

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
        if self.strip_extension:
            local = without_extension(local, self.delimiters)
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
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = ipv4_prefix if ip.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
