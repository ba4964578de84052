"""The header-checks milter: Postfix header_checks/body_checks files, plus decoding.

Postfix's built-in checks (header_checks(5)) match one raw logical header or
one raw body line at a time; they cannot see an RFC 2047 encoded Subject or a
base64 body. This engine reads the same table files unchanged
(`milters.regexp_table`), acts with cleanup(8)'s semantics
(`milters.header_actions`: first matching rule per line; REJECT, DISCARD,
REDIRECT and PASS stop all later inspection; HOLD, WARN, PREPEND, IGNORE,
BCC ... continue), and then does what Postfix cannot:

1. each header is matched raw, exactly as Postfix would, and, when nothing
   matched and the decoded form differs, once more unfolded and RFC 2047
   decoded (`decoded_matching`);
2. body rules also run on decoded text parts: quoted-printable/base64
   undone, charset decoded, HTML reduced to text (`decoded_body`);
3. rules can be written in YAML (`rules:`), scoped to inbound/outbound/
   authenticated mail and to sender/recipient patterns, and trialled one by one
   with `mode: warn` (logged and stamped in `X-Postwarden-Warn`, never acted
   on; a warn-mode rule does not stop the search for the line).

Order per line: the raw form through the table files in the order configured
(first hit wins, as `header_checks = regexp:a, regexp:b`); only when no table
matched the raw form, the decoded form through the same tables; then the YAML
rules. A DUNNO/OK hit ends the search for that line.

Every decision is logged with the rule's file:line (and the queue ID from the
logging context), and `Verdict.details` carries it for `postwarden scan`.

Deliberate differences from Postfix, beyond decoding: headers are matched as
`Name: value` rebuilt from what the milter protocol delivers. Postfix gives
milters the value after one space following the colon, so "Subject:  x"
(two spaces) is seen exactly, but "Subject:x" and "Subject:<TAB>x" arrive as
if written "Subject: x" / "Subject: <TAB>x" (measured with Postfix 3.7):
a rule written for the missing space (`/^Subject:x/`) does not fire here,
while header_checks would fire it. PREPEND/REPLACE/IGNORE on body
lines and MIME part headers rewrite the body (milter replacebody), except
when the body was cut at max_body_size or the match was on decoded text
(then they are logged, not applied); FILTER is logged (and
stamped in `filter_header` when set) because a milter cannot reroute mail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import re2

from milters.context import MessageContext, ServiceContext
from milters.engine import MilterSpec, Needs
from milters.header_actions import (
    CleanupState,
    Context,
    Decision,
    LineOutcome,
    RuleAction,
    Verb,
    parse_action,
)
from milters.header_lines import (
    LineClass,
    body_lines,
    decoded_body_lines,
    decoded_header,
    is_mime_header,
)
from milters.header_regex_worker import FallbackWorker
from milters.message import Action, Envelope, HeaderEdit, HeaderOp, Message, Verdict
from milters.pipeline import HIDDEN_TOP_HEADERS  # Postfix's own Received: header
from milters.regexp_table import Dialect, Table, load_table
from postwarden import logs
from postwarden.budget import Budget, BudgetExceeded
from postwarden.config.errors import ConfigProblem
from postwarden.config.schema import Settings
from postwarden.config.sections.headers import Form, HeaderRule, HeadersMilterSettings, Scope
from postwarden.config.units import Network
from postwarden.logs import RateLimitedLog
from postwarden.replies import Reply

log = logging.getLogger("postwarden.milter.headers")

# cleanup: CLEANUP_STAT_WRITE after a map lookup error ("try again later").
LOOKUP_ERROR = Reply(451, "4.3.0", "Error: queue file write error")
_EDIT_VERBS = (Verb.PREPEND, Verb.REPLACE, Verb.IGNORE, Verb.STRIP)


@dataclass
class YamlRule:
    """A compiled `rules:` entry."""

    rule_id: str
    spec: HeaderRule
    pattern: object
    senders: list[object]
    recipients: list[object]
    action: RuleAction

    def applies(self, env: Envelope, trusted: Sequence[Network]) -> bool:
        scope = self.spec.scope
        if scope is not Scope.ANY:
            inside = env.authenticated or _trusted(env, trusted)
            if scope is Scope.INBOUND and inside:
                return False
            if scope is Scope.OUTBOUND and not inside:
                return False
            if scope is Scope.AUTHENTICATED and not env.authenticated:
                return False
        if self.senders and not any(p.search(env.mail_from) for p in self.senders):  # type: ignore[attr-defined]
            return False
        return not self.recipients or any(
            p.search(r)  # type: ignore[attr-defined]
            for p in self.recipients
            for r in env.recipients
        )

    def wants(self, cls: LineClass, name: str) -> bool:
        if self.spec.body:
            return cls is LineClass.BODY
        if cls is LineClass.BODY:
            return False
        return self.spec.header == "*" or self.spec.header.lower() == name.lower()


def _trusted(env: Envelope, trusted: Sequence[Network]) -> bool:
    ip = env.client_address
    return ip is not None and any(ip in net for net in trusted)


@dataclass
class _Found:
    action: RuleAction
    decision: Decision
    error: str = ""


class HeadersEngine:
    name = "headers"

    def __init__(
        self,
        settings: HeadersMilterSettings,
        tables: dict[LineClass, list[Table]],
        rules: list[YamlRule],
        trusted: Sequence[Network],
        fallback: FallbackWorker,
    ) -> None:
        self.settings = settings
        self.tables = tables
        self.rules = rules
        self.trusted = tuple(trusted)
        self.fallback = fallback
        self._actions: dict[tuple[str, Context], RuleAction] = {}
        self._unknown = RateLimitedLog(log, interval=300.0)
        verbs = {r.action.verb for r in rules}
        in_body: set[Verb] = {r.action.verb for r in rules}
        for cls, tlist in tables.items():
            for t in tlist:
                for rule in t.match_rules():
                    verb = parse_action(rule.result.decode("utf-8", "replace"), Context.BODY).verb
                    verbs.add(verb)
                    if cls is not LineClass.HEADER:
                        in_body.add(verb)
        edit_verbs = {Verb.REPLACE, Verb.IGNORE, Verb.STRIP, Verb.PREPEND}
        self.needs = Needs(
            headers=True,
            # MIME part headers and attached messages' headers are in the body.
            body=any(tables[c] for c in (LineClass.BODY, LineClass.MIME, LineClass.NESTED))
            or bool(rules),
            add_headers=True,
            change_headers=bool(verbs & edit_verbs),
            change_body=bool(in_body & edit_verbs),
            change_recipients=bool(verbs & {Verb.REDIRECT, Verb.BCC}),
            quarantine=Verb.HOLD in verbs,
        )

    # -- matching ---------------------------------------------------------
    def _action(self, result: str, context: Context) -> RuleAction:
        key = (result, context)
        action = self._actions.get(key)
        if action is None:
            action = self._actions[key] = parse_action(result, context)
        return action

    def _check(
        self,
        env: Envelope,
        cls: LineClass,
        name: str,
        raw: bytes,
        decoded: Callable[[], str | None],
        context: Context,
        where: str,
        warns: list[Decision],
    ) -> _Found | None:
        forms: list[tuple[str, bytes]] = [("raw", raw)]
        dec_text: str | None = None
        if (cls is not LineClass.BODY and self.settings.decoded_matching) or (
            cls is LineClass.BODY and self.settings.decoded_body
        ):
            dec_text = decoded()
            if dec_text is not None:
                dec = dec_text.encode("utf-8", "surrogateescape")
                if dec != raw:
                    forms.append(("decoded", dec))
        # Raw through every table first: whenever Postfix would match, the
        # same rule decides here; the decoded form only gets what is left.
        for form, key in forms:
            for table in self.tables[cls]:
                try:
                    hit = table.lookup(key)
                except BudgetExceeded as exc:  # a fallback match ran out of time
                    raise BudgetExceeded(f"{where}, {table.path}: {exc.where}") from None
                if hit is None:
                    continue
                action = self._action(hit.result, context)
                shown = key.decode("utf-8", "replace")
                decision = Decision(
                    str(hit.loc), action.verb.value, form, where, shown, action.text, action.problem
                )
                return _Found(action, decision, hit.error)
        raw_text = raw.decode("utf-8", "replace")
        for rule in self.rules:
            if not rule.wants(cls, name) or not rule.applies(env, self.trusted):
                continue
            subject_forms = []
            if rule.spec.form in (Form.RAW, Form.BOTH):
                subject_forms.append(("raw", _rule_subject(rule, raw_text, name)))
            if rule.spec.form in (Form.DECODED, Form.BOTH) and dec_text is not None:
                subject_forms.append(("decoded", _rule_subject(rule, dec_text, name)))
            for form, subject in subject_forms:
                if rule.pattern.search(subject) is None:  # type: ignore[attr-defined]
                    continue
                decision = Decision(
                    rule.rule_id,
                    rule.action.verb.value,
                    form,
                    where,
                    subject,
                    rule.action.text,
                    mode=rule.spec.mode.value,
                )
                if rule.spec.mode.value == "warn":
                    warns.append(decision)
                    break
                return _Found(rule.action, decision)
        return None

    # -- the message --------------------------------------------------------
    def evaluate(self, msg: Message, env: Envelope, ctx: MessageContext) -> Verdict:
        # Fallback matches (patterns RE2 cannot run) take one pooled child
        # for this message and end by its budget, so a slow message neither
        # outlasts its budget nor holds up other connections.
        with self.fallback.session(ctx.budget):
            return self._evaluate(msg, env, ctx.budget)

    def _evaluate(self, msg: Message, env: Envelope, budget: Budget) -> Verdict:
        s = self.settings
        state = CleanupState()
        warns: list[Decision] = []
        prepends: dict[int, list[str]] = {}
        replaced: dict[int, str] = {}
        dropped: set[int] = set()
        limit = int(s.header_size_limit)
        top_ct = b""
        for i, h in enumerate(msg.headers):
            if h.name.lower() == "content-type":
                top_ct = h.value.encode("utf-8", "surrogateescape")
            if not state.filtering:
                continue
            budget.check(f"header {h.name}")
            cls = LineClass.MIME if is_mime_header(h.name) else LineClass.HEADER
            value = h.value.replace("\r\n", "\n")
            raw = f"{h.name}: {value}".encode("utf-8", "surrogateescape")[:limit]
            found = self._check(
                env,
                cls,
                h.name,
                raw,
                lambda h=h: decoded_header(h.name, h.value)[:limit],  # type: ignore[misc]
                Context.HEADER,
                f"header {h.name}",
                warns,
            )
            if found is None:
                continue
            outcome, text = self._apply(state, found, Context.HEADER)
            if found.action.verb is Verb.PREPEND and not found.action.problem:
                prepends.setdefault(i, []).append(found.action.text)
            if outcome is LineOutcome.DROP:
                dropped.add(i)
            elif outcome is LineOutcome.REPLACE:
                replaced[i] = text
        body_edits: list[tuple[int, int, Verb, str]] = []
        if state.filtering:
            self._body(msg, env, state, warns, top_ct, body_edits, budget)
        verdict = self._verdict(msg, env, state, warns, prepends, replaced, dropped)
        if body_edits and verdict.action not in (Action.REJECT, Action.TEMPFAIL, Action.DISCARD):
            verdict = replace(verdict, new_body=edit_body(msg.body, body_edits))
        return verdict

    def _body(
        self,
        msg: Message,
        env: Envelope,
        state: CleanupState,
        warns: list[Decision],
        top_ct: bytes,
        body_edits: list[tuple[int, int, Verb, str]],
        budget: Budget,
    ) -> None:
        s = self.settings
        check_body = bool(self.tables[LineClass.BODY]) or any(r.spec.body for r in self.rules)
        check_mime = (
            bool(self.tables[LineClass.MIME])
            or bool(self.tables[LineClass.NESTED])
            or (any(not r.spec.body for r in self.rules))
        )
        if not (check_body or check_mime):
            return
        seen: set[bytes] = set()
        for line in body_lines(
            msg.body,
            top_ct,
            line_limit=s.line_length_limit,
            part_limit=int(s.body_checks_size_limit),
        ):
            if not state.filtering:
                return
            budget.check("body")
            if line.cls is LineClass.BODY:
                if not check_body:
                    continue
                seen.add(line.text)
                found = self._check(
                    env, line.cls, "", line.text, lambda: None, Context.BODY, "body", warns
                )
            else:
                if not check_mime:
                    continue
                name = line.text.split(b":", 1)[0].decode("latin-1")
                text = line.text.decode("utf-8", "surrogateescape")
                found = self._check(
                    env,
                    line.cls,
                    name,
                    line.text[: int(s.header_size_limit)],
                    lambda n=name, t=text: decoded_header(n, t.partition(":")[2].lstrip(" ")),  # type: ignore[misc]
                    Context.HEADER,
                    f"{line.cls.value} {name}",
                    warns,
                )
            if found is not None:
                context = Context.BODY if line.cls is LineClass.BODY else Context.HEADER
                outcome, text = self._apply(state, found, context)
                verb = found.action.verb
                if verb not in _EDIT_VERBS or found.action.problem or found.error:
                    continue
                if found.decision.form != "raw":
                    found.decision.note = "not applied: decoded text has no line to edit"
                elif msg.truncated:
                    found.decision.note = "not applied: body cut at max_body_size"
                elif verb is Verb.PREPEND:
                    body_edits.append((line.start, line.start, verb, found.action.text))
                elif outcome is LineOutcome.DROP:
                    body_edits.append((line.start, line.end, Verb.IGNORE, ""))
                elif outcome is LineOutcome.REPLACE:
                    body_edits.append((line.start, line.end, verb, text))
        if not (check_body and s.decoded_body and state.filtering):
            return
        try:
            parts = list(decoded_body_lines(msg.parsed, int(s.body_checks_size_limit)))
        except Exception as exc:  # the stdlib parser on hostile MIME: keep the raw verdict
            log.debug("decoded body skipped: %s", exc)
            return
        for kind, text in parts:
            if not state.filtering:
                return
            data = text.encode("utf-8", "surrogateescape")
            for start in range(0, len(data), s.line_length_limit):
                chunk = data[start : start + s.line_length_limit]
                if chunk in seen:
                    continue
                found = self._check(
                    env,
                    LineClass.BODY,
                    "",
                    chunk,
                    lambda: None,
                    Context.BODY,
                    f"decoded {kind}",
                    warns,
                )
                if found is not None:
                    found.decision.form = "decoded"
                    if found.action.verb in _EDIT_VERBS and not found.action.problem:
                        found.decision.note = "not applied: decoded text has no line to edit"
                    self._apply(state, found, Context.BODY)
                    if not state.filtering:
                        return

    def _apply(
        self, state: CleanupState, found: _Found, context: Context
    ) -> tuple[LineOutcome, str]:
        d = found.decision
        state.decisions.append(d)
        if found.error:
            d.note = f"lookup error: {found.error}; Postfix defers the message"
            state.reject = LOOKUP_ERROR
            state.filtering = False
            state.final = d
            self._log(d, logging.WARNING)
            return LineOutcome.KEEP, ""
        if found.action.verb is Verb.UNKNOWN or found.action.problem:
            self._unknown.warning(
                d.rule, "%s: %s (matched %s)", d.rule, found.action.problem, d.where
            )
            d.note = found.action.problem
            return LineOutcome.KEEP, ""
        before = (state.reject, state.discard, state.redirect, state.hold)
        outcome = state.act(found.action, context)
        if (
            state.reject,
            state.discard,
            state.redirect,
            state.hold,
        ) != before and state.final is None:
            state.final = d
        self._log(d, logging.INFO)
        if d.note:
            return LineOutcome.KEEP, ""
        return outcome

    def _log(self, d: Decision, level: int) -> None:
        logs.decision(
            log,
            {
                "service": "headers",
                "rule": d.rule,
                "action": d.verb,
                "form": d.form,
                "where": d.where,
                "text": d.text,
                "note": d.note,
            },
            level,
        )

    # -- the verdict --------------------------------------------------------
    def _verdict(
        self,
        msg: Message,
        env: Envelope,
        state: CleanupState,
        warns: list[Decision],
        prepends: dict[int, list[str]],
        replaced: dict[int, str],
        dropped: set[int],
    ) -> Verdict:
        s = self.settings
        details: dict[str, object] = {}
        final = state.final
        if final is not None:
            top = final.as_dict()
            # `action` in scan output is the verdict's; the rule's verb is rule_action.
            top["rule_action"] = top.pop("action")
            details.update(top)
        if state.decisions or warns:
            details["matches"] = [d.as_dict() for d in state.decisions + warns]
        if state.reject is not None:
            details["reply"] = str(state.reject)
            action = Action.REJECT if state.reject.code >= 500 else Action.TEMPFAIL
            return Verdict(action, _reason(final), state.reject, details=details)
        if state.discard:
            return Verdict(Action.DISCARD, _reason(final), details=details)
        edits = header_edits(msg, prepends, replaced, dropped)
        for d in warns:
            text = f"headers would {d.verb}: {d.rule} ({d.form} {d.where})"
            edits.append(HeaderEdit(HeaderOp.ADD, s.warn_header, text))
        if state.filter and s.filter_header:
            edits.append(HeaderEdit(HeaderOp.ADD, s.filter_header, state.filter))
        if state.filter:
            details["filter"] = state.filter
        add: list[str] = list(state.bcc)
        remove: list[str] = []
        if state.redirect:
            details["redirect"] = state.redirect
            remove = [r for r in env.recipients if r.lower() != state.redirect.lower()]
            add = [state.redirect, *add]
        if state.hold is not None:
            action = Action.QUARANTINE
        elif edits or add or remove:
            action = Action.ADD_HEADER
        else:
            action = Action.ACCEPT
        return Verdict(
            action,
            _reason(final) if final else ("; ".join(d.rule for d in state.decisions[:3])),
            header_edits=tuple(edits),
            add_recipients=tuple(add),
            remove_recipients=tuple(remove),
            details=details,
        )


def edit_body(body: bytes, edits: list[tuple[int, int, Verb, str]]) -> bytes:
    """Apply body_checks/mime_header_checks line edits (cleanup's PREPEND,
    REPLACE, IGNORE on body records): a PREPEND line goes above its line,
    IGNORE removes the line and its line end."""
    eol = b"\r\n" if b"\r\n" in body[:4096] or not body else b"\n"
    out = bytearray()
    pos = 0
    for start, end, verb, text in sorted(edits, key=lambda e: (e[0], e[2] is not Verb.PREPEND)):
        if start < pos:
            continue  # overlapping edit (a chunk of a line already replaced)
        out += body[pos:start]
        data = text.encode("utf-8", "surrogateescape")
        if verb is Verb.PREPEND:
            out += data + eol
            pos = start
            continue
        if verb is Verb.REPLACE:
            out += data
            pos = end
            continue
        pos = end  # IGNORE / STRIP: drop the line, and its line end if whole
        at_line_start = start == 0 or body[start - 1 : start] == b"\n"
        if at_line_start:
            if body[pos : pos + 2] == b"\r\n":
                pos += 2
            elif body[pos : pos + 1] == b"\n":
                pos += 1
    out += body[pos:]
    return bytes(out)


def _rule_subject(rule: YamlRule, text: str, name: str) -> str:
    """A `header: NAME` rule sees the value; `header: "*"` and body rules the whole line."""
    if rule.spec.body or rule.spec.header == "*":
        return text
    _, _, value = text.partition(":")
    return value.lstrip(" \t")


def _reason(d: Decision | None) -> str:
    if d is None:
        return ""
    text = f"{d.verb} by {d.rule} ({d.form} {d.where})"
    return f"{text}: {d.text}" if d.text else text


def header_edits(
    msg: Message, prepends: dict[int, list[str]], replaced: dict[int, str], dropped: set[int]
) -> list[HeaderEdit]:
    """Milter edits that turn the header list into what cleanup would write.

    Deletes and changes go first, highest occurrence first, so no index moves
    under a later edit; inserts follow, bottom-most first, with positions
    counted in the header list that is left after the deletes, plus Postfix's
    hidden Received: header (HIDDEN_TOP_HEADERS).
    """
    edits: list[HeaderEdit] = []
    occurrence: list[int] = []
    counts: dict[str, int] = {}
    for h in msg.headers:
        key = h.name.lower()
        counts[key] = counts.get(key, 0) + 1
        occurrence.append(counts[key])
    inserts: list[tuple[int, int, str, str]] = []  # (header index, order, name, value)
    removed: set[int] = set(dropped)
    for i in sorted(set(replaced) | dropped, key=lambda i: -occurrence[i]):
        h = msg.headers[i]
        if i in dropped:
            edits.append(HeaderEdit(HeaderOp.DELETE, h.name, "", occurrence[i]))
            continue
        name, _, value = replaced[i].partition(":")
        value = value.lstrip(" \t")
        if name.strip().lower() == h.name.lower():
            edits.append(HeaderEdit(HeaderOp.CHANGE, h.name, value, occurrence[i]))
        else:
            edits.append(HeaderEdit(HeaderOp.DELETE, h.name, "", occurrence[i]))
            removed.add(i)
            inserts.append((i, 1, name.strip(), value))
    for i, texts in prepends.items():
        for order, text in enumerate(texts):
            name, _, value = text.partition(":")
            inserts.append((i, -len(texts) + order, name.strip(), value.lstrip(" \t")))
    # Position = headers kept above header i (after the deletes).
    kept_before = []
    kept = 0
    for i in range(len(msg.headers)):
        kept_before.append(kept)
        if i not in removed:
            kept += 1
    for i, _, name, value in sorted(inserts, key=lambda t: (-t[0], -t[1])):
        index = kept_before[i] + HIDDEN_TOP_HEADERS
        edits.append(HeaderEdit(HeaderOp.INSERT, name, value, index))
    return edits


def _problem(
    settings: HeadersMilterSettings, file: str, line: int, key: str, message: str, skipped: bool
) -> ConfigProblem:
    severity = "error" if settings.strict else "warning"
    return ConfigProblem(file, line, key, message, severity)


def build(ctx: ServiceContext) -> HeadersEngine | None:
    """Read and compile every table and YAML rule; report bad lines, skip them."""
    return build_from(ctx.settings, ctx.problems)


def build_from(settings: Settings, problems: list[ConfigProblem]) -> HeadersEngine | None:
    s = settings.milters.headers
    if not s.enabled:
        return None
    fallback = FallbackWorker(float(s.fallback_timeout))
    key = "milters.headers"
    # Each class of lines -> the setting its tables come from (Postfix's defaults).
    files = {
        LineClass.HEADER: "header_checks",
        LineClass.MIME: "header_checks" if s.mime_header_checks is None else "mime_header_checks",
        LineClass.NESTED: (
            "header_checks" if s.nested_header_checks is None else "nested_header_checks"
        ),
        LineClass.BODY: "body_checks",
    }
    loaded: dict[str, Table] = {}
    unreadable: set[str] = set()  # reported once, not once per class of lines
    tables: dict[LineClass, list[Table]] = {}
    for cls, field_name in files.items():
        context = Context.BODY if cls is LineClass.BODY else Context.HEADER
        tables[cls] = []
        paths: tuple[str, ...] = getattr(s, field_name)
        for i, path in enumerate(paths):
            dialect = (
                Dialect.PCRE
                if (path.endswith(".pcre") or s.table_type.value == "pcre")
                else Dialect.REGEXP
            )
            spec = f"{dialect.value}:{path}"
            if spec in unreadable:
                continue
            if spec not in loaded:
                try:
                    table = load_table(spec, fallback)
                except OSError as exc:
                    # At the config line naming the file (readable when the config loaded).
                    problems.append(settings.locations.problem(
                        f"{key}.{field_name}[{i}]", f"cannot read {path}: {exc.strerror}"
                    ))  # fmt: skip
                    unreadable.add(spec)
                    continue
                loaded[spec] = table
                for p in table.problems:
                    problems.append(_problem(s, path, p.line, "", p.message, p.skipped))
                _report_actions(s, table, context, problems)
            tables[cls].append(loaded[spec])
    rules: list[YamlRule] = []
    for n, spec_rule in enumerate(s.rules):
        rule_id = spec_rule.name or f"{key}.rules[{n}]"
        opts = re2.Options()
        opts.log_errors = False
        opts.case_sensitive = spec_rule.case_sensitive
        ci = re2.Options()
        ci.log_errors = False
        ci.case_sensitive = False
        try:
            pattern = re2.compile(spec_rule.match, opts)
            senders = [re2.compile(p, ci) for p in spec_rule.senders]
            recipients = [re2.compile(p, ci) for p in spec_rule.recipients]
        except re2.error as exc:  # validate_node reports it at load; belt and braces
            problems.append(settings.locations.problem(f"{key}.rules[{n}].match", str(exc)))
            continue
        action_text = f"{spec_rule.action.strip()} {spec_rule.text}".strip()
        context = Context.BODY if spec_rule.body else Context.HEADER
        rules.append(
            YamlRule(
                rule_id, spec_rule, pattern, senders, recipients, parse_action(action_text, context)
            )
        )
    return HeadersEngine(s, tables, rules, settings.trusted_networks, fallback)


def _report_actions(
    s: HeadersMilterSettings, table: Table, context: Context, problems: list[ConfigProblem]
) -> None:
    """Results Postfix would load but ignore at run time (unknown command, bad PREPEND)."""
    for rule in table.match_rules():
        if rule.max_sub:
            continue  # the text depends on the match; checked when it fires
        action = parse_action(rule.result.decode("utf-8", "replace"), context)
        if action.problem:
            problems.append(
                _problem(s, rule.loc.file, rule.loc.line, "", f"{action.problem}", skipped=False)
            )


MILTER = MilterSpec(
    name="headers",
    build=build,
    position=10,
    description="Postfix header_checks/body_checks tables and YAML rules, matched decoded",
)
