"""What an operator sees: /metrics, `postwarden stat`, JSON decision logs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.harness.metrics import scrape
from tests.harness.ports import free_port
from tests.integration.test_supervisor import connects, policy_answer, wait_until

CONFIG = """\
state_dir: {tmp}/state
# as root in a 0700 tmp dir, no Postfix: stay root, owner-only sockets
privileges: {{user: null, allow_root: true, socket_group: null}}
log: {{format: json}}
metrics: {{enabled: true, listen: "127.0.0.1:{port}"}}
milters:
  headers: {{enabled: false}}
  attachments: {{enabled: false}}
  dkim: {{enabled: false}}
  spam: {{enabled: false}}
policyd:
  socket: "unix:{tmp}/policy.sock"
  access:
    rules:
      - {{recipient: "blocked@example.net", action: "REJECT no"}}
"""


def stat_json(cfg: Path) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-m", "postwarden", "stat", "--json", "-c", str(cfg)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return dict(json.loads(out.stdout))


@pytest.mark.integration
def test_metrics_stat_and_json_logs_report_policy_decisions(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "pw.yaml"
    cfg.write_text(CONFIG.format(tmp=tmp_path, port=port))
    log = tmp_path / "run.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "postwarden", "run", "-c", str(cfg)],
            cwd=REPO,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        sock = str(tmp_path / "policy.sock")
        wait_until(lambda: connects(sock), "policyd socket")
        assert policy_answer(sock, "blocked@example.net") == b"action=554 5.7.1 no\n\n"
        assert policy_answer(sock, "fine@example.net") == b"action=DUNNO\n\n"

        reject = ("postwarden_policyd_requests_total", (("action", "REJECT"),))
        dunno = ("postwarden_policyd_requests_total", (("action", "DUNNO"),))
        wait_until(lambda: scrape(port).get(reject) == 1.0, "REJECT counted in /metrics")
        assert scrape(port)[dunno] == 1.0

        wait_until(lambda: stat_json(cfg).get("policyd.reject") == 1, "stat counter flushed")
        stats = stat_json(cfg)
        assert stats["policyd.dunno"] == 1
        assert stats["access.reject"] == 1

        decisions = [
            json.loads(line)
            for line in log.read_text().splitlines()
            if line.startswith("{") and '"decision' in line
        ]
        rejected = [d for d in decisions if d.get("action") == "554 5.7.1 no"]
        assert rejected and rejected[0]["check"] == "access"
        assert rejected[0]["to"] == "<blocked@example.net>"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
