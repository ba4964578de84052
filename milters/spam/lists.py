"""Allow and block lists with NethServer's semantics.

NethServer's email module offers "Allow From", "Allow To" and "Block From"
rules, each an address or a domain; a domain also covers its subdomains
(`example.com` matches `user@mail.example.com`). An allow rule wins over a
block rule and skips scoring; every match is shown as a symbol.

Entries: `user@example.com` (that address, case-insensitive), `@example.com`
or `example.com` (the domain and every subdomain).
"""

from __future__ import annotations

from collections.abc import Iterable
from email.utils import getaddresses


def _split(address: str) -> tuple[str, str]:
    address = address.strip().strip("<>").lower()
    local, at, domain = address.rpartition("@")
    return (local, domain.rstrip(".")) if at else ("", address.rstrip("."))


class AddressList:
    """A set of addresses and domains; `match()` names the entry that matched."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.addresses: set[str] = set()
        self.domains: set[str] = set()
        for entry in entries:
            local, domain = _split(entry)
            if local:
                self.addresses.add(f"{local}@{domain}")
            elif domain:
                self.domains.add(domain)

    def __bool__(self) -> bool:
        return bool(self.addresses or self.domains)

    def match(self, address: str) -> str | None:
        local, domain = _split(address)
        if not domain:
            return None
        if local and f"{local}@{domain}" in self.addresses:
            return f"{local}@{domain}"
        labels = domain.split(".")
        for i in range(len(labels)):
            suffix = ".".join(labels[i:])
            if suffix in self.domains:
                return suffix
        return None

    def match_any(self, addresses: Iterable[str]) -> str | None:
        for a in addresses:
            found = self.match(a)
            if found:
                return found
        return None


def header_addresses(values: Iterable[str]) -> list[str]:
    """Addresses in From-like header values (RFC 5322 section 3.4)."""
    try:
        return [addr for _, addr in getaddresses(list(values)) if "@" in addr]
    except Exception:  # a mangled header gives no address, never an exception
        return []
