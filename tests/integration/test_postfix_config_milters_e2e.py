"""`postwarden postfix-config` output, pasted verbatim into a real Postfix (issue 15).

The printed main.cf lines are the only Postfix settings for milters and the
policy service here: if they drift from what works (a socket, the milter
order, a macro the milters read), mail stops flowing or loses its headers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postwarden.cli.postfix_config import POSTFIX_DEFAULT_MACROS
from tests.fixtures import probe_milter
from tests.harness.postfix import PostfixInstance, Xclient, make_message
from tests.harness.services import ServiceConfig, ServiceProcess, postwarden_argv
from tests.harness.sink import SmtpSink

POSTCONF = shutil.which("postconf", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/postconf"
PostfixFactory = Callable[..., PostfixInstance]
ConfigFactory = Callable[..., ServiceConfig]
ServiceFactory = Callable[..., ServiceProcess]


def printed_main_cf(config: ServiceConfig) -> dict[str, str]:
    """`postfix-config` output as main.cf parameters (continuation lines joined)."""
    done = subprocess.run(
        [*postwarden_argv(), "postfix-config", "-c", str(config.path), "--no-chroot"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    params: dict[str, str] = {}
    last = ""
    for line in done.stdout.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t":
            params[last] = f"{params[last]} {line.strip()}".strip()
            continue
        name, sep, value = line.partition("=")
        assert sep, f"not a main.cf line: {line!r}"
        last = name.strip()
        params[last] = value.strip()
    return params


@pytest.fixture
def probe(tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for s in started:
        s.stop()


def test_printed_lines_run_a_real_postfix_with_every_service(
    tmp_path: Path,
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    postwarden_service: ServiceFactory,
    probe: list[ServiceProcess],
    sink: SmtpSink,
) -> None:
    table = tmp_path / "header_checks"
    table.write_text("/^X-Tag: (.*)/ PREPEND X-Tagged: seen $1\n")
    config = postwarden_config(
        milters=("headers", "noop"),
        checks=("access",),
        overrides={"milters": {"headers": {"header_checks": [str(table)]}}},
    )
    postwarden_service(config, "milter", "headers")
    postwarden_service(config, "policyd")
    # The probe serves the noop milter's socket and reports the macros it got.
    logs = tmp_path / "probe-logs"
    logs.mkdir()
    service = ServiceProcess(
        argv=[sys.executable, "-c", probe_milter.LAUNCH, "milter", "noop", "-c", str(config.path)],
        socket=config.socket("noop"),
        log_path=logs / "noop.log",
    )
    probe.append(service)
    service.start()

    main_cf = printed_main_cf(config)
    assert main_cf["smtpd_milters"] == f"{config.socket('headers')} {config.socket('noop')}"
    postfix = postfix_factory(main_cf=main_cf)
    data = make_message(
        subject="pasted", extra_headers={"X-Tag": "blue", probe_milter.WANT_MACROS: "yes"}
    )
    result = postfix.send(
        "alice@example.org", "bob@example.net", data, xclient=Xclient(login="alice")
    )
    assert result.accepted, result.replies
    [received] = sink.wait_for(1)
    # Both milters ran, in the printed order: the probe saw headers' PREPEND.
    assert received.header("X-Tagged") == "seen blue"
    assert "X-Tagged=seen blue, X-Tag=blue" in (received.header(probe_milter.SAW_HEADER) or "")
    # The macros the adapter reads arrived.
    macros = dict(
        item.split("=", 1)
        for item in (received.header(probe_milter.MACROS_HEADER) or "").split("; ")
    )
    assert macros["client_addr"] == "127.0.0.1"
    assert macros["auth_authen"] == "alice"
    assert macros["i"] == result.queue_id
    assert macros.get("daemon_name")
    # And Postfix had nothing to complain about (milters, policy service).
    log = postfix.log_text()
    assert "warning" not in log.lower(), postfix.log_tail()


def test_the_default_macro_lists_are_postfix_own() -> None:
    done = subprocess.run(
        [POSTCONF, "-d", *POSTFIX_DEFAULT_MACROS],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    defaults = dict(line.split(" = ", 1) for line in done.stdout.splitlines())
    assert defaults == POSTFIX_DEFAULT_MACROS
