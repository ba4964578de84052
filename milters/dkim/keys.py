"""The signing key table: which key signs mail from which domain, and when.

Like OpenDKIM's KeyTable + SigningTable in one list (`milters.dkim.keys`):
an entry for `example.org` signs mail whose From domain is example.org; an
entry for `*.example.org` signs its subdomains with d=example.org (relaxed
alignment, RFC 7489 section 3.1.1, still passes). An exact entry wins over a
wildcard. Per domain and algorithm the entry with the latest `not_before`
that has arrived signs, so a rotation is "add the new selector with a date,
publish it, remove the old one after the overlap" (`postwarden dkim rotate`).

Keys are parsed once when the engine is built (and again on SIGHUP, which
rebuilds the engine); the config loader has already refused missing,
unreadable and mismatched key files with file:line.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

from milters.dkim.crypto import Signer
from postwarden.config.sections.dkim import DkimKey
from postwarden.dkim_keys import read_private_key


@dataclass(frozen=True)
class SigningKey:
    entry: DkimKey
    signer: Signer

    @property
    def domain(self) -> str:
        """The d= value."""
        return self.entry.base_domain

    @property
    def selector(self) -> str:
        return self.entry.selector


class KeyTable:
    def __init__(self, keys: Sequence[SigningKey]) -> None:
        self.keys = tuple(keys)
        self.domains = frozenset(k.domain for k in self.keys)

    @classmethod
    def load(cls, entries: Sequence[DkimKey]) -> KeyTable:
        """Parse every key file (KeyFileError if one went bad since config load)."""
        keys = []
        for e in entries:
            assert e.key_file is not None  # the loader refuses entries without one
            keys.append(SigningKey(e, Signer(read_private_key(e.key_file, e.algorithm))))
        return cls(keys)

    def for_domain(self, from_domain: str, today: datetime.date) -> list[SigningKey]:
        """The keys that sign mail from `from_domain` today: one per algorithm."""
        d = from_domain.lower().rstrip(".")
        exact = [k for k in self.keys if k.entry.domain.lower() == d]
        candidates = exact or [
            k
            for k in self.keys
            if k.entry.domain.startswith("*.") and d.endswith("." + k.entry.base_domain)
        ]
        if not exact and candidates:
            # The most specific wildcard wins (*.a.example.org over *.example.org).
            longest = max(len(k.entry.base_domain) for k in candidates)
            candidates = [k for k in candidates if len(k.entry.base_domain) == longest]
        chosen: dict[str, SigningKey] = {}
        for k in candidates:
            start = k.entry.starts()
            if start is not None and start > today:
                continue
            alg = k.entry.algorithm
            prev = chosen.get(alg)
            if prev is None or (start or datetime.date.min) > (
                prev.entry.starts() or datetime.date.min
            ):
                chosen[alg] = k
        return sorted(chosen.values(), key=lambda k: k.entry.algorithm, reverse=True)

    def find(self, domain: str, selector: str) -> SigningKey | None:
        d = domain.lower()
        return next(
            (k for k in self.keys if k.entry.domain.lower() == d and k.selector == selector), None
        )

    def is_ours(self, domain: str, selector: str) -> bool:
        """True when d=/s= name one of our keys (a signature we made)."""
        d, s = domain.lower(), selector.lower()
        return any(k.domain == d and k.selector.lower() == s for k in self.keys)
