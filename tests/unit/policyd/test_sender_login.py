"""Sender/login match: pure decisions, map files with file:line warnings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from policyd.check import BuiltCheck, CheckContext
from policyd.checks import sender_login
from policyd.decision import Decision, Verb
from policyd.protocol import PolicyRequest, ProtocolState
from postwarden.clock import ManualClock
from postwarden.config.errors import ConfigError, ConfigProblem
from postwarden.config.load import load_config, load_config_text
from postwarden.config.schema import Settings


def build(yaml_block: str) -> tuple[BuiltCheck | None, list[ConfigProblem], Settings]:
    settings = load_config_text(f"policyd:\n  sender_login:\n    enabled: true\n{yaml_block}")
    problems: list[ConfigProblem] = []
    check = sender_login.build(settings, problems)
    return check, problems, settings


def ask(yaml_block: str, **attrs: str) -> Decision | None:
    check, problems, settings = build(yaml_block)
    assert check is not None and not problems
    ctx = CheckContext(settings=settings, store=None, clock=ManualClock())
    req = PolicyRequest(protocol_state=ProtocolState.RCPT, **attrs)  # type: ignore[arg-type]

    async def go() -> Decision | None:
        return await check.run(req, ctx)

    return asyncio.run(go())


MAP = """    map:
      alice: [alice@example.com, a.smith@example.com]
      Bob: ["@example.org"]
"""


@pytest.mark.parametrize(
    ("login", "sender"),
    [
        ("alice", "alice@example.com"),
        ("alice", "A.Smith@Example.COM"),
        ("bob", "anyone@example.org"),
        ("BOB", "x@example.org"),
        ("carol@example.net", "carol@example.net"),  # a login spelled as an address owns itself
        ("alice", ""),  # null sender: bounces and auto-replies
    ],
)
def test_owned_sender_is_allowed(login: str, sender: str) -> None:
    assert ask(MAP, sasl_username=login, sender=sender) is None


def test_foreign_sender_is_refused_with_553_naming_login_and_address() -> None:
    d = ask(MAP, sasl_username="alice", sender="boss@example.com")
    assert d is not None and d.verb is Verb.REJECT
    assert d.action_line() == (
        "553 5.7.1 Sender address <boss@example.com> not owned by login alice"
    )


@pytest.mark.parametrize(
    ("login", "sender"),
    [
        ("bob", "bob@sub.example.org"),  # @domain is that domain only
        ("mallory", "alice@example.com"),  # a login missing from the map owns nothing
        ("carol@example.net", "dave@example.net"),
    ],
)
def test_unowned_sender_is_refused(login: str, sender: str) -> None:
    d = ask(MAP, sasl_username=login, sender=sender)
    assert d is not None and d.reply is not None and d.reply.code == 553


def test_unauthenticated_client_is_not_checked() -> None:
    assert ask(MAP, sender="boss@example.com") is None


def test_options_refuse_null_sender_and_login_as_address() -> None:
    opts = MAP + "    allow_null_sender: false\n    login_is_address: false\n"
    d = ask(opts, sasl_username="alice", sender="")
    assert d is not None and "Null sender not allowed for login alice" in d.action_line()
    assert ask(opts, sasl_username="carol@example.net", sender="carol@example.net") is not None


def test_map_file_lines_load_and_bad_lines_warn_with_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "logins"
    f.write_text(
        "# login  addresses\n"
        "alice:  alice@example.com, @example.net\n"
        "\n"
        "bob     not-an-address\n"
        "carol\n"
        "dave\tdave@example.com\n",
        encoding="utf-8",
    )
    check, problems, settings = build(f"    map_file: {f}\n")
    assert check is not None
    assert [(p.line, p.severity) for p in problems] == [(4, "warning"), (5, "warning")]
    assert str(problems[0]).startswith(f"{f}:4: warning: policyd.sender_login.map_file:")
    cfg = settings.policyd.sender_login
    owned = sender_login.compile_map(sender_login.parse_map_file(str(f), []))
    req = PolicyRequest(
        protocol_state=ProtocolState.MAIL, sasl_username="alice", sender="x@example.net"
    )
    assert sender_login.evaluate(cfg, owned, req) is None
    req = PolicyRequest(
        protocol_state=ProtocolState.MAIL, sasl_username="dave", sender="dave@example.com"
    )
    assert sender_login.evaluate(cfg, owned, req) is None


def test_bad_inline_map_address_is_a_config_error_at_its_own_line(tmp_path: Path) -> None:
    f = tmp_path / "pw.yaml"
    f.write_text(
        "policyd:\n  sender_login:\n    enabled: true\n    map:\n      alice: [alice]\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert str(err.value) == (
        f"{f}:5: policyd.sender_login.map.alice[0]: 'alice' is not user@domain or @domain"
    )


def test_sender_login_is_off_by_default() -> None:
    assert sender_login.build(Settings(), []) is None
