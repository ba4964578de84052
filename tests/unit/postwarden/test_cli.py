"""The `postwarden` command line, in process (click's runner) and as shipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from postwarden.cli import main
from tests.conftest import REPO


def write(tmp: Path, text: str) -> str:
    path = tmp / "pw.yaml"
    path.write_text(text)
    return str(path)


def test_config_check_prints_a_summary_and_exits_0(tmp_path: Path) -> None:
    cfg = write(tmp_path, "policyd:\n  socket: inet:127.0.0.1:9904\n")
    result = CliRunner().invoke(main, ["config", "check", "-c", cfg])
    assert result.exit_code == 0, result.output
    assert f"{cfg}: OK" in result.output
    assert "embedded redis-server" in result.output
    assert "policyd             enabled  inet:127.0.0.1:9904" in result.output


def test_config_check_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    cfg = write(tmp_path, "redis:\n  urll: x\npolicyd:\n  on_error: maybe\n")
    result = CliRunner().invoke(main, ["config", "check", "-c", cfg])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[0].startswith(f"{cfg}:2: redis.urll: unknown key; did you mean 'url'?")
    assert lines[1].startswith(f"{cfg}:4: policyd.on_error: expected one of accept, tempfail")


def test_config_check_refuses_a_redis_url_the_services_cannot_parse(tmp_path: Path) -> None:
    cfg = write(
        tmp_path, 'state_dir: /tmp\nredis:\n  url: "redis://:s3cret@127.0.0.1:notaport/0"\n'
    )
    result = CliRunner().invoke(main, ["config", "check", "-c", cfg])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"{cfg}:3: redis.url: 'redis://:***@127.0.0.1:notaport/0'")
    assert "s3cret" not in result.output


def test_config_check_summary_masks_the_redis_password(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'redis:\n  url: "redis://:s3cret@127.0.0.1:6379/0"\n')
    result = CliRunner().invoke(main, ["config", "check", "-c", cfg])
    assert result.exit_code == 0, result.output
    assert "redis: redis://:***@127.0.0.1:6379/0" in result.output
    assert "s3cret" not in result.output


def test_config_check_on_a_fifo_fails_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "pw.yaml"
    os.mkfifo(fifo)
    out = subprocess.run(
        [sys.executable, "-m", "postwarden", "config", "check", "-c", str(fifo)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,  # "did not hang"
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr == f"{fifo}: cannot read config: a FIFO, not a regular file\n"


def test_config_file_comes_from_the_environment(tmp_path: Path) -> None:
    cfg = write(tmp_path, "state_dir: /tmp/x\n")
    result = CliRunner().invoke(main, ["config", "check"], env={"POSTWARDEN_CONFIG": cfg})
    assert result.exit_code == 0
    assert f"{cfg}: OK" in result.output


def test_scan_json_has_the_documented_shape(tmp_path: Path) -> None:
    cfg = write(tmp_path, "milters:\n  noop: {enabled: true}\n")
    msg = tmp_path / "m.eml"
    msg.write_bytes(b"From sender@example.org Mon Jan 1 00:00:00 2024\nSubject: hi\n\nbody\n")
    result = CliRunner().invoke(
        main,
        [
            "scan",
            "-c",
            cfg,
            "--json",
            "--from",
            "a@example.org",
            "--rcpt",
            "b@example.net",
            "--ip",
            "192.0.2.1",
            str(msg),
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert set(out) == {"file", "action", "score", "required_score", "symbols", "milters"}
    assert out["file"] == str(msg)
    assert out["milters"]["noop"]["action"] == "accept"
    assert out["milters"]["noop"]["headers"] == [
        {"op": "add", "name": "X-Postwarden-Noop", "value": "SCAN"}
    ]


def test_scan_reads_stdin(tmp_path: Path) -> None:
    cfg = write(tmp_path, "milters:\n  noop: {enabled: true}\n")
    result = CliRunner().invoke(main, ["scan", "-c", cfg, "-"], input=b"Subject: x\n\nhi\n")
    assert result.exit_code == 0
    assert result.output.startswith("-: accept")


def test_scan_refuses_a_bad_ip(tmp_path: Path) -> None:
    cfg = write(tmp_path, "")
    result = CliRunner().invoke(main, ["scan", "-c", cfg, "--ip", "nope", "-"], input=b"")
    assert result.exit_code == 2
    assert "not an IP address: nope" in result.output


def test_postfix_config_prints_chroot_relative_sockets(tmp_path: Path) -> None:
    cfg = write(tmp_path, "milters:\n  attachments: {enabled: false}\n  noop: {enabled: true}\n")
    result = CliRunner().invoke(main, ["postfix-config", "-c", cfg])
    assert result.exit_code == 0
    assert (
        "smtpd_milters = unix:/postwarden/headers.sock unix:/postwarden/dkim.sock"
        " unix:/postwarden/noop.sock\n"
    ) in result.output
    # Milters this version does not ship are never pointed at.
    assert "left out: spam" in result.output
    assert "check_policy_service { unix:private/postwarden-policy, default_action=DUNNO }" in (
        result.output
    )


def test_postfix_config_asks_postfix_for_the_macros_the_milters_read(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["postfix-config", "-c", write(tmp_path, "")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # Postfix's defaults plus what the adapter reads ({client_addr} is not a default).
    assert "milter_connect_macros = j {daemon_name} {daemon_addr} v _ {client_addr}" in "\n".join(
        lines
    )
    assert any(
        line.startswith("milter_mail_macros = i ") and "{auth_authen}" in line for line in lines
    )
    assert "milter_end_of_data_macros = i" in lines
    assert "smtpd_policy_service_timeout = 100s" in lines


def test_postfix_config_policy_wait_and_end_of_data_follow_the_config(tmp_path: Path) -> None:
    counts_messages = (
        "policyd:\n  request_timeout: 120s\n  ratelimit:\n    enabled: true\n"
        "    rules:\n      - {count: messages, windows: [{limit: 10, per: 1h}]}\n"
    )
    result = CliRunner().invoke(main, ["postfix-config", "-c", write(tmp_path, counts_messages)])
    assert result.exit_code == 0, result.output
    assert "smtpd_policy_service_timeout = 130s" in result.output.splitlines()
    assert "smtpd_end_of_data_restrictions" not in result.output
    counts_bytes = counts_messages.replace("count: messages", "count: bytes, key: client_address")
    result = CliRunner().invoke(main, ["postfix-config", "-c", write(tmp_path, counts_bytes)])
    assert result.exit_code == 0, result.output
    assert "smtpd_end_of_data_restrictions = check_policy_service" in result.output


def test_installed_entry_point_starts() -> None:
    # The shipped console script and `python -m postwarden` both work
    # (spf-engine once needed a distro patch before its script would start).
    out = subprocess.run(
        [sys.executable, "-m", "postwarden", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    for command in ("run", "milter", "policyd", "config", "scan", "stat", "postfix-config"):
        assert f"  {command}" in out.stdout
