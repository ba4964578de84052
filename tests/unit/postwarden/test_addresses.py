"""Address and domain patterns mean the same in every check."""

from __future__ import annotations

import pytest

from postwarden.addresses import (
    address_matcher,
    domain_listed,
    dotted_domain_matches,
    is_address_pattern,
)
from postwarden.replies import printable


@pytest.mark.parametrize(
    ("pattern", "address", "matches"),
    [
        ("alice@Example.com", "ALICE@example.COM", True),
        ("alice@example.com", "bob@example.com", False),
        ("@example.com", "bob@example.com", True),
        ("@example.com", "bob@mx.example.com", False),
        ("example.com", "bob@mx.example.com", True),  # parent_domain_matches_subdomains
        ("example.com", "bob@badexample.com", False),
    ],
)
def test_access_style_address_patterns(pattern: str, address: str, matches: bool) -> None:
    assert address_matcher(pattern)(address) is matches


def test_domain_lists_match_parents_and_dotted_patterns_match_below() -> None:
    assert domain_listed("Mail.Example.com", frozenset({"example.com"}))
    assert not domain_listed("example.org", frozenset({"example.com"}))
    assert dotted_domain_matches("a.example.com", (".example.com",))
    assert dotted_domain_matches("example.com", (".example.com",))
    assert not dotted_domain_matches("a.example.com", ("example.com",))


def test_address_patterns_for_the_sender_login_map() -> None:
    assert is_address_pattern("alice@example.com") and is_address_pattern("@example.com")
    assert not any(map(is_address_pattern, ("alice", "a@b@c", "a b@c", "alice@")))


def test_reply_text_is_one_bounded_line_of_ascii() -> None:
    assert printable("bad\r\naction=OK\x00 caf\u00e9", 100) == "bad  action=OK  caf"
    assert printable("x" * 500) == "x" * 300
