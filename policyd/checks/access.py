"""Static access rules: a small Postfix access(5) table in YAML.

A rule matches when every field it gives matches the request: `sender` and
`recipient` as `user@domain` (exact, case-insensitive), `@domain` (that
domain only) or `domain` (that domain and its subdomains, like access(5)
with `parent_domain_matches_subdomains`); `client_address` as an IP or CIDR.
The first matching rule's action is the answer. Rules with no field match
everything, which is how tests and benchmarks get a fixed answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from policyd.check import RCPT_STATES, BuiltCheck, CheckContext, CheckSpec
from policyd.decision import Decision, Verb
from policyd.protocol import PolicyRequest
from postwarden.addresses import address_matcher
from postwarden.config.errors import ConfigProblem
from postwarden.config.schema import Settings
from postwarden.config.sections.access import AccessRule
from postwarden.replies import Reply

NAME = "access"


def parse_action(text: str) -> Decision:
    """Read a Postfix access(5) action: `REJECT text`, `450 4.7.1 text`, `OK`...

    Raises ValueError with a readable reason for anything else.
    """
    word, _, rest = text.strip().partition(" ")
    rest = rest.strip()
    if word.isdigit() and len(word) == 3 and word[0] in "45":
        enhanced, _, msg = rest.partition(" ")
        if not (enhanced[:1] == word[0] and enhanced.count(".") == 2):
            enhanced, msg = f"{word[0]}.7.1", rest
        return Decision(
            Verb.REJECT if word[0] == "5" else Verb.DEFER,
            reply=Reply(int(word), enhanced, msg or "Access denied"),
        )
    try:
        verb = Verb(word.upper())
    except ValueError:
        valid = ", ".join(v.value for v in Verb)
        raise ValueError(f"unknown action {word!r} (expected NNN text or one of {valid})") from None
    if verb is Verb.REJECT:
        return Decision(verb, reply=Reply(554, "5.7.1", rest or "Access denied"))
    if verb is Verb.DEFER:
        return Decision(verb, reply=Reply(450, "4.7.1", rest or "Try again later"))
    if verb is Verb.PREPEND:
        if ":" not in rest:
            raise ValueError("PREPEND needs a header like 'X-Name: value'")
        return Decision(verb, header=rest)
    return Decision(verb, text=rest)


@dataclass(frozen=True)
class _Rule:
    index: int
    matchers: tuple[Callable[[PolicyRequest], bool], ...]
    decision: Decision


def _compile(rule: AccessRule, index: int) -> _Rule:
    matchers: list[Callable[[PolicyRequest], bool]] = []
    if rule.sender is not None:
        m_s = address_matcher(rule.sender)
        matchers.append(lambda r: m_s(r.sender))
    if rule.recipient is not None:
        m_r = address_matcher(rule.recipient)
        matchers.append(lambda r: m_r(r.recipient))
    if rule.client_address is not None:
        net = ipaddress.ip_network(rule.client_address, strict=False)
        matchers.append(lambda r: r.client_address is not None and r.client_address in net)
    d = parse_action(rule.action)
    reason = f"access rule {index}"
    decision = Decision(d.verb, d.reply, d.header, d.text, reason, NAME)
    return _Rule(index, tuple(matchers), decision)


def build(settings: Settings, problems: list[ConfigProblem]) -> BuiltCheck | None:
    cfg = settings.policyd.access
    if not cfg.enabled or not cfg.rules:
        return None
    rules = []
    for i, rule in enumerate(cfg.rules):
        try:
            rules.append(_compile(rule, i))
        except ValueError as exc:
            problems.append(
                settings.locations.problem(f"policyd.access.rules[{i}].action", str(exc))
            )
    compiled = tuple(rules)

    async def run(req: PolicyRequest, ctx: CheckContext) -> Decision | None:
        for rule in compiled:
            if all(m(req) for m in rule.matchers):
                return rule.decision
        return None

    return BuiltCheck(NAME, run, cfg.mode, RCPT_STATES)


CHECK = CheckSpec(
    name=NAME,
    build=build,
    position=10,
    description="static allow/deny rules, like a Postfix access(5) table",
)
