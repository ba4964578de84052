"""`systemctl reload postwarden` (SIGHUP to `postwarden run`) while Postfix
is handing it mail: every message is accepted and delivered, none is lost or
deferred."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from milters.noop import HEADER as NOOP_HEADER
from tests.harness.ports import wait_for_unix_socket
from tests.harness.postfix import PostfixInstance, SmtpResult, Xclient
from tests.harness.services import ServiceConfig, start_supervisor
from tests.harness.sink import SmtpSink

pytestmark = pytest.mark.integration

MESSAGES = 40
RELOADS = 3


def test_sighup_while_mail_flows_loses_nothing(
    postfix_factory: Callable[..., PostfixInstance],
    postwarden_config: Callable[..., ServiceConfig],
    sink: SmtpSink,
    tmp_path: Path,
) -> None:
    cfg = postwarden_config(milters=("noop",), checks=("access",))
    supervisor = start_supervisor(cfg, tmp_path / "run.log")
    try:
        wait_for_unix_socket(Path(cfg.socket("noop").removeprefix("unix:")), 30)
        postfix = postfix_factory(
            smtpd_milters=[cfg.socket("noop")], policy_services=[cfg.socket("policyd")]
        )
        results: list[SmtpResult] = []
        client = Xclient(addr="192.0.2.44", name="mx.sender.test")

        def send_all() -> None:
            for i in range(MESSAGES):
                results.append(
                    postfix.send(f"s{i}@sender.test", f"r{i}@example.net", xclient=client)
                )

        sender = threading.Thread(target=send_all)
        sender.start()
        # Each reload lands while messages are in flight: after the sink has
        # seen more mail, and before the sender is done.
        for n in range(1, RELOADS + 1):
            sink.wait_for(n * MESSAGES // (RELOADS + 2))
            mark = len(supervisor.log_text())
            supervisor.send_signal(signal.SIGHUP)
            supervisor.wait_for_log("config reloaded", start=mark)
        sender.join(300)
        assert not sender.is_alive()
        assert supervisor.alive()
        # Every message was accepted at once (no 4xx from a reloading
        # service) and delivered with the milter's header.
        assert [r.accepted for r in results] == [True] * MESSAGES, [
            r.last for r in results if not r.accepted
        ]
        delivered = sink.wait_for(MESSAGES)
        assert len(delivered) == MESSAGES
        assert {m.header(NOOP_HEADER) for m in delivered} == {r.queue_id for r in results}
        assert supervisor.log_text().count("config reloaded") == RELOADS
    finally:
        supervisor.stop()
