"""Spam settings: errors name file:line and key; `postwarden scan --json` shows symbols."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from milters.spam.checks.gtube import GTUBE
from postwarden.config.errors import ConfigError
from postwarden.config.load import load_config, load_config_text
from postwarden.config.schema import Settings

REPO = Path(__file__).resolve().parents[4]


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("milters:\n  spam:\n    thresholds:\n      reject: lots\n",
         "pw.yaml:4: milters.spam.thresholds.reject: expected a number"),
        ("milters:\n  spam:\n    symbols:\n      bad-name: {score: 1}\n",
         "pw.yaml:4: milters.spam.symbols.bad-name: 'bad-name' is not a symbol name"),
        ("milters:\n  spam:\n    rules:\n      - {symbol: X_RULE, body: true, match: '(x'}\n",
         "pw.yaml:4: milters.spam.rules[0].match: '(x' is not a valid RE2 pattern"),
        ("milters:\n  spam:\n    dnsbl:\n      zones:\n        - {zone: nodots, symbol: RBL_X}\n",
         "pw.yaml:5: milters.spam.dnsbl.zones[0].zone: 'nodots' is not a DNS zone name"),
        ("milters:\n  spam:\n    oversize: maybe\n", "pw.yaml:3: milters.spam.oversize"),
        ("milters:\n  spam:\n    thresolds: {}\n", "did you mean"),
    ],
)  # fmt: skip
def test_bad_spam_settings_name_file_line_and_key(yaml_text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text(yaml_text, "pw.yaml")
    assert expected in str(err.value)


def test_shipped_file_gives_the_defaults_and_documents_every_spam_key() -> None:
    shipped = load_config(REPO / "deploy" / "postwarden.yaml")
    assert shipped.milters.spam == Settings().milters.spam
    text = (REPO / "deploy" / "postwarden.yaml").read_text(encoding="utf-8")
    block = text.split("\n  spam:\n", 1)[1].split("\n  # Diagnostic milter", 1)[0]
    import dataclasses

    from postwarden.config.sections import spam

    for cls in (spam.SpamMilterSettings, spam.Thresholds, spam.HeaderNames, spam.DnsblSettings,
                spam.Zone):  # fmt: skip
        for f in dataclasses.fields(cls):
            assert f"{f.name}:" in block, (
                f"{cls.__name__}.{f.name} is not in deploy/postwarden.yaml"
            )


def test_scan_json_shows_the_spam_verdict_headers_and_symbols(tmp_path: Path) -> None:
    cfg = tmp_path / "pw.yaml"
    cfg.write_text(f"state_dir: {tmp_path}\nmilters:\n  spam:\n    dnsbl: {{enabled: false}}\n")
    msg = tmp_path / "gtube.eml"
    msg.write_bytes(b"From: a@example.org\r\nSubject: t\r\n\r\n" + GTUBE + b"\r\n")
    out = subprocess.run(
        [sys.executable, "-m", "postwarden", "scan", "--json", "-c", str(cfg), str(msg)],
        capture_output=True, text=True, cwd=REPO, check=True,
    ).stdout  # fmt: skip
    result = json.loads(out)
    assert result["action"] == "reject"
    spam = result["milters"]["spam"]
    assert spam["action"] == "reject" and spam["reply"].startswith("550 5.7.1")
    assert {"op": "add", "name": "X-Spam-Flag", "value": "YES"} in spam["headers"]
    assert result["symbols"]["GTUBE"]["score"] == 1000.0
    assert result["symbols"]["MISSING_MID"]["description"]
