"""Building a spam engine and scanning one message, for the spam unit tests."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from milters.context import MessageContext, ServiceContext
from milters.message import Envelope, Message, Verdict
from milters.spam.engine import SpamEngine, build
from postwarden.budget import Budget
from postwarden.clock import ManualClock
from postwarden.config.load import load_config_text
from postwarden.store.client import Store

NOW = 1_795_000_000.0  # 2026-11-18, the clock every spam unit test runs at
DATE = "Wed, 18 Nov 2026 08:00:00 +0000"


def settings_for(spam: Mapping[str, Any] | None = None, **top: Any) -> Any:
    """Settings with `milters.spam` = defaults + `spam` (DNS lists off unless given)."""
    block: dict[str, Any] = {"dnsbl": {"enabled": False}}
    block.update(spam or {})
    doc = {"state_dir": "/nonexistent", "milters": {"spam": block}, **top}
    return load_config_text(yaml.safe_dump(doc))


def engine(
    spam: Mapping[str, Any] | None = None,
    *,
    store: Store | None = None,
    resolver_factory: Callable[[Any], Any] | None = None,
    clock: ManualClock | None = None,
    **top: Any,
) -> tuple[SpamEngine, ServiceContext]:
    kwargs: dict[str, Any] = {"clock": clock or ManualClock(NOW)}
    if store is not None:
        kwargs["store_factory"] = lambda _s: store
    if resolver_factory is not None:
        kwargs["resolver_factory"] = resolver_factory
    service = ServiceContext(settings_for(spam, **top), **kwargs)
    built = build(service)
    assert built is not None
    return built, service


def message(
    body: str = "Hello, see you at lunch.\r\n",
    *,
    subject: str = "lunch",
    headers: Mapping[str, str] | None = None,
    drop: Sequence[str] = (),
) -> bytes:
    base = {
        "Received": "from mx.example.org (mx.example.org [198.51.100.7]) by mail.example.net "
        "(Postfix) with ESMTP id ABC123; " + DATE,
        "From": "Alice <alice@example.org>",
        "To": "bob@example.net",
        "Subject": subject,
        "Date": DATE,
        "Message-ID": "<1234@example.org>",
        "MIME-Version": "1.0",
        "Content-Type": "text/plain; charset=utf-8",
    }
    base.update(headers or {})
    lines = [f"{k}: {v}" for k, v in base.items() if k not in drop]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8", "surrogateescape")


def scan(
    eng: SpamEngine,
    service: ServiceContext,
    raw: bytes,
    *,
    mail_from: str = "alice@example.org",
    rcpts: Sequence[str] = ("bob@example.net",),
    ip: str | None = "198.51.100.7",
    auth: str = "",
    budget: float = 30.0,
) -> Verdict:
    env = Envelope(
        client_address=ipaddress.ip_address(ip) if ip else None,
        mail_from=mail_from,
        recipients=tuple(rcpts),
        auth_user=auth,
    )
    return eng.evaluate(Message.from_bytes(raw), env, MessageContext(service, Budget(budget)))


def names(v: Verdict) -> set[str]:
    return {s.name for s in v.symbols}


def added(v: Verdict, name: str) -> list[str]:
    return [e.value for e in v.header_edits if e.name == name and e.op.value in ("add", "change")]
