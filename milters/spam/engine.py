"""The spam engine: run the checks, sum the symbols, act by threshold.

One message: delete incoming copies of our headers; allow/block lists
(milters/spam/lists.py: allow wins and skips scoring); the size limit
(`max_scan_size`: score the first part or skip, a symbol either way); every
check of the table (milters/spam/checks/__init__.py), local ones first, then
the network ones with what is left of the budget; the score is the sum of
the symbols' scores (configured score x the hit's weight); the action comes
from the recipients' threshold sets (milters/spam/profiles.py) and turns
into headers, a subject prefix, a reply or a hold (milters/spam/actions.py).

A check that fails does not cost the verdict: Redis away gives the symbol
STORE_UNAVAILABLE{check}, a bug gives CHECK_ERROR{check} (logged), and the
other checks still count.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

from milters.context import MessageContext, ServiceContext
from milters.engine import Needs
from milters.message import Action, Envelope, HeaderEdit, Message, Symbol, Verdict
from milters.spam import actions, autolearn
from milters.spam.checks import CHECKS, Check, CheckContext, CheckSpec, SymbolDef, SymbolHit
from milters.spam.lists import AddressList
from milters.spam.profiles import ProfileMap, read_forwarding_map
from milters.spam.view import MessageView
from postwarden import replies
from postwarden.bayes.store import BayesStore, recipient_scope
from postwarden.budget import BudgetExceeded
from postwarden.config.sections.spam import Oversize, SpamMilterSettings
from postwarden.config.units import Network
from postwarden.errors import StoreUnavailable

# Symbols that reject whatever the thresholds say (Rspamd's force_action): the
# GTUBE test string, so an admin can test the whole path with tag-only
# thresholds, and an admin's explicit block_from entry (NethServer's Block From).
FORCE_REJECT = frozenset({"GTUBE", "BLOCK_FROM"})

log = logging.getLogger("postwarden.milter.spam")

# Symbols the engine itself emits.
ENGINE_SYMBOLS: dict[str, SymbolDef] = {
    "ALLOW_FROM": SymbolDef(0.0, "sender is on allow_from: not scored"),
    "ALLOW_TO": SymbolDef(0.0, "every recipient is on allow_to: not scored"),
    "BLOCK_FROM": SymbolDef(1000.0, "sender is on block_from"),
    "SCAN_TRUNCATED": SymbolDef(0.0, "larger than max_scan_size: first part scored"),
    "SCAN_SKIPPED": SymbolDef(0.0, "larger than max_scan_size: not scored"),
    "STORE_UNAVAILABLE": SymbolDef(0.0, "Redis unavailable: a check was skipped"),
    "CHECK_ERROR": SymbolDef(0.0, "a check failed (bug, logged): skipped"),
    "GREYLIST_PASSED": SymbolDef(0.0, "greylisting threshold reached, triplet passed"),
    "BAYES_AUTOLEARN_SPAM": SymbolDef(0.0, "autolearn: Bayes learned this message as spam"),
    "BAYES_AUTOLEARN_HAM": SymbolDef(0.0, "autolearn: Bayes learned this message as ham"),
}


@dataclass(frozen=True, slots=True)
class _Built:
    spec: CheckSpec
    check: Check


class SpamEngine:
    name = "spam"
    needs = Needs(change_headers=True, quarantine=True)

    def __init__(self, settings: SpamMilterSettings, checks: list[_Built],
                 symbols: Mapping[str, SymbolDef], trusted: tuple[Network, ...],
                 forwarding: list[str]) -> None:  # fmt: skip
        self.s = settings
        self.checks = [c for c in checks if not c.spec.network] + [
            c for c in checks if c.spec.network
        ]
        self.symbols = dict(symbols)
        self.trusted = trusted
        self.allow_from = AddressList(settings.allow_from)
        self.block_from = AddressList(settings.block_from)
        self.profiles = ProfileMap(settings, forwarding)
        self.tagging = actions.Tagging(settings.headers, settings.subject_prefix)

    # -- helpers --------------------------------------------------------------
    def symbol(self, hit: SymbolHit) -> Symbol:
        d = self.symbols.get(hit.name) or SymbolDef(0.0, "")
        return Symbol(hit.name, round(d.score * hit.weight, 4), d.description, hit.options)

    def outbound(self, env: Envelope) -> bool:
        if env.authenticated:
            return True
        ip = env.client_address
        if ip is None:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.trusted)

    # -- the decision -----------------------------------------------------------
    def evaluate(self, msg: Message, env: Envelope, ctx: MessageContext) -> Verdict:
        s = self.s
        edits: list[HeaderEdit] = actions.strip_incoming(
            [(h.name, h.value) for h in msg.headers], s.headers
        )
        limit = int(s.max_scan_size)
        view = MessageView(msg, env, limit)
        outbound = self.outbound(env)
        hits: list[SymbolHit] = []
        scored = True
        from_addrs = [env.mail_from, *view.from_addresses]
        allowed = self.allow_from.match_any(a for a in from_addrs if a)
        rcpt_allowed = [self.profiles.allow_to.match(r) for r in env.recipients]
        if allowed:
            hits.append(SymbolHit("ALLOW_FROM", (allowed,)))
            scored = False
        elif env.recipients and all(rcpt_allowed):
            hits.append(SymbolHit("ALLOW_TO", tuple(dict.fromkeys(str(a) for a in rcpt_allowed))))
            scored = False
        else:
            blocked = self.block_from.match_any(a for a in from_addrs if a)
            if blocked:
                hits.append(SymbolHit("BLOCK_FROM", (blocked,)))
        if scored and msg.body_size > limit:
            if s.oversize is Oversize.SKIP:
                hits.append(SymbolHit("SCAN_SKIPPED", (f"{msg.body_size} bytes",)))
                scored = False
            else:
                hits.append(SymbolHit("SCAN_TRUNCATED", (f"{msg.body_size} bytes",)))
        if scored:
            cctx = CheckContext(env, ctx, s, outbound)
            for c in self.checks:
                ctx.budget.check(f"spam check {c.spec.name}")
                try:
                    hits.extend(c.check(view, cctx))
                except StoreUnavailable:
                    hits.append(SymbolHit("STORE_UNAVAILABLE", (c.spec.name,)))
                except BudgetExceeded:
                    raise
                except Exception:  # a bug in one check must not cost the verdict
                    log.exception("spam check %s failed", c.spec.name)
                    hits.append(SymbolHit("CHECK_ERROR", (c.spec.name,)))
        symbols = self._merge(hits)
        score = round(sum(sym.score for sym in symbols), 2)
        if scored and not outbound and not view.truncated:
            symbols += self._autolearn(msg, view, env, ctx, symbols)
        decision = self.profiles.decide(env.recipients, score, outbound)
        action = decision.action
        names = {sym.name for sym in symbols}
        if names & FORCE_REJECT and "ALLOW_TO" not in names:  # allowed recipients keep theirs
            action = Action.REJECT
        reply = None
        if action is Action.GREYLIST:
            try:
                passed, wait = actions.greylist(env, ctx)
            except StoreUnavailable:
                passed, wait = True, 0
                symbols.append(self.symbol(SymbolHit("STORE_UNAVAILABLE", ("greylist",))))
            if passed:
                symbols.append(self.symbol(SymbolHit("GREYLIST_PASSED")))
                action = max(decision.tags, key=lambda a: a.severity, default=Action.ACCEPT)
            else:
                reply = replies.SPAM_GREYLIST.with_text(
                    f"Greylisted, please try again in {wait} seconds"
                )
        elif action is Action.REJECT:
            reply = actions.reject_reply(score)
        subject = view.raw_header("Subject") if view.count("Subject") else None
        edits += self.tagging.edits(action, decision.tags, score, decision.required, symbols,
                                    subject)  # fmt: skip
        profiles = sorted(set(decision.profiles.values()))
        reason = f"score={score:.2f} action={action.value} profile={','.join(profiles)}"
        log.info("spam: %s symbols=%s", reason, ",".join(sym.name for sym in symbols))
        return Verdict(
            action=action,
            reason=reason,
            reply=reply,
            header_edits=tuple(edits),
            symbols=tuple(symbols),
            score=score,
            required_score=decision.required,
            details={
                "profiles": dict(decision.profiles),
                "outbound": outbound,
                "tags": sorted(a.value for a in decision.tags),
            },
        )

    def _autolearn(self, msg: Message, view: MessageView, env: Envelope, ctx: MessageContext,
                   symbols: list[Symbol]) -> list[Symbol]:  # fmt: skip
        """Teach Bayes a clear verdict (milters/spam/autolearn.py): the symbol
        that says it learned, STORE_UNAVAILABLE when Redis is away, or
        CHECK_ERROR when learning failed; the verdict itself never changes."""
        b = self.s.bayes
        cls = autolearn.decide(b.autolearn, symbols) if autolearn.enabled(self.s) else None
        if cls is None:
            return []
        if ctx.budget.expired:
            return []  # the verdict is made; learning can wait for another message
        scope = recipient_scope(b, env.recipients)
        raw = msg.header_bytes() + b"\r\n" + msg.body
        try:
            tokens = view.bayes_token_ids  # the Bayes check's, not tokenized again
            outcome = autolearn.teach(BayesStore(ctx.store, b), scope, raw, tokens, cls)
        except StoreUnavailable:
            return [self.symbol(SymbolHit("STORE_UNAVAILABLE", ("autolearn",)))]
        except Exception:  # learning must never cost the verdict already made
            log.exception("spam autolearn failed")
            return [self.symbol(SymbolHit("CHECK_ERROR", ("autolearn",)))]
        rules = autolearn.rules_score(symbols)
        log.info("spam: autolearn %s: %s (score without Bayes %.2f)", cls, outcome, rules)
        if outcome != "learned":  # "known", "kept" (learned before), "empty"
            return []
        ctx.stats.add(f"bayes.autolearned_{cls}")
        return [self.symbol(SymbolHit(autolearn.SYMBOL[cls], (f"rules {rules:.2f}",)))]

    def _merge(self, hits: list[SymbolHit]) -> list[Symbol]:
        """One entry per symbol name (options merged, the strongest weight), by score."""
        merged: dict[str, SymbolHit] = {}
        for h in hits:
            old = merged.get(h.name)
            if old is None:
                merged[h.name] = h
            else:
                opts = tuple(dict.fromkeys(old.options + h.options))
                merged[h.name] = SymbolHit(h.name, opts, max(old.weight, h.weight))
        out = [self.symbol(h) for h in merged.values()]
        out.sort(key=lambda sym: (-abs(sym.score), sym.name))
        return out


def symbol_table(
    settings: SpamMilterSettings, specs: tuple[CheckSpec, ...]
) -> dict[str, SymbolDef]:
    """Shipped defaults (engine, checks, rules, zones), then the admin's overrides."""
    table = dict(ENGINE_SYMBOLS)
    for spec in specs:
        table.update(spec.symbols)
    for zone in settings.dnsbl.zones:
        for name in (zone.symbol, *zone.returns.values()):
            table.setdefault(name, SymbolDef(zone.score, f"listed in {zone.zone}"))
    for rule in settings.rules:
        table[rule.symbol] = SymbolDef(rule.score, rule.description or f"rule {rule.symbol}")
    for name, o in settings.symbols.items():
        old = table.get(name, SymbolDef(0.0, ""))
        table[name] = SymbolDef(old.score if o.score is None else o.score,
                                o.description or old.description)  # fmt: skip
    return table


def build(ctx: ServiceContext) -> SpamEngine | None:
    s = ctx.settings.milters.spam
    if not s.enabled:
        return None
    built = []
    for spec in CHECKS:
        check = spec.build(ctx, s)
        if check is not None:
            built.append(_Built(spec, check))
    forwarding: list[str] = []
    if s.forwarding_map:
        try:
            forwarding, problems = read_forwarding_map(str(s.forwarding_map))
        except OSError as exc:
            ctx.problem(str(s.forwarding_map), 0, "milters.spam.forwarding_map", str(exc))
            problems = []
        for line, why in problems:
            ctx.problem(str(s.forwarding_map), line, "milters.spam.forwarding_map", why, "warning")
    known = symbol_table(s, CHECKS)
    shipped = symbol_table(replace(s, symbols={}), CHECKS)
    for name in s.symbols:
        if name not in shipped:
            ctx.problem("", 0, f"milters.spam.symbols.{name}",
                        "no check emits this symbol (typo?)", "warning")  # fmt: skip
    return SpamEngine(s, built, known, ctx.settings.trusted_networks, forwarding)
