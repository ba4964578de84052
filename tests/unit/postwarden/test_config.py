"""The config loader: typed settings, safe defaults, every problem with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from postwarden.config import ConfigError, Settings, config_path, load_config, load_config_text
from postwarden.config.schema import OnError
from postwarden.config.units import Duration, Size, SocketAddress


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "pw.yaml")
    return [str(p) for p in info.value.problems]


def test_empty_file_gives_safe_defaults() -> None:
    s = load_config_text("", "pw.yaml")
    assert s == Settings()
    assert s.redis.url is None  # embedded Redis by default
    assert s.policyd.on_error is OnError.ACCEPT
    assert s.milters.headers.socket.kind == "unix"


def test_unknown_key_is_an_error_with_line_and_suggestion() -> None:
    out = problems("redis:\n  prefix: x\n  urll: redis://h\n")
    assert out == [
        "pw.yaml:3: redis.urll: unknown key; did you mean 'url'? "
        "(valid keys: cluster, prefix, sentinel, timeout, url)"
    ]


def test_every_problem_is_reported_not_just_the_first() -> None:
    out = problems(
        "policyd:\n"
        "  idle_timeout: soon\n"
        "  max_attributes: 3\n"
        "  socket: tcp:1.2.3.4:9\n"
        "trusted_networks: [10.1.2.3/8]\n"
    )
    assert len(out) == 4
    assert out[0].startswith("pw.yaml:2: policyd.idle_timeout: expected a duration")
    assert out[1] == "pw.yaml:3: policyd.max_attributes: must be at least 10, got 3"
    assert out[2].startswith("pw.yaml:4: policyd.socket: unknown socket type 'tcp'")
    assert out[3] == (
        "pw.yaml:5: trusted_networks[0]: '10.1.2.3/8' has host bits set; did you mean 10.0.0.0/8?"
    )


def test_wrong_type_names_what_was_expected() -> None:
    assert problems("milters:\n  headers:\n    enabled: maybe\n") == [
        "pw.yaml:3: milters.headers.enabled: expected true or false, got 'maybe'"
    ]
    assert problems("policyd:\n  max_line: '4k'\n")[0].endswith("expected a whole number, got '4k'")
    assert problems("policyd: [1, 2]\n") == ["pw.yaml:1: policyd: expected a mapping, got a list"]


def test_enum_values_are_checked() -> None:
    assert problems("policyd:\n  on_error: retry\n") == [
        "pw.yaml:2: policyd.on_error: expected one of accept, tempfail; got 'retry'"
    ]


def test_missing_file_named_by_a_key_is_an_error(tmp_path: Path) -> None:
    out = problems("milters:\n  headers:\n    header_checks: [/nonexistent/checks]\n")
    assert out == [
        "pw.yaml:3: milters.headers.header_checks[0]: file not found: /nonexistent/checks"
    ]


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "checks").write_text("/x/ DUNNO\n")
    cfg = tmp_path / "pw.yaml"
    cfg.write_text("milters:\n  headers:\n    header_checks: [checks]\n")
    assert load_config(cfg).milters.headers.header_checks == (str(tmp_path / "checks"),)


def test_yaml_syntax_error_has_a_line() -> None:
    out = problems("redis:\n  url: [unclosed\nstate_dir: x\n")
    assert out[0].startswith("pw.yaml:")
    assert "YAML syntax" in out[0]


def test_duplicate_key_is_an_error() -> None:
    assert problems("state_dir: /a\nstate_dir: /b\n") == ["pw.yaml:2: state_dir: key given twice"]


def test_block_checks_report_the_field_at_its_own_line() -> None:
    out = problems("redis:\n  prefix: x\n\n  url: http://x\n")
    assert out == [
        "pw.yaml:4: redis.url: must start with redis://, rediss:// or unix://, got 'http://x'"
    ]
    out = problems("policyd:\n  order:\n    - spf\n    - dkim\n")
    assert out[0].startswith("pw.yaml:4: policyd.order[1]: unknown check 'dkim'")


def test_access_rule_actions_are_validated_at_load() -> None:
    out = problems("policyd:\n  access:\n    rules:\n      - {sender: a@b, action: 'BOUNCE x'}\n")
    assert out[0].startswith(
        "pw.yaml:4: policyd.access.rules[0].action: 'BOUNCE x' is not a Postfix"
    )


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: config file not found"


def test_config_path_lookup_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTWARDEN_CONFIG", raising=False)
    assert config_path(None) == "/etc/postwarden/postwarden.yaml"
    monkeypatch.setenv("POSTWARDEN_CONFIG", "/env.yaml")
    assert config_path(None) == "/env.yaml"
    assert config_path("/explicit.yaml") == "/explicit.yaml"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300", 300), ("30s", 30), ("5m", 300), ("2h", 7200), ("35d", 3024000), ("250ms", 0.25)],
)
def test_durations(text: str, seconds: float) -> None:
    assert Duration.parse(text) == pytest.approx(seconds)


def test_sizes() -> None:
    assert Size.parse("10MB") == 10 * 1024 * 1024
    assert Size.parse("512KB") == 512 * 1024
    assert Size.parse(42) == 42
    with pytest.raises(ValueError, match="expected a size"):
        Size.parse("lots")


@pytest.mark.parametrize(
    ("text", "libmilter"),
    [
        ("unix:/run/pw.sock", "local:/run/pw.sock"),
        ("inet:127.0.0.1:9901", "inet:9901@127.0.0.1"),
        ("inet:[::1]:9901", "inet6:9901@::1"),
        ("local:/x.sock", "local:/x.sock"),
    ],
)
def test_sockets_in_postfix_notation(text: str, libmilter: str) -> None:
    assert SocketAddress.parse(text).libmilter == libmilter


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("inet:127.0.0.1", "port must be a number"),
        ("inet:127.0.0.1:99999", "port must be 1-65535"),
        ("unix:relative.sock", "must be absolute"),
        ("/just/a/path", "Postfix notation"),
        ("inet:::1:25", "brackets"),
    ],
)
def test_bad_socket_strings(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SocketAddress.parse(text)


def test_a_partly_written_block_keeps_its_own_defaults() -> None:
    # Writing one key of the dkim block must not give it the generic milter
    # socket (every milter would then share one path).
    s = load_config_text("milters:\n  dkim: {enabled: true}\n  noop: {on_error: tempfail}\n")
    assert s.milters.dkim.socket.path == "/var/spool/postfix/postwarden/dkim.sock"
    assert s.milters.noop.socket.path == "/var/spool/postfix/postwarden/noop.sock"
    assert s.milters.noop.enabled is False  # noop's own default, not MilterSettings'
    assert s.milters.noop.on_error is OnError.TEMPFAIL
