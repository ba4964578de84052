"""Matching mail addresses and domains the way Postfix tables do.

One place for the patterns admins write in the config (access rules, rate
limit `senders`, the sender/login map, the SPF and greylist domain lists),
so the same pattern means the same thing everywhere. Addresses and domains
compare case-insensitively (RFC 5321 section 2.4 lets only the local part be
case-sensitive, and no MTA treats it so).
"""

from __future__ import annotations

from collections.abc import Callable, Collection


def domain_of(address: str) -> str:
    """The part after the last `@` (the whole text when there is none)."""
    return address.rpartition("@")[2]


def without_extension(address: str, delimiters: str) -> str:
    """`address` without its address extension, split as Postfix splits it
    (postconf(5) recipient_delimiter): the local part ends at the first of
    `delimiters` that is not its first character, so alice+lists@example.org
    is alice@example.org. A name without @ is a local part alone."""
    local, at, domain = address.rpartition("@")
    if not at:
        local = address
    cut = min((i for i in (local.find(d) for d in delimiters) if i > 0), default=-1)
    if cut > 0:
        local = local[:cut]
    return f"{local}@{domain}" if at else local


def in_domain(domain: str, parent: str) -> bool:
    """`domain` is `parent` or a subdomain of it (`mx.example.com` in `example.com`)."""
    return domain == parent or domain.endswith("." + parent)


def domain_listed(domain: str, listed: Collection[str]) -> bool:
    """`domain` or one of its parent domains is in `listed` (lower case, no dots
    at the ends); one set lookup per label."""
    labels = domain.lower().strip(".").split(".")
    return any(".".join(labels[i:]) in listed for i in range(len(labels)))


def address_matcher(pattern: str) -> Callable[[str], bool]:
    """A Postfix access(5) address pattern as a predicate on addresses:
    `user@domain` that address, `@domain` anyone at exactly that domain,
    `domain` that domain or below (`parent_domain_matches_subdomains`)."""
    p = pattern.strip().lower()
    if p.startswith("@"):
        return lambda address: domain_of(address.lower()) == p[1:]
    if "@" in p:
        return lambda address: address.lower() == p
    return lambda address: in_domain(domain_of(address.lower()), p)


def is_address_pattern(text: str) -> bool:
    """`user@domain` or `@domain`: what the sender/login map may list."""
    _local, at, domain = text.partition("@")
    return bool(at) and bool(domain) and "@" not in domain and not any(c.isspace() for c in text)


def dotted_domain_matches(domain: str, patterns: Collection[str]) -> bool:
    """policyd-spf's whitelist convention: `example.com` matches exactly that
    domain, `.example.com` that domain and every subdomain."""
    domain = domain.lower().rstrip(".")
    for pattern in patterns:
        p = pattern.lower().rstrip(".")
        if p.startswith("."):
            if in_domain(domain, p[1:]):
                return True
        elif domain == p:
            return True
    return False
