"""The config loader: typed settings, safe defaults, every problem with file:line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from postwarden.config import ConfigError, Settings, config_path, load_config, load_config_text
from postwarden.config.files import MAX_CONFIG_SIZE, read_file
from postwarden.config.schema import OnError
from postwarden.config.units import Duration, Size, SocketAddress
from postwarden.redact import mask_url


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


def test_a_fifo_as_config_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "pw.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="a FIFO, not a regular file"):
        load_config(fifo)


def test_a_device_as_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="/dev/zero: cannot read config: a character device"):
        load_config("/dev/zero")


def test_a_config_over_the_size_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * (MAX_CONFIG_SIZE // 10 + 1))
    with pytest.raises(ConfigError, match="larger than the 1 MiB limit"):
        load_config(big)


def test_a_named_file_must_be_a_regular_file_within_the_limit(tmp_path: Path) -> None:
    fifo = tmp_path / "clients.fifo"
    os.mkfifo(fifo)
    text = f"policyd:\n  greylist:\n    whitelist_clients_files: [{fifo}, /dev/zero]\n"
    assert problems(text) == [
        f"pw.yaml:3: policyd.greylist.whitelist_clients_files[0]: cannot read {fifo}:"
        " a FIFO, not a regular file",
        "pw.yaml:3: policyd.greylist.whitelist_clients_files[1]: cannot read /dev/zero:"
        " a character device, not a regular file",
    ]


def test_services_reading_a_named_file_refuse_a_fifo_and_an_oversized_file(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "rules.fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="a FIFO"):
        read_file(fifo)
    big = tmp_path / "rules"
    big.write_bytes(b"x" * 101)
    with pytest.raises(OSError, match="larger than the 100 bytes limit"):
        read_file(big, limit=100)
    assert read_file(big, limit=101) == b"x" * 101


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://:x@127.0.0.1:notaport/0", "Port could not be cast to integer"),
        ("redis://:x@127.0.0.1:70000/0", "Port out of range"),
        ("redis://h:6379/zero", "the path must be a database number, got 'zero'"),
        ("redis://:x@bad_host!:6379/0", "not an IP address or host name: 'bad_host!'"),
        ("redis://h:6379/0?socket_timeout=soon", "Invalid value for 'socket_timeout'"),
        ("unix://", "unix:// needs an absolute socket path"),
        ("http://h", "must start with redis://, rediss:// or unix://"),
    ],
)
def test_redis_urls_are_checked_as_the_services_parse_them(url: str, message: str) -> None:
    [problem] = problems(f'redis:\n  prefix: "x:"\n  url: "{url}"\n')
    assert problem.startswith("pw.yaml:3: redis.url: ")
    assert message in problem
    assert ":x@" not in problem


def test_a_redis_password_never_shows_in_settings_or_problems() -> None:
    s = load_config_text('redis: {url: "redis://:hunter2@127.0.0.1:6379/0"}')
    assert "hunter2" not in repr(s)
    assert "redis://:***@127.0.0.1:6379/0" in repr(s.redis)
    [problem] = problems('redis: {url: "redis://:hunter2@127.0.0.1:port/0"}')
    assert "hunter2" not in problem
    assert mask_url("redis://user:pw@h/0?password=pw2") == "redis://user:***@h/0?password=***"


def test_an_inet_socket_needs_an_address_or_host_name() -> None:
    [problem] = problems('policyd: {socket: "inet:local host:9904"}')
    assert "policyd.socket: not an IP address or host name: 'local host'" in problem
    assert SocketAddress.parse("inet:mx-1.example.org:9904").host == "mx-1.example.org"


def test_metrics_listen_needs_a_port() -> None:
    [problem] = problems('metrics: {listen: "127.0.0.1:metrics"}')
    assert "listen: port must be 1-65535" in problem
