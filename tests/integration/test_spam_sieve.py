"""contrib/dovecot/spam-threshold.sieve under Dovecot's own Sieve interpreter.

`sieve-test` (dovecot-sieve) runs the shipped script on messages carrying
the headers the spam milter writes and prints where each would be filed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness.ports import shared_tempdir

SCRIPT = Path(__file__).resolve().parents[2] / "contrib" / "dovecot" / "spam-threshold.sieve"
SIEVE_TEST = "/usr/bin/sieve-test"


def filed_into(headers: str) -> str:
    if not os.path.exists(SIEVE_TEST):
        pytest.fail("sieve-test is missing: apt-get install dovecot-sieve (./dev test does)")
    tmp_path = shared_tempdir("pw-sieve-")  # reachable by the unprivileged mail user
    try:
        return _run(tmp_path, headers)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _run(tmp_path: Path, headers: str) -> str:
    tmp_path.chmod(0o777)
    script = tmp_path / "spam-threshold.sieve"
    shutil.copy(SCRIPT, script)
    script.chmod(0o644)
    message = tmp_path / "msg.eml"
    message.write_bytes(f"From: a@example.org\r\nSubject: s\r\n{headers}\r\nbody\r\n".encode())
    message.chmod(0o644)
    argv = [SIEVE_TEST, "-o", "mail_uid=nobody", "-o", "mail_gid=nogroup",
            str(script), str(message)]  # fmt: skip
    if os.geteuid() != 0:
        argv = argv[:1] + argv[5:]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    actions = out.split("Performed actions:", 1)[1]
    return "Junk" if "folder: Junk" in actions else "INBOX"


@pytest.mark.parametrize(
    ("headers", "folder"),
    [
        ("X-Spam-Score: 7.30\r\n", "Junk"),
        ("X-Spam-Score: 5.00\r\n", "Junk"),
        ("X-Spam-Score: 4.90\r\n", "INBOX"),
        ("X-Spam-Score: -2.00\r\n", "INBOX"),
        ("X-Spam-Score: 1.00\r\nX-Spam: Yes\r\n", "Junk"),
        ("", "INBOX"),
    ],
)
def test_per_user_threshold_files_by_x_spam_score(headers: str, folder: str) -> None:
    assert filed_into(headers) == folder
