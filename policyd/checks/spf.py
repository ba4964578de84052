"""SPF (RFC 7208) on the MAIL FROM and HELO identities, as policyd-spf does.

Postfix asks once per recipient; one message is evaluated once. Flow of a
RCPT request:

1. No client address, SASL-authenticated client, `trusted_networks`, or a
   whitelisted client / sender domain / HELO name: no evaluation (DUNNO).
2. The per-process instance cache (`ctx.state`, keyed by Postfix's
   `instance` attribute, SMTPD_POLICY_README) answers the second and later
   recipients of a message: a reject or defer is repeated, a header is not
   (one Received-SPF per message).
3. Each identity's result comes from the Redis cache (key: identity, client
   IP, domain, HELO; `cache_ttl`, shared by every MX host) or from pyspf,
   run in a bounded thread pool so the event loop never blocks. A temperror
   is never cached, nor a result whose records use the local-part macros
   (`%{s}`, `%{l}`), which the cache key does not cover.
4. The result maps to an action through `mailfrom_actions`/`helo_actions`.

DNS: pyspf looks names up through its module-level `spf.DNSLookup`. That name
is bound once, at import, to a dispatcher that routes each call to the
lookup function the *current thread* set for its evaluation (a ContextVar),
so concurrent evaluations never swap globals under one another. A thread
with nothing set falls through to pyspf's own lookup. The RFC 7208 section
4.6.4 limits are pyspf's module constants (10 DNS-querying terms, 2 void
lookups), checked by the tests; the per-query timeout and the per-request
budget are pyspf's `timeout` and `querytime`.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver
import spf

from policyd.check import BuiltCheck, CheckContext, CheckSpec
from policyd.decision import Decision, Verb
from policyd.protocol import PolicyRequest
from postwarden.addresses import dotted_domain_matches
from postwarden.config.errors import ConfigProblem
from postwarden.config.schema import Mode, Settings
from postwarden.config.sections.spf import HeloCheck, SpfAction, SpfResult, SpfSettings
from postwarden.errors import PostwardenError
from postwarden.logs import decision
from postwarden.replies import (
    SPF_FAIL,
    SPF_FAIL_DEFER,
    SPF_PERMERROR,
    SPF_PERMERROR_DEFER,
    SPF_TEMPERROR,
    Reply,
    printable,
)
from postwarden.resolver import make_resolver
from postwarden.store.client import unavailable_on_error

log = logging.getLogger("postwarden.policyd.spf")

NAME = "spf"
MAILFROM = "mailfrom"
HELO = "helo"
# Seconds past the budget before the event loop stops waiting for a thread
# (pyspf itself stops at `querytime`; this only covers a stuck thread).
_GRACE = 1.0
# Messages remembered per process for the instance cache (a few minutes of
# traffic on a busy host; an evicted instance is re-read from Redis).
_INSTANCE_CACHE_SIZE = 8192
# RFC 7208 section 4.3: a domain that cannot exist gives "none" at once.
_MAX_DOMAIN = 253
_LOCAL_PART_MACRO = re.compile(rb"%\{[sl]", re.IGNORECASE)
_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*$")


# -- DNS for pyspf ---------------------------------------------------------

LookupFn = Callable[[str, str, float], list[tuple[tuple[str, str], Any]]]
_current_lookup: contextvars.ContextVar[LookupFn | None] = contextvars.ContextVar(
    "spf_lookup", default=None
)
_pyspf_lookup = spf.DNSLookup


def _dispatch(name: str, qtype: str, strict: object = True, timeout: float = 20) -> Any:
    """pyspf's `DNSLookup` signature; routes to this thread's lookup."""
    fn = _current_lookup.get()
    if fn is None:
        return _pyspf_lookup(name, qtype, strict, timeout)
    return fn(name, qtype, timeout)


_install_lock = threading.Lock()


def _install_dispatcher() -> None:
    with _install_lock:
        if spf.DNSLookup is not _dispatch:
            spf.DNSLookup = _dispatch


_install_dispatcher()


def dns_name(text: str) -> dns.name.Name:
    """An absolute name from text, labels taken literally (SPF macros can put
    any byte in a label; `from_text` would read backslashes as escapes)."""
    text = text.rstrip(".")
    if not text:
        return dns.name.root
    return dns.name.Name(
        [label.encode("utf-8", "surrogateescape") for label in text.split(".")] + [b""]
    )


class DnsLookup:
    """pyspf's lookup contract on a dnspython resolver (the `dns.*` settings).

    Returns `[((name, qtype), value), ...]` as pyspf's own dnspython driver
    does: TXT values are tuples of bytes, MX `(preference, exchange)`,
    PTR/CNAME targets and A/AAAA addresses as text. No such name / no data is
    an empty list; a timeout or a server failure raises `spf.TempError`.
    """

    def __init__(self, resolver: dns.resolver.Resolver) -> None:
        self.resolver = resolver

    def __call__(self, name: str, qtype: str, timeout: float) -> list[tuple[tuple[str, str], Any]]:
        try:
            qname = dns_name(name)
        except dns.exception.DNSException:
            return []  # a label over 63 or a name over 255 octets cannot exist
        try:
            answer = self.resolver.resolve(
                qname, qtype, lifetime=max(0.01, float(timeout)), search=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
            return []
        except dns.exception.Timeout as exc:
            raise spf.TempError(f"DNS timeout looking up {name} {qtype}") from exc
        except dns.resolver.NoNameservers as exc:
            if _cname_loop(exc):
                # A CNAME loop never resolves: RFC 1034 section 3.6.2 calls it an
                # error and RFC 7208 section 5.5 skips such names; treating it
                # as no data keeps it from deferring mail for ever.
                return []
            raise spf.TempError(f"DNS error looking up {name} {qtype}: {exc}") from exc
        except dns.exception.DNSException as exc:
            raise spf.TempError(f"DNS error looking up {name} {qtype}: {exc}") from exc
        out: list[tuple[tuple[str, str], Any]] = []
        rrset = answer.rrset
        if rrset is None:
            return out
        for rdata in rrset:
            if qtype in ("A", "AAAA"):
                value: Any = rdata.address
            elif qtype == "MX":
                value = (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))
            elif qtype in ("PTR", "CNAME"):
                value = rdata.target.to_text(omit_final_dot=True)
            elif qtype in ("TXT", "SPF"):
                value = tuple(rdata.strings)
            else:
                continue
            out.append(((name, qtype), value))
        return out


def _cname_loop(exc: dns.resolver.NoNameservers) -> bool:
    errors = exc.kwargs.get("errors") or []
    return bool(errors) and all(
        isinstance(err[3], dns.message.ChainTooLong) for err in errors if len(err) > 3
    )


# -- one identity ------------------------------------------------------------


class SpfEvaluationError(PostwardenError):
    """check_host() crashed: our bug or pyspf's, not the sender's record."""


@dataclasses.dataclass(frozen=True, slots=True)
class Evaluation:
    """The outcome of check_host() for one identity, as cached in Redis."""

    identity: str
    result: SpfResult
    explanation: str = ""
    mechanism: str = ""
    problem: str = ""
    cacheable: bool = True

    def to_json(self) -> str:
        return json.dumps(
            {"r": self.result, "e": self.explanation, "m": self.mechanism, "p": self.problem},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, identity: str, text: str | bytes) -> Evaluation | None:
        try:
            data = json.loads(text)
            return cls(
                identity, SpfResult(data["r"]), str(data["e"]), str(data["m"]), str(data["p"])
            )
        except (ValueError, KeyError, TypeError):
            return None  # an old or foreign encoding: evaluate afresh


def domain_problem(domain: str) -> str:
    """Why `domain` cannot be an SPF target (RFC 7208 section 4.3), or ""."""
    if not domain:
        return "no domain"
    if domain.startswith("["):
        return "address literal"
    if len(domain) > _MAX_DOMAIN:
        return "domain name too long"
    labels = domain.split(".")
    if len(labels) < 2:
        return "not a fully qualified domain name"
    if any(not label or len(label) > 63 for label in labels):
        return "malformed domain name"
    if any(not c.isprintable() or c.isspace() for c in domain):
        return "invalid characters in domain"
    return ""


def ascii_domain(domain: str) -> str:
    """The A-label form of a (possibly SMTPUTF8) domain; "" if it has none."""
    domain = domain.rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def evaluate(
    ip: str,
    sender: str,
    helo: str,
    identity: str,
    lookup: LookupFn,
    *,
    receiver: str,
    query_timeout: float,
    budget: float,
) -> Evaluation:
    """check_host() for one identity with pyspf; blocking.

    A crash inside the evaluation (a bug in pyspf or in our DNS hook) raises
    SpfEvaluationError: it says nothing about the sender's record, so it is
    neither a permerror nor cached; the server answers with `on_error`.

    `identity` "helo" checks `postmaster@<helo>` (RFC 7208 section 2.3);
    "mailfrom" checks `sender` (for a null sender the caller passes the
    HELO identity instead, section 2.4). `budget` bounds the whole
    evaluation (pyspf's `querytime`), `query_timeout` each DNS query.
    """
    if identity == HELO:
        local, domain = "postmaster", helo
    else:
        local, _, domain = sender.rpartition("@")
        if not local or "@" in local:
            local = "postmaster"  # RFC 7208 section 4.3: no local part
    domain = ascii_domain(domain)
    problem = domain_problem(domain)
    if problem:
        return Evaluation(identity, SpfResult.NONE, problem=problem)
    try:
        query = spf.query(
            i=ip,
            s=f"{local}@{domain}",
            h=helo or "unknown",
            receiver=receiver,
            timeout=query_timeout,
            querytime=budget,
        )
        # With querytime set pyspf uses it as the per-query timeout too;
        # each query gets at most query_timeout of the remaining budget.
        query.timeout = min(query_timeout, budget)
        token = _current_lookup.set(lookup)
        try:
            result, _code, explanation = query.check()
        finally:
            _current_lookup.reset(token)
    except spf.TempError as exc:  # pyspf's own DNS failure escaping check()
        return Evaluation(
            identity, SpfResult.TEMPERROR, str(exc), problem="DNS error", cacheable=False
        )
    except spf.PermError as exc:  # a record pyspf could not interpret
        return Evaluation(identity, SpfResult.PERMERROR, str(exc), problem=printable(str(exc)))
    except Exception as exc:
        raise SpfEvaluationError(f"SPF evaluation of {domain} crashed: {exc!r}") from exc
    try:
        outcome = SpfResult(result)
    except ValueError:
        outcome = SpfResult.PERMERROR  # pyspf's "ambiguous" (harsh mode only) and the like
    return Evaluation(
        identity,
        outcome,
        printable(str(explanation)),
        mechanism=printable(str(getattr(query, "mechanism", "") or "")),
        problem=printable(str(getattr(query, "prob", "") or ""))
        if outcome in (SpfResult.PERMERROR, SpfResult.TEMPERROR)
        else "",
        cacheable=outcome is not SpfResult.TEMPERROR and not _uses_local_part(query.cache),
    )


def _uses_local_part(cache: Mapping[tuple[str, str], list[Any]]) -> bool:
    """Whether a TXT record this evaluation read uses %{s} or %{l}."""
    for (_name, qtype), values in cache.items():
        if qtype != "TXT":
            continue
        for value in values:
            data = b"".join(value) if isinstance(value, tuple | list) else value
            if isinstance(data, str):
                data = data.encode("utf-8", "replace")
            if _LOCAL_PART_MACRO.search(data):
                return True
    return False


# -- Received-SPF (RFC 7208 section 9.1) -----------------------------------


def _value(text: str) -> str:
    """A key-value value: dot-atom as is, else a quoted-string."""
    text = printable(text, 255)
    if _DOT_ATOM.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    text = printable(text)
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def header_comment(ev: Evaluation, domain: str, ip: str) -> str:
    if ev.result == "pass":
        return f"domain of {domain} designates {ip} as permitted sender"
    if ev.result == "fail":
        return f"domain of {domain} does not designate {ip} as permitted sender"
    if ev.result == "softfail":
        return f"domain of {domain} discourages use of {ip} as a sender"
    if ev.result == "neutral":
        return f"{ip} is neither permitted nor denied by domain of {domain}"
    if ev.result == "none":
        if ev.problem:
            return f"no SPF check for {domain or 'an empty domain'}: {ev.problem}"
        return f"domain of {domain} does not publish SPF"
    if ev.result == "permerror":
        return f"permanent error in processing domain of {domain}: {ev.problem or 'error'}"
    return f"temporary error in processing during lookup of {domain}"


def received_spf(ev: Evaluation, *, ip: str, sender: str, helo: str, receiver: str) -> str:
    """`Received-SPF: result (comment) key=value; ...; identity=...`."""
    domain = helo if ev.identity == HELO else sender.rpartition("@")[2]
    parts = [f"client-ip={ip};"]
    if ev.identity == MAILFROM and sender:
        parts.append(f"envelope-from={_value(sender)};")
    if helo:
        parts.append(f"helo={_value(helo)};")
    parts.append(f"receiver={_value(receiver)};")
    if ev.mechanism and ev.result in ("pass", "fail", "softfail", "neutral"):
        parts.append(f"mechanism={_value(ev.mechanism)};")
    if ev.problem and ev.result in ("permerror", "temperror"):
        parts.append(f"problem={_value(ev.problem)};")
    parts.append(f"identity={ev.identity}")
    comment = _comment(f"{receiver}: {header_comment(ev, domain, ip)}")
    return f"Received-SPF: {ev.result} ({comment}) " + " ".join(parts)


# -- the check ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Remembered:
    """What the first recipient of a message got, for the later ones."""

    fingerprint: tuple[str, str, str]
    decision: Decision | None


class _InstanceCache:
    def __init__(self, size: int = _INSTANCE_CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[str, _Remembered] = OrderedDict()

    def get(self, instance: str) -> _Remembered | None:
        item = self._items.get(instance)
        if item is not None:
            self._items.move_to_end(instance)
        return item

    def put(self, instance: str, item: _Remembered) -> None:
        self._items[instance] = item
        self._items.move_to_end(instance)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


# Checks later in the pipeline (greylisting's `spf_pass_domains`) read this
# message's MAIL FROM result here instead of evaluating SPF again: a bounded
# mapping in `ctx.state[MAILFROM_NOTE]` from `mailfrom_note_key(req)` to the
# result word. Only evaluated MAIL FROM identities are noted (not skips).
MAILFROM_NOTE = "spf.mfrom_results"


def mailfrom_note_key(req: PolicyRequest) -> str:
    return f"{req.instance}/{req.client_address_raw}/{req.sender.lower()}"


def note_mailfrom_result(ctx: CheckContext, req: PolicyRequest, result: str) -> None:
    if not req.instance:
        return
    notes = ctx.state.setdefault(MAILFROM_NOTE, OrderedDict())
    assert isinstance(notes, OrderedDict)
    notes[mailfrom_note_key(req)] = result
    while len(notes) > _INSTANCE_CACHE_SIZE:
        notes.popitem(last=False)


class SpfCheck:
    """The policy check; its settings, resolver and thread pool are fixed at build."""

    def __init__(
        self,
        settings: Settings,
        resolver: dns.resolver.Resolver | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.settings = settings
        self.spf: SpfSettings = settings.policyd.spf
        self.lookup = DnsLookup(resolver or make_resolver(settings.dns))
        self.executor = executor or ThreadPoolExecutor(
            max_workers=self.spf.threads, thread_name_prefix="spf"
        )
        self.receiver = self.spf.receiver or socket.gethostname() or "localhost"
        self.actions = {MAILFROM: self.spf.actions_for(MAILFROM), HELO: self.spf.actions_for(HELO)}
        self.warn = self.spf.mode is Mode.WARN

    # -- request entry ---------------------------------------------------------
    async def run(self, req: PolicyRequest, ctx: CheckContext) -> Decision | None:
        ip = req.client_address
        if ip is None:
            self._log(req, result="none", action="dunno", reason="no client address")
            return None
        skip = self._skip_reason(req, ip)
        if skip:
            log.debug("spf: skipped (%s) for %s", skip, ip)
            return None
        cache: _InstanceCache = ctx.state.setdefault(NAME, _InstanceCache())  # type: ignore[assignment]
        sender = req.sender.strip()
        helo = req.helo_name.strip().rstrip(".")
        fingerprint = (str(ip), sender.lower(), helo.lower())
        if req.instance:
            seen = cache.get(req.instance)
            if seen is not None and seen.fingerprint == fingerprint:
                return self._repeat(seen.decision)
        answer = await self._decide(req, ctx, str(ip), sender, helo)
        if req.instance:
            cache.put(req.instance, _Remembered(fingerprint, answer))
        return answer

    def _skip_reason(
        self, req: PolicyRequest, ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> str:
        s = self.spf
        if s.skip_authenticated and req.authenticated:
            return "authenticated"
        if s.skip_trusted_networks and any(ip in net for net in self.settings.trusted_networks):
            return "trusted network"
        if any(ip in net for net in s.whitelist.clients):
            return "whitelisted client"
        domain = req.sender_domain.rstrip(".")
        if domain and dotted_domain_matches(domain, s.whitelist.sender_domains):
            return "whitelisted sender domain"
        return ""

    def _repeat(self, remembered: Decision | None) -> Decision | None:
        """Later recipients: the same refusal; no second header (RFC 7208 9.1
        asks for one Received-SPF per message); in warn mode nothing, so the
        pipeline's warning header is not repeated either."""
        if remembered is None or self.warn or not remembered.verb.decisive:
            return None
        return remembered

    # -- evaluation --------------------------------------------------------------
    async def _decide(
        self, req: PolicyRequest, ctx: CheckContext, ip: str, sender: str, helo: str
    ) -> Decision | None:
        deadline = time.monotonic() + float(self.spf.time_budget)
        if self._helo_whitelisted(helo) and await self._helo_resolves_to(helo, ip, deadline):
            log.debug("spf: skipped (whitelisted HELO %s) for %s", helo, ip)
            return None
        if not sender:
            if not helo:
                self._log(req, result="none", action="dunno", reason="null sender and no HELO")
                return None
            ev, source = await self._evaluation(ctx, HELO, ip, sender, helo, deadline)
            return self._act(req, ctx, ev, ev, ip, sender, helo, source)
        helo_ev = None
        if self.spf.helo_check is HeloCheck.ALWAYS and helo:
            helo_ev, source = await self._evaluation(ctx, HELO, ip, sender, helo, deadline)
            helo_action = self.actions[HELO][helo_ev.result]
            if helo_action not in (SpfAction.PREPEND, SpfAction.IGNORE):
                return self._act(req, ctx, helo_ev, helo_ev, ip, sender, helo, source)
        ev, source = await self._evaluation(ctx, MAILFROM, ip, sender, helo, deadline)
        note_mailfrom_result(ctx, req, ev.result)
        header_ev = ev
        if helo_ev is not None and ev.result == "none" and helo_ev.result != "none":
            header_ev = helo_ev  # policyd-spf: the HELO result says more than "none"
        return self._act(req, ctx, ev, header_ev, ip, sender, helo, source, helo_ev)

    async def _evaluation(
        self, ctx: CheckContext, identity: str, ip: str, sender: str, helo: str, deadline: float
    ) -> tuple[Evaluation, str]:
        domain = helo.lower() if identity == HELO else sender.rpartition("@")[2].lower()
        ttl = float(self.spf.cache_ttl)
        store: Any = ctx.store
        key = store.keys.spf_result(identity, ip, domain, helo.lower()) if ttl > 0 else ""
        if key:
            with unavailable_on_error():
                raw = await store.redis.get(key)
            if raw is not None:
                cached = Evaluation.from_json(identity, raw)
                if cached is not None:
                    return cached, "cache"
        ev = await self._in_thread(identity, ip, sender, helo, deadline)
        if key and ev.cacheable and ev.result != "temperror":
            with unavailable_on_error():
                await store.redis.set(key, ev.to_json(), px=max(1, int(ttl * 1000)))
        return ev, "dns"

    async def _in_thread(
        self, identity: str, ip: str, sender: str, helo: str, deadline: float
    ) -> Evaluation:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Evaluation(
                identity, SpfResult.TEMPERROR, "SPF time budget exhausted", cacheable=False
            )
        loop = asyncio.get_running_loop()

        def work() -> Evaluation:
            # The budget counts from the request, so time spent queued for a
            # thread (all `threads` busy) is spent too.
            left = deadline - time.monotonic()
            if left <= 0:
                return Evaluation(
                    identity, SpfResult.TEMPERROR, "SPF time budget exhausted", cacheable=False
                )
            return evaluate(
                ip, sender, helo, identity, self.lookup,
                receiver=self.receiver,
                query_timeout=float(self.spf.query_timeout),
                budget=left,
            )  # fmt: skip

        job = loop.run_in_executor(self.executor, work)
        try:
            return await asyncio.wait_for(job, remaining + _GRACE)
        except TimeoutError:
            return Evaluation(
                identity, SpfResult.TEMPERROR, "SPF time budget exhausted", cacheable=False
            )

    def _helo_whitelisted(self, helo: str) -> bool:
        names = self.spf.whitelist.helo_names
        return bool(names and helo) and dotted_domain_matches(helo.lower(), names)

    async def _helo_resolves_to(self, helo: str, ip: str, deadline: float) -> bool:
        """policyd-spf's HELO whitelist: the name must resolve to the client."""
        qtype = "AAAA" if ":" in ip else "A"
        timeout = min(float(self.spf.query_timeout), max(0.01, deadline - time.monotonic()))
        loop = asyncio.get_running_loop()
        try:
            answers = await asyncio.wait_for(
                loop.run_in_executor(self.executor, self.lookup, helo, qtype, timeout),
                timeout + _GRACE,
            )
        except (spf.TempError, TimeoutError):
            return False
        wanted = ipaddress.ip_address(ip)
        for _key, address in answers:
            try:
                if ipaddress.ip_address(address) == wanted:
                    return True
            except ValueError:
                continue
        return False

    # -- result -> action ----------------------------------------------------------
    def _act(
        self,
        req: PolicyRequest,
        ctx: CheckContext,
        ev: Evaluation,
        header_ev: Evaluation,
        ip: str,
        sender: str,
        helo: str,
        source: str,
        helo_ev: Evaluation | None = None,
    ) -> Decision | None:
        action = self.actions[ev.identity][ev.result]
        domain = helo if ev.identity == HELO else sender.rpartition("@")[2]
        reason = f"spf {ev.identity}={ev.result}"
        answer: Decision | None
        if action is SpfAction.REJECT:
            base = SPF_PERMERROR if ev.result in ("permerror", "temperror") else SPF_FAIL
            answer = Decision(
                Verb.REJECT, self._reply(base, "rejected", ev, domain, ip), reason=reason
            )
        elif action is SpfAction.DEFER:
            if ev.result == "temperror":
                base = SPF_TEMPERROR
            elif ev.result == "permerror":
                base = SPF_PERMERROR_DEFER
            else:
                base = SPF_FAIL_DEFER
            answer = Decision(
                Verb.DEFER, self._reply(base, "deferred", ev, domain, ip), reason=reason
            )
        elif action is SpfAction.QUARANTINE:
            answer = Decision(
                Verb.HOLD, text=f"SPF {ev.result} for {printable(domain, 100)}", reason=reason
            )
        elif action is SpfAction.PREPEND:
            header = received_spf(
                header_ev, ip=ip, sender=sender, helo=helo, receiver=self.receiver
            )
            answer = Decision(Verb.PREPEND, header=header, reason=reason)
        else:
            answer = None
        # One count per message and identity for `postwarden stat` (buffered).
        ctx.stats.add(f"spf_{ev.result}")
        fields: dict[str, object] = {"identity": ev.identity, "result": ev.result}
        if helo_ev is not None and helo_ev is not ev:
            fields["helo_result"] = helo_ev.result
        self._log(req, action=action.value, domain=domain, source=source, **fields)
        return answer

    def _reply(self, base: Reply, verb: str, ev: Evaluation, domain: str, ip: str) -> Reply:
        explanation = ev.explanation or base.text
        text = self.spf.reject_text.format(
            action=verb,
            result=ev.result,
            explanation=explanation,
            identity=ev.identity,
            domain=printable(domain, 255),
            ip=ip,
        )
        return base.with_text(printable(text, 450) or base.text)

    def _log(self, req: PolicyRequest, **fields: object) -> None:
        if not log.isEnabledFor(logging.INFO):
            return  # the line is built only when someone reads it
        line: dict[str, object] = {"check": NAME, "queue_id": req.queue_id}
        line.update(fields)
        line.setdefault("client", req.client_address_raw)
        if req.helo_name and "helo" not in line:
            line["helo"] = printable(req.helo_name, 100)
        decision(log, line)


def build(settings: Settings, problems: list[ConfigProblem]) -> BuiltCheck | None:
    """The SPF check, or None when `policyd.spf.enabled` is false."""
    s = settings.policyd.spf
    if not s.enabled:
        return None
    if float(s.time_budget) >= float(settings.policyd.request_timeout):
        problems.append(
            settings.locations.problem(
                "policyd.spf.time_budget",
                f"{float(s.time_budget):g}s is not below policyd.request_timeout "
                f"({float(settings.policyd.request_timeout):g}s): a slow SPF lookup "
                "would end in on_error instead of temperror",
                severity="warning",
            )
        )  # fmt: skip
    check = SpfCheck(settings)
    return BuiltCheck(name=NAME, run=check.run, mode=s.mode)


CHECK = CheckSpec(
    name=NAME,
    build=build,
    position=40,
    description="SPF (RFC 7208) on MAIL FROM and HELO, Received-SPF header",
)
