"""Bad rate-limit rules are refused by the loader with file:line and key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from postwarden.config.errors import ConfigError
from postwarden.config.load import load_config
from postwarden.config.sections.ratelimit import AppliesTo, Counts, LimitAction, RateKey

GOOD = """\
policyd:
  ratelimit:
    enabled: true
    rules:
      - name: submission
        key: sasl_username
        applies_to: authenticated
        windows: [{limit: 30, per: 1m}, {limit: 1000, per: 1d}]
        overrides:
          newsletter: [{limit: 20000, per: 1d}]
      - key: client_address
        count: recipients
        ipv4_prefix: 26
        ipv6_prefix: 48
        action: reject
        windows: [{limit: 100, per: 1h}]
"""


def load(tmp_path: Path, text: str) -> object:
    f = tmp_path / "postwarden.yaml"
    f.write_text(text, encoding="utf-8")
    return load_config(f)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    name = str(tmp_path / "postwarden.yaml")
    return [str(p).replace(name, "F") for p in err.value.problems]


def test_good_rules_load_into_typed_settings(tmp_path: Path) -> None:
    rl = load(tmp_path, GOOD).policyd.ratelimit  # type: ignore[attr-defined]
    first, second = rl.rules
    assert (first.key, first.count, first.applies_to) == (
        RateKey.SASL_USERNAME,
        Counts.MESSAGES,
        AppliesTo.AUTHENTICATED,
    )
    assert [(w.limit, float(w.per)) for w in first.windows] == [(30, 60.0), (1000, 86400.0)]
    assert first.overrides["newsletter"][0].limit == 20000
    assert (second.label, second.action, second.ipv4_prefix) == (
        "recipients_per_client_address",
        LimitAction.REJECT,
        26,
    )
    assert (rl.first_time_recipients.limit, float(rl.first_time_recipients.per)) == (200, 86400.0)


def test_unknown_key_type_is_refused_at_its_line(tmp_path: Path) -> None:
    text = GOOD.replace("key: sasl_username", "key: sasl_user")
    assert problems(tmp_path, text) == [
        "F:6: policyd.ratelimit.rules[0].key: expected one of sasl_username, sender, "
        "sender_domain, client_address, recipient, recipient_domain; got 'sasl_user'"
    ]


@pytest.mark.parametrize("limit", ["0", "-5"])
def test_zero_or_negative_limit_is_refused_at_its_line(tmp_path: Path, limit: str) -> None:
    text = GOOD.replace("limit: 100,", f"limit: {limit},")
    found = problems(tmp_path, text)
    assert (
        found[0]
        == f"F:16: policyd.ratelimit.rules[1].windows[0].limit: must be at least 1, got {limit}"
    )


def test_unparsable_window_is_refused_at_its_line(tmp_path: Path) -> None:
    text = GOOD.replace("per: 1h", "per: hourly")
    assert problems(tmp_path, text)[0] == (
        'F:16: policyd.ratelimit.rules[1].windows[0].per: expected a duration like "5m" or '
        "\"30s\", got 'hourly'"
    )


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("windows: [{limit: 100, per: 1h}]", "windows: []", "windows: give at least one"),
        ("count: recipients", "count: bytes\n        key: recipient", "key given twice"),
        ("ipv4_prefix: 26", "ipv4_prefix: 33", "must be at most 32"),
        ("newsletter:", "'news letter':", None),
        ("name: submission", "name: first_time_recipients", "is reserved"),
        ("name: submission", "name: recipients_per_client_address", "names must be distinct"),
        ("[{limit: 30, per: 1m}, ", "[{limit: 30, per: 1d}, ", "two windows have the same length"),
        ("action: reject", "action: bounce", "expected one of defer, reject, hold, log"),
    ],
)
def test_cross_field_problems_are_refused(
    tmp_path: Path, old: str, new: str, expected: str | None
) -> None:
    text = GOOD.replace(old, new)
    assert text != GOOD
    if expected is None:  # any sasl_username value may be overridden
        load(tmp_path, text)
        return
    assert any(expected in p for p in problems(tmp_path, text))


def test_client_override_must_be_a_network(tmp_path: Path) -> None:
    text = GOOD.replace("ipv4_prefix: 26", "ipv4_prefix: 26\n        overrides: {mailer: []}")
    assert problems(tmp_path, text) == [
        "F:14: policyd.ratelimit.rules[1].overrides.mailer: 'mailer' is not an IP address or CIDR"
    ]


def test_bytes_cannot_key_on_recipient(tmp_path: Path) -> None:
    text = GOOD.replace(
        "key: client_address\n        count: recipients",
        "key: recipient_domain\n        count: bytes",
    )
    assert problems(tmp_path, text) == [
        "F:12: policyd.ratelimit.rules[1].count: bytes cannot key on recipient_domain "
        "(counted per message)"
    ]
