"""`postwarden postfix-config` output, pasted verbatim into a real Postfix's
main.cf, carries mail: the printed lines never drift from what works.

The sockets sit where the defaults put them relative to Postfix's queue
directory (`private/` for policyd, `postwarden/` for the milters); the
fixture's queue directory is a temp dir, given with `--queue-dir`, and its
smtpd is not chrooted (`--no-chroot`).
"""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from milters.noop import HEADER as NOOP_HEADER
from postwarden.store.embedded import EmbeddedRedis
from tests.conftest import REPO
from tests.harness.ports import shared_tempdir
from tests.harness.postfix import PostfixInstance, PostfixOptions, Xclient
from tests.harness.services import ServiceProcess, postwarden_argv, service_argv, write_config
from tests.harness.sink import SmtpSink

pytestmark = pytest.mark.integration


def test_postfix_config_lines_pasted_into_main_cf_carry_mail(
    _postfix_available: None,
    sink: SmtpSink,
    redis_server: EmbeddedRedis,
    tmp_path: Path,
) -> None:
    root = shared_tempdir("pw-pc-")
    postfix = PostfixInstance(PostfixOptions(relayhost=sink.relayhost), base_dir=root)
    queue = postfix.queue_dir
    # Given a config whose sockets sit below the queue directory, as shipped
    cfg = write_config(
        tmp_path / "config",
        queue / "postwarden",
        redis_server.socket,
        milters=("noop",),
        overrides={
            "policyd": {
                "socket": f"unix:{queue}/private/postwarden-policy",
                "access": {"rules": [{"recipient": "blocked@example.net", "action": "REJECT no"}]},
            }
        },
    )
    # When its postfix-config output is pasted into main.cf
    printed = subprocess.run(
        [
            *postwarden_argv(),
            "postfix-config",
            "-c",
            str(cfg.path),
            "--no-chroot",
            "--queue-dir",
            str(queue),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    assert f"smtpd_milters = unix:{queue}/postwarden/noop.sock" in printed
    assert (
        "check_policy_service { unix:private/postwarden-policy, default_action=DUNNO }" in printed
    )
    assert "{auth_authen}" in printed and "{daemon_name}" in printed
    postfix.options.main_cf_text = printed
    # reject_unauth_destination in the printed restrictions: the sink's domain
    # is ours to relay, as on a real MX.
    postfix.options.main_cf = {"relay_domains": "example.net"}
    postfix.start()
    try:
        # (the milter socket directory, as deploy/tmpfiles.d makes it)
        (queue / "postwarden").mkdir(mode=0o750)
        os.chown(queue / "postwarden", 0, grp.getgrnam("postfix").gr_gid)
        log_dir = tmp_path / "logs"
        log_dir.mkdir()
        policyd = ServiceProcess(
            service_argv(cfg, "policyd"), cfg.socket("policyd"), log_dir / "policyd.log"
        ).start()
        milter = ServiceProcess(
            service_argv(cfg, "milter", "noop"), cfg.socket("noop"), log_dir / "noop.log"
        ).start()
        try:
            # Then mail from a stranger is filtered by the policy service
            stranger = Xclient(addr="192.0.2.10", name="mx.stranger.test")
            refused = postfix.send(
                "a@stranger.test", "blocked@example.net", xclient=stranger, rcpt_only=True
            )
            assert refused.rcpt_codes() == {"blocked@example.net": 554}, refused.replies
            accepted = postfix.send("a@stranger.test", "bob@example.net", xclient=stranger)
            assert accepted.accepted, accepted.replies
            # and an authenticated user's mail reaches the milter with the
            # macros the printed lines ask for (queue ID, login, client)
            login = Xclient(addr="198.51.100.7", login="alice")
            sent = postfix.send("alice@example.org", "carol@example.net", xclient=login)
            assert sent.accepted, sent.replies
            received = {m.rcpt_tos[0]: m for m in sink.wait_for(2)}
            assert received["bob@example.net"].header(NOOP_HEADER) == accepted.queue_id
            assert received["carol@example.net"].header(NOOP_HEADER) == sent.queue_id
            line = milter.wait_for_log("auth=alice")
            assert f" {sent.queue_id}: " in line and "client=198.51.100.7" in line
        finally:
            milter.stop()
            policyd.stop()
    finally:
        postfix.stop()
        shutil.rmtree(root, ignore_errors=True)
