"""The spam checks, and the one table that lists them.

How a check plugs in (adding one is one module here + one line in CHECKS):

* A module `milters/spam/checks/NAME.py` defines `CHECK = CheckSpec(name=...,
  build=..., symbols={...}, network=False)` (types in `checks/api.py`).
* `build(ctx: ServiceContext, settings: SpamMilterSettings) -> Check | None`
  runs once per process: read its settings (its own sub-block of
  `milters.spam`, e.g. `settings.bayes`), compile rules, report problems via
  `ctx.problem(file, line, key, msg)`. Return None when switched off.
* The `Check` it returns (a `Callable` alias) is a plain function or closure
  `check(view: MessageView, ctx: CheckContext) -> Iterable[SymbolHit]`:
  - `view` (milters/spam/view.py) is the message parsed ONCE: `view.msg` /
    `view.env` (the milter's Message, Envelope), `view.headers` (lower name ->
    decoded unfolded values), `view.header(name)`, `view.subject`,
    `view.from_addresses`,
    `view.text_parts` (TextPart: content_type, decoded `text` with HTML made
    text, raw `html`, charset), `view.text` (all text joined), `view.html`,
    `view.urls` (Url: url, host, link text), `view.url_hosts`, `view.body`
    (raw body bytes up to max_scan_size), `view.truncated`, `view.mime`
    (stdlib compat32 tree). Add cached properties there; never re-parse.
  - `ctx` (CheckContext): `env`, `settings` (SpamMilterSettings), `outbound`,
    `message` (MessageContext: `.budget`, `.store` (Redis Store; may raise
    StoreUnavailable, which the engine turns into STORE_UNAVAILABLE), `.resolver`,
    `.clock`, `.stats`), `facts` (per-message dict shared between checks).
  - A `SymbolHit(name, options=(), weight=1.0)` names a symbol from the
    check's `symbols` table; score = configured score x weight.
* `symbols: {NAME: SymbolDef(score, description)}` are the shipped defaults;
  `milters.spam.symbols.NAME.score/description` override them one by one.
* `network=True` checks run after the local ones with the remaining budget;
  a check that waits (DNS, Redis) caps its waits with `ctx.message.budget`.
* A per-recipient check (e.g. per-user Bayes) sees `ctx.env.recipients`;
  the message is still scored once (milters/spam/profiles.py).

The engine sums the scores, picks the action by threshold (milters/spam/actions.py)
and writes X-Spamd-Result with every symbol as `NAME(score){options}`.
"""

from __future__ import annotations

from milters.spam.checks import (
    auth_results,
    bayes,
    content,
    dnsbl,
    gtube,
    header_sanity,
    regex_rules,
    urls,
)
from milters.spam.checks.api import (
    Check,
    CheckContext,
    CheckSpec,
    SymbolDef,
    SymbolHit,
)

CHECKS: tuple[CheckSpec, ...] = (
    gtube.CHECK,
    header_sanity.CHECK,
    auth_results.CHECK,
    urls.CHECK,
    content.CHECK,
    regex_rules.CHECK,
    dnsbl.CHECK,
    bayes.CHECK,
)
"""Every check, in the order they run (local first; network ones after)."""

__all__ = ["CHECKS", "Check", "CheckContext", "CheckSpec", "SymbolDef", "SymbolHit"]
