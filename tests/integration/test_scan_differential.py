"""`postwarden scan --json` and real Postfix agree (issue 9, "Done when").

Each configuration below is served to a real Postfix (tests/harness) by the
real milter processes, in smtpd_milters order, and the same configuration is
given to `postwarden scan --json`. Every message goes through both, and the
test asserts the same final action, the same SMTP reply, and the same header
edits: what the sink received is the original message plus exactly the
edits scan reports (Postfix's own Received: header aside).

What a later milter sees of an earlier one's edits was established here
against Postfix: with two headers milters in a row, the second one saw a
header the first PREPENDed (inserted), a header it REPLACEd (with the new
value), a header it added in warn mode, and not a header it IGNOREd
(deleted). `milters.pipeline.scan` gives later milters the same view; the
probe milter (tests/fixtures/probe_milter.py, served in noop's place) lists
the headers it saw, in order, so that view is compared too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from milters import pipeline
from milters.context import ServiceContext
from milters.message import Envelope, Message
from milters.pipeline import Runner
from milters.service import build_stage
from postwarden.config import load_config
from tests.fixtures import probe_milter
from tests.harness.postfix import PostfixInstance, SmtpResult, make_message
from tests.harness.services import ServiceConfig, ServiceProcess, postwarden_argv
from tests.harness.sink import SmtpSink

PostfixFactory = Callable[..., PostfixInstance]
ConfigFactory = Callable[..., ServiceConfig]
ServiceFactory = Callable[..., ServiceProcess]

MAIL_FROM = "alice@example.org"
RCPT = "bob@example.net"
MAX_BODY = 256

TABLE = [
    "/^Subject: reject me/   REJECT 5.7.1 Rejected by the header rule",
    "/^X-Tag: (.*)/          PREPEND X-Tagged: seen $1",
    "/^X-Chg: (.*)/          REPLACE X-Chg: changed $1",
    "/^X-Drop:/              IGNORE",
]
BODY_TABLE = ["/^forbidden words/      REJECT 5.7.1 Body rule hit"]
# A YAML rule on trial: it would reject, so it only adds the warn header.
TRIAL_RULE = {
    "name": "trial",
    "header": "X-Trial",
    "match": ".",
    "action": "REJECT",
    "mode": "warn",
}


@dataclass(frozen=True)
class Case:
    """One message and the action both front ends must agree on."""

    name: str
    expect: str
    subject: str = "differential"
    extra: Mapping[str, str] = field(default_factory=dict)
    body: str = "Hello.\r\n"


FILLER = "".join(f"filler line {n:03d} of a body longer than the cap\r\n" for n in range(20))
PLAIN = Case("plain", "accept")
REJECT = Case("reject", "reject", subject="reject me")
EDITS = Case("edits", "add_header", extra={"X-Tag": "blue", "X-Chg": "one", "X-Drop": "gone"})
TRIAL = Case("trial-rule", "add_header", extra={"X-Trial": "yes"})
BODY_HIT = Case("body-within-cap", "reject", body="forbidden words\r\n")
TRUNCATED = Case("body-past-cap", "accept", body=FILLER + "forbidden words\r\n")
RAISES = Case("engine-raises", "tempfail", extra={probe_milter.RAISE_HEADER: "1"})
RAISES_ACCEPTED = Case("engine-raises", "accept", extra={probe_milter.RAISE_HEADER: "1"})


def warned(case: Case) -> Case:
    """The case under `mode: warn`: the would-be action becomes a header."""
    return replace(case, expect="add_header")


@dataclass(frozen=True)
class Setup:
    """A configuration: milters served, their settings, the messages sent."""

    name: str
    headers: Mapping[str, Any]
    cases: Sequence[Case]
    noop: str = "noop"  # "noop" (the real one) or "probe" (in noop's place)
    noop_settings: Mapping[str, Any] = field(default_factory=dict)
    # Milters on loopback TCP instead of unix sockets (there the adapter
    # also answers DATA, so its reply carries the ACK Postfix waits for).
    inet: bool = False


SETUPS = [
    Setup(
        "enforce+noop",
        {"rules": [TRIAL_RULE]},
        [PLAIN, REJECT, EDITS, TRIAL, BODY_HIT, TRUNCATED],
    ),
    Setup("warn+noop", {"mode": "warn"}, [warned(REJECT), EDITS, warned(BODY_HIT)]),
    Setup(
        "enforce+probe-over-tcp",
        {"rules": [TRIAL_RULE]},
        [PLAIN, REJECT, EDITS, TRUNCATED, RAISES],
        noop="probe",
        noop_settings={"on_error": "tempfail"},
        inet=True,
    ),
    Setup(
        "enforce+probe",
        {"rules": [TRIAL_RULE]},
        [PLAIN, REJECT, EDITS, TRIAL, RAISES],
        noop="probe",
        noop_settings={"on_error": "tempfail"},
    ),
    Setup(
        "warn+probe-on-error-accept",
        {"mode": "warn"},
        [EDITS, warned(REJECT), RAISES_ACCEPTED],
        noop="probe",
        noop_settings={"on_error": "accept"},
    ),
]


def probe_argv() -> list[str]:
    return [sys.executable, "-c", probe_milter.LAUNCH]


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    services: list[ServiceProcess] = []
    yield services
    for s in reversed(services):
        s.stop()


def serve(
    services: list[ServiceProcess], config: ServiceConfig, name: str, argv: list[str], logs: Path
) -> None:
    logs.mkdir(exist_ok=True)
    service = ServiceProcess(
        argv=[*argv, "milter", name, "-c", str(config.path)],
        socket=config.socket(name),
        log_path=logs / f"{name}.log",
    )
    services.append(service)
    service.start()


def scan_json(config: ServiceConfig, argv: list[str], files: list[Path]) -> dict[str, Any]:
    done = subprocess.run(
        [
            *argv,
            "scan",
            "--json",
            "-c",
            str(config.path),
            "--from",
            MAIL_FROM,
            "--rcpt",
            RCPT,
            "--ip",
            "127.0.0.1",
            "--helo",
            "client.test",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {Path(o["file"]).stem: o for o in out}


def headers_of(raw: bytes) -> list[tuple[str, str]]:
    """(name, unfolded value) pairs, as a milter would see them."""
    return [(h.name, " ".join(h.value.split())) for h in Message.from_bytes(raw).headers]


def expected_headers(
    original: bytes, scanned: Mapping[str, Any], queue_id: str
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The original headers with scan's edits applied, and the added ones in order.

    scan --json gives each edit as {op, name, value}; every test message has
    one header of each edited name, so changes apply to the first one.
    Inserted headers are checked as present (the probe checks positions).
    """
    headers = headers_of(original)
    added: list[tuple[str, str]] = []
    for milter, entry in scanned["milters"].items():
        for e in entry.get("headers", []):
            value = " ".join(e["value"].split())
            if milter == "noop" and e["name"] == "X-Postwarden-Noop":
                value = queue_id  # scan has no queue ID; it says SCAN
            at = next((i for i, (n, _) in enumerate(headers) if n.lower() == e["name"].lower()), -1)
            if e["op"] == "add":
                added.append((e["name"], value))
            elif e["op"] == "insert":
                headers.insert(0, (e["name"], value))
            elif e["op"] == "change" and at >= 0:
                headers[at] = (headers[at][0], value)
            elif e["op"] == "delete" and at >= 0:
                del headers[at]
    return headers + added, added


def delivered_headers(raw: bytes) -> list[tuple[str, str]]:
    """What the sink got, without the Received: header Postfix itself adds."""
    headers = headers_of(raw)
    first = next(i for i, (n, _) in enumerate(headers) if n.lower() == "received")
    return headers[:first] + headers[first + 1 :]


def compare(
    case: Case, raw: bytes, smtp: SmtpResult, scanned: Mapping[str, Any], sink: SmtpSink
) -> None:
    action = scanned["action"]
    assert action == case.expect, (case.name, scanned)
    if action in ("reject", "tempfail"):
        deciding = [m for m in scanned["milters"].values() if m["action"] == action]
        assert deciding, scanned
        # The client sees exactly the reply scan reports.
        assert f"{smtp.code('data')} {smtp.text('data')}" == deciding[0]["reply"], (
            case.name,
            smtp.replies,
        )
        return
    assert smtp.accepted, (case.name, smtp.replies)
    assert smtp.queue_id is not None
    message_id = Message.from_bytes(raw).message_id
    [received] = [m for m in sink.messages if Message.from_bytes(m.raw).message_id == message_id]
    got = delivered_headers(received.raw)
    want, added = expected_headers(raw, scanned, smtp.queue_id)
    assert Counter(got) == Counter(want), (case.name, got, want)
    if added:
        assert got[-len(added) :] == added, (case.name, got)


@pytest.mark.parametrize("setup", SETUPS, ids=[s.name for s in SETUPS])
def test_scan_and_postfix_agree(
    setup: Setup,
    tmp_path: Path,
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    started: list[ServiceProcess],
    sink: SmtpSink,
) -> None:
    table = tmp_path / "header_checks"
    table.write_text("\n".join(TABLE) + "\n")
    body = tmp_path / "body_checks"
    body.write_text("\n".join(BODY_TABLE) + "\n")
    config = postwarden_config(
        milters=("headers", "noop"),
        inet=("headers", "noop") if setup.inet else (),
        overrides={
            "milters": {
                "headers": {
                    "header_checks": [str(table)],
                    "body_checks": [str(body)],
                    "max_body_size": MAX_BODY,
                    **setup.headers,
                },
                "noop": dict(setup.noop_settings),
            }
        },
    )
    noop_argv = probe_argv() if setup.noop == "probe" else postwarden_argv()
    logs = tmp_path / "service-logs"
    serve(started, config, "headers", postwarden_argv(), logs)
    serve(started, config, "noop", noop_argv, logs)
    postfix = postfix_factory(smtpd_milters=[config.socket("headers"), config.socket("noop")])

    messages: dict[str, bytes] = {}
    results: dict[str, SmtpResult] = {}
    files: list[Path] = []
    delivered = 0
    for case in setup.cases:
        raw = make_message(
            subject=case.subject,
            body=case.body,
            extra_headers=case.extra,
            message_id=f"{case.name}.{setup.name}@example.org",
        )
        path = tmp_path / f"{case.name}.eml"
        path.write_bytes(raw)
        files.append(path)
        messages[case.name] = raw
        results[case.name] = smtp = postfix.send(MAIL_FROM, RCPT, raw)
        if smtp.accepted:
            delivered += 1
            sink.wait_for(delivered)
    scanned = scan_json(config, noop_argv, files)
    for case in setup.cases:
        compare(case, messages[case.name], results[case.name], scanned[case.name], sink)


# Two headers milters in a row: the second rejects whatever of the first's
# edits it can see. This is the experiment the module docstring reports.
FIRST = [
    "/^X-Tag: (.*)/   PREPEND X-Tagged: seen $1",
    "/^X-Chg: (.*)/   REPLACE X-Chg: changed $1",
    "/^X-Drop:/       IGNORE",
]
SECOND = [
    "/^X-Tagged:/            REJECT 5.7.1 second milter saw the prepended header",
    "/^X-Postwarden-Warn:/   REJECT 5.7.1 second milter saw the warn header",
    "/^X-Chg: changed/       REJECT 5.7.1 second milter saw the replaced value",
    "/^X-Drop:/              REJECT 5.7.1 second milter saw the ignored header",
]
CHAIN = [
    ("prepend", {"X-Tag": "blue"}, 550, "5.7.1 second milter saw the prepended header"),
    ("warn", {"X-Trial": "yes"}, 550, "5.7.1 second milter saw the warn header"),
    ("replace", {"X-Chg": "one"}, 550, "5.7.1 second milter saw the replaced value"),
    ("ignore", {"X-Drop": "gone"}, 250, ""),
]


def test_a_later_milter_sees_an_earlier_milters_edits_in_postfix_and_in_scan(
    tmp_path: Path,
    socket_dir: Path,
    postfix_factory: PostfixFactory,
    postwarden_config: ConfigFactory,
    started: list[ServiceProcess],
) -> None:
    configs = []
    for label, lines, extra in (("first", FIRST, {"rules": [TRIAL_RULE]}), ("second", SECOND, {})):
        table = tmp_path / f"{label}.checks"
        table.write_text("\n".join(lines) + "\n")
        block = {"header_checks": [str(table)], "socket": f"unix:{socket_dir}/{label}.sock"}
        configs.append(
            postwarden_config(
                milters=("headers",),
                name=f"{label}.yaml",
                overrides={"milters": {"headers": {**block, **extra}}},
            )
        )
        serve(started, configs[-1], "headers", postwarden_argv(), tmp_path / label)
    postfix = postfix_factory(smtpd_milters=[c.socket("headers") for c in configs])
    services = [ServiceContext(load_config(str(c.path))) for c in configs]
    stages = [build_stage("headers", s.settings, s) for s in services]
    runner = Runner(services[0])
    env = Envelope(mail_from=MAIL_FROM, recipients=(RCPT,), helo="client.test", queue_id="SCAN")
    try:
        for name, extra_headers, code, text in CHAIN:
            raw = make_message(subject=name, extra_headers=extra_headers)
            smtp = postfix.send(MAIL_FROM, RCPT, raw)
            assert (smtp.code("data"), smtp.text("data") if code != 250 else "") == (code, text)
            offline = pipeline.scan(runner, stages, raw, env, name)
            if code == 250:
                assert offline.action.value == "add_header", offline
            else:
                assert offline.action.value == "reject"
                assert str(offline.results[-1].verdict.reply) == f"{code} {text}"
                assert [r.verdict.action.value for r in offline.results] == ["add_header", "reject"]
    finally:
        runner.close()
        for s in services:
            s.close()
