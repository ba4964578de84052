"""Every config problem is reported at the line that causes it.

The files in tests/fixtures/config/broken/ mark each bad line with
`# expect: KEY` (one marker per problem expected there); the loader and
`config check` must report exactly those key paths at exactly those lines.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from milters import headers
from policyd.checks import greylist, sender_login, spf
from postwarden.cli import main
from postwarden.config import ConfigError, load_config
from postwarden.config.errors import ConfigProblem
from tests.conftest import REPO

BROKEN = REPO / "tests" / "fixtures" / "config" / "broken"
_MARK = re.compile(r"#\s*expect:\s*(\S+)")


def expected(path: Path) -> list[tuple[int, str]]:
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        out += [(lineno, key) for key in _MARK.findall(line)]
    return out


@pytest.mark.parametrize("name", sorted(p.name for p in BROKEN.glob("*.yaml")))
def test_each_problem_is_reported_at_its_own_line(name: str) -> None:
    path = BROKEN / name
    want = expected(path)
    assert want, f"{name} marks no line"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    got = [(p.line, p.key) for p in info.value.problems]
    assert got == want
    assert all(p.file == str(path) for p in info.value.problems)


def test_config_check_prints_problems_with_file_line_and_key() -> None:
    path = BROKEN / "core.yaml"
    result = CliRunner().invoke(main, ["config", "check", "-c", str(path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[1] == (
        f"{path}:6: redis.url: must start with redis://, rediss:// or unix://, "
        "got 'http://127.0.0.1:6379'"
    )
    assert len(lines) == len(expected(path))


def write(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "pw.yaml"
    cfg.write_text(text)
    return cfg


def test_build_time_warnings_carry_the_config_line(tmp_path: Path) -> None:
    # Given settings that load but that the checks find useless when built
    cfg = write(
        tmp_path,
        "policyd:\n"
        "  request_timeout: 10s\n"
        "  spf:\n"
        "    enabled: true\n"
        "    time_budget: 12s\n"
        "  greylist:\n"
        "    enabled: true\n"
        "    spf_pass_domains:\n"
        "      - example.org\n"
        "  order: [access, greylist, spf]\n",
    )
    # When `config check` builds the services
    result = CliRunner().invoke(main, ["config", "check", "-c", str(cfg)])
    # Then each warning names the line that set the value
    assert result.exit_code == 0, result.output
    assert f"{cfg}:5: warning: policyd.spf.time_budget: 12s is not below" in result.output
    assert f"{cfg}:8: warning: policyd.greylist.spf_pass_domains: has no effect" in result.output


def test_a_file_gone_after_loading_is_reported_at_the_line_naming_it(tmp_path: Path) -> None:
    # Given a config naming files that exist when it loads
    for name in ("clients", "map", "checks"):
        (tmp_path / name).write_text("")
    cfg = write(
        tmp_path,
        "milters:\n"
        "  headers:\n"
        "    header_checks:\n"
        "      - checks\n"
        "policyd:\n"
        "  sender_login:\n"
        "    enabled: true\n"
        "    map_file: map\n"
        "  greylist:\n"
        "    enabled: true\n"
        "    whitelist_clients_files: [clients]\n",
    )
    settings = load_config(cfg)
    # When the files vanish before the services build (a reload, a typo in a deploy)
    for name in ("clients", "map", "checks"):
        (tmp_path / name).unlink()
    problems: list[ConfigProblem] = []
    greylist.build(settings, problems)
    sender_login.build(settings, problems)
    headers.build_from(settings, problems)
    spf.build(settings, problems)
    # Then each problem points at the config line that names the file
    assert [(p.file, p.line, p.key, p.severity) for p in problems] == [
        (str(cfg), 11, "policyd.greylist.whitelist_clients_files[0]", "error"),
        (str(cfg), 8, "policyd.sender_login.map_file", "error"),
        (str(cfg), 4, "milters.headers.header_checks[0]", "error"),
    ]
    assert all("cannot read" in p.message for p in problems)


def test_engines_place_their_problems_with_the_service_context(tmp_path: Path) -> None:
    from milters.context import ServiceContext

    cfg = write(tmp_path, "milters:\n  dkim:\n    enabled: true\n    budget: 5s\n")
    ctx = ServiceContext(load_config(cfg))
    ctx.setting_problem("milters.dkim.budget", "too short for a key fetch", "warning")
    ctx.setting_problem("milters.dkim.keys[0]", "not written: placed at the block")
    assert [str(p) for p in ctx.problems] == [
        f"{cfg}:4: warning: milters.dkim.budget: too short for a key fetch",
        f"{cfg}:2: milters.dkim.keys[0]: not written: placed at the block",
    ]
