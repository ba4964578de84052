"""`postwarden config check` says which protections the config turns on."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from postwarden.cli import main
from tests.conftest import REPO


def check(path: Path) -> list[str]:
    result = CliRunner().invoke(main, ["config", "check", "-c", str(path)])
    assert result.exit_code == 0, result.output
    return [line.strip() for line in result.output.splitlines()]


def test_shipped_config_protects_with_spf_and_leaves_greylisting_and_limits_off() -> None:
    lines = check(REPO / "deploy" / "postwarden.yaml")
    assert "protections:" in lines
    assert (
        "SPF                 on: fail -> reject, temperror -> defer,"
        " others -> prepend (Received-SPF)"
    ) in lines
    assert "greylisting         off" in lines
    assert "rate limits         off" in lines
    assert "milter headers      on, on_error accept" in lines


def test_warn_mode_and_changed_spf_actions_are_spelled_out(tmp_path: Path) -> None:
    cfg = tmp_path / "pw.yaml"
    cfg.write_text(
        "policyd:\n"
        "  greylist: {enabled: true, mode: warn, delay: 2m}\n"
        "  spf: {mailfrom_actions: {softfail: reject}}\n"
        "  access: {rules: [{sender: '@spam.example', action: REJECT}]}\n"
        "milters:\n"
        "  headers: {enabled: false}\n"
    )
    lines = check(cfg)
    assert "access rules        on, 1 rule(s)" in lines
    assert any(line.startswith("SPF                 on: fail/softfail -> reject") for line in lines)
    assert "greylisting         on: delay 120s (warn only: logs and tags, never refuses)" in lines
    assert "milter headers      off" in lines
