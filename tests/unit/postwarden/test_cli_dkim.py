"""`postwarden dkim keygen|check-dns|rotate`."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from postwarden.cli import main
from postwarden.dkim_keys import (
    dns_record,
    generate_key,
    read_private_key,
    record_problems,
    write_private_key,
)
from tests.fixtures.dnsserver import DnsServer

KEY = generate_key("rsa-sha256")
OTHER = generate_key("rsa-sha256")


def _keygen(tmp_path: Path, *args: str) -> tuple[str, Path]:
    result = CliRunner().invoke(
        main,
        ["dkim", "keygen", "--domain", "example.org", "--selector", "s1",
         "--directory", str(tmp_path), *args],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output, tmp_path / "example.org.s1.key"


def _record_strings(output: str) -> list[str]:
    [line] = [x for x in output.splitlines() if " IN TXT " in x]
    return re.findall(r'"([^"]*)"', line)


def test_keygen_writes_a_0600_key_and_prints_its_record_in_255_byte_strings(
    tmp_path: Path,
) -> None:
    output, path = _keygen(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = read_private_key(path, "rsa-sha256")
    strings = _record_strings(output)
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    assert "s1._domainkey.example.org. IN TXT" in output
    assert record_problems("".join(strings), key) == []


def test_keygen_ed25519_record_fits_one_string(tmp_path: Path) -> None:
    output, path = _keygen(tmp_path, "--algorithm", "ed25519")
    key = read_private_key(path, "ed25519-sha256")
    [text] = _record_strings(output)
    assert text.startswith("v=DKIM1; k=ed25519; p=")
    assert record_problems(text, key) == []


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    _keygen(tmp_path)
    again = CliRunner().invoke(
        main,
        ["dkim", "keygen", "--domain", "example.org", "--selector", "s1",
         "--directory", str(tmp_path)],
    )  # fmt: skip
    assert again.exit_code == 73
    assert "exists already" in again.output


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    zone = {
        "s1._domainkey.example.org": [("TXT", dns_record("example.org", "s1", KEY).value)],
        "s2._domainkey.example.org": [("TXT", dns_record("example.org", "s2", OTHER).value)],
        "gone._domainkey.example.org": [("TXT", "v=DKIM1; k=rsa; p=")],
    }
    with DnsServer(zone) as server:
        yield server


def _config(tmp_path: Path, server: DnsServer) -> str:
    key_file = tmp_path / "k.pem"
    if not key_file.exists():
        write_private_key(key_file, KEY)
    cfg = tmp_path / "pw.yaml"
    cfg.write_text(
        f"dns: {{nameservers: ['{server.nameserver}'], timeout: 1s}}\n"
        "milters:\n  dkim:\n    keys:\n"
        f"      - {{domain: example.org, selector: s1, key_file: {key_file}}}\n"
        f"      - {{domain: example.org, selector: s2, key_file: {key_file}}}\n"
        f"      - {{domain: example.org, selector: gone, key_file: {key_file}}}\n"
        f"      - {{domain: example.org, selector: absent, key_file: {key_file}}}\n"
    )
    return str(cfg)


@pytest.mark.parametrize(
    ("selector", "status", "text"),
    [
        ("s1", 0, "OK, DNS publishes the key"),
        ("s2", 65, "different public key"),
        ("gone", 65, "revoked"),
        ("absent", 65, "no TXT record is published"),
    ],
)
def test_check_dns_compares_the_record_with_the_key_file(
    tmp_path: Path, dns_server: DnsServer, selector: str, status: int, text: str
) -> None:
    cfg = _config(tmp_path, dns_server)
    result = CliRunner().invoke(main, ["dkim", "check-dns", "-c", cfg, "example.org", selector])
    assert result.exit_code == status, result.output
    assert text in result.output


def test_rotate_prints_the_steps_with_a_new_selector(tmp_path: Path, dns_server: DnsServer) -> None:
    cfg = _config(tmp_path, dns_server)
    result = CliRunner().invoke(main, ["dkim", "rotate", "-c", cfg, "example.org"])
    assert result.exit_code == 0
    assert "postwarden dkim keygen --domain example.org --selector s" in result.output
    assert "not_before:" in result.output


def test_scan_authenticated_signs_as_the_milter_would(tmp_path: Path) -> None:
    key_file = tmp_path / "k.pem"
    write_private_key(key_file, KEY)
    cfg = tmp_path / "pw.yaml"
    cfg.write_text(
        "milters:\n  headers: {enabled: false}\n  dkim:\n    authserv_id: mx.example.net\n"
        f"    keys: [{{domain: example.org, selector: s1, key_file: {key_file}}}]\n"
    )
    message = b"From: alice@example.org\nTo: bob@example.net\nSubject: hi\n\nhello\n"
    result = CliRunner().invoke(
        main,
        ["scan", "-c", str(cfg), "--json", "--authenticated", "alice",
         "--from", "alice@example.org", "-"],
        input=message,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    dkim = out["milters"]["dkim"]
    assert dkim["reason"] == "signed d=example.org s=s1 a=rsa-sha256"
    [edit] = dkim["headers"]
    assert (edit["op"], edit["name"]) == ("insert", "DKIM-Signature")
    assert "d=example.org;" in edit["value"]
