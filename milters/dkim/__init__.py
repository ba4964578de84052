"""The dkim milter: signs outbound mail, verifies inbound mail (RFC 6376, RFC 8463).

Per message, one of two paths, chosen by where the message came from:

- **outbound** (SASL-authenticated, a client in `trusted_networks`, or a
  `{daemon_name}` listed in `sign_daemon_names`): sign with the key table
  (`milters.dkim.keys`) for the RFC 5322 From domain, one signature per
  algorithm whose key is active (RSA and Ed25519 both, if configured).
  Never signs a domain that has no key, nor a message that already carries
  a signature of ours (a chain of our own hosts), nor a body cut at
  max_body_size. When it does not sign, the decision line says why, like
  OpenDKIM's LogWhy.
- **inbound**: verify every DKIM-Signature (`milters.dkim.verify`), write one
  Authentication-Results header (`milters.dkim.authres`).

On both paths Authentication-Results headers that claim our authserv-id are
removed first (RFC 8601 section 5). The engine never raises on bad input
and keeps within the message's time budget: DNS lookups are cut to what is
left, and signatures past the budget are reported as temperror.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.util import InvalidTagValueList, parse_tag_value

from milters.context import MessageContext, ServiceContext
from milters.dkim import arc, authres, dmarc
from milters.dkim.keys import KeyTable
from milters.dkim.records import KeyRecords, KeyTemporaryError
from milters.dkim.sign import SignRequest, sign
from milters.dkim.verify import SignatureResult, VerifyLimits, verify_all
from milters.engine import MilterSpec, Needs
from milters.message import Action, Envelope, Header, HeaderEdit, HeaderOp, Message, Verdict
from postwarden.config.schema import Settings
from postwarden.config.sections.dkim import DkimMilterSettings, DmarcEnforcement
from postwarden.config.units import Network
from postwarden.dkim_keys import KeyFileError
from postwarden.errors import StoreUnavailable
from postwarden.replies import DMARC_REJECT
from postwarden.store.client import Store, unavailable_on_error

log = logging.getLogger("postwarden.milter.dkim")

SIGNATURE_HEADER = "DKIM-Signature"


@dataclass(frozen=True, slots=True)
class SignOutcome:
    """What the signing path did: the headers it adds, or why it added none."""

    edits: tuple[HeaderEdit, ...] = ()
    why_not: str = ""
    signed: tuple[str, ...] = ()  # "d=... s=... a=..." per signature


def from_domain(msg: Message) -> str:
    """The domain of the single RFC 5322 From address ("" when not exactly one)."""
    values = msg.get_all("From")
    if len(values) != 1:
        return ""
    addresses = [a for _, a in email.utils.getaddresses(values) if a]
    if len(addresses) != 1 or "@" not in addresses[0]:
        return ""
    return addresses[0].rpartition("@")[2].strip().lower().rstrip(".")


class DkimEngine:
    name = "dkim"
    needs = Needs(headers=True, body=True, add_headers=True, change_headers=True, quarantine=True)

    def __init__(
        self,
        settings: DkimMilterSettings,
        trusted: tuple[Network, ...],
        keys: KeyTable,
        records: KeyRecords,
        spf_receiver: str = "",
        store: Callable[[], Store] | None = None,
    ) -> None:
        self.spf_receiver = spf_receiver
        self.store = store  # Redis, opened on first use (the service's)
        self.settings = settings
        self.trusted = trusted
        self.keys = keys
        self.records = records
        self.authserv_id = settings.authserv_id or socket.getfqdn()
        self.limits = VerifyLimits(settings.max_signatures, settings.min_key_bits)
        self._sample_salt: bytes | None = None  # DMARC pct= sampling key, from Redis

    # -- the decision ------------------------------------------------------
    def origin(self, env: Envelope) -> str:
        """Why this message counts as ours to sign ("" = inbound)."""
        s = self.settings
        if s.sign_authenticated and env.authenticated:
            return "authenticated"
        ip = env.client_address
        if s.sign_trusted_networks and ip is not None and any(ip in n for n in self.trusted):
            return "trusted_networks"
        if env.daemon_name and env.daemon_name in s.sign_daemon_names:
            return f"daemon_name={env.daemon_name}"
        return ""

    def evaluate(self, msg: Message, env: Envelope, ctx: MessageContext) -> Verdict:
        edits: list[HeaderEdit] = authres.forged_removals(msg, self.authserv_id)
        details: dict[str, object] = {}
        if edits:
            details["removed_forged_authentication_results"] = len(edits)
        origin = self.origin(env)
        if origin:
            outcome = self.sign(msg, ctx)
            edits.extend(outcome.edits)
            details["origin"] = origin
            ctx.stats.add("milter.dkim.signed" if outcome.signed else "milter.dkim.not_signed")
            if outcome.signed:
                details["signed"] = list(outcome.signed)
                reason = "signed " + ", ".join(outcome.signed)
            else:
                details["not_signed"] = outcome.why_not
                reason = f"not signed: {outcome.why_not}"
            log.info("dkim origin=%s %s", origin, reason)
            return Verdict(reason=reason, header_edits=tuple(edits), details=details)
        if not self.settings.verify:
            reason = "inbound; verify off"
            if self.settings.sign:
                reason += "; not signed: client neither authenticated nor trusted"
            log.info("dkim %s", reason)
            return Verdict(reason=reason, header_edits=tuple(edits), details=details)
        raw = self._raw(msg)
        results, skipped = verify_all(
            raw, self.records.fetch, ctx.budget, ctx.clock.now(), self.limits
        )
        for r in results:
            ctx.stats.add(f"milter.dkim.dkim_{r.result}")
        summary = ", ".join(_short(r) for r in results) or "none"
        details["dkim"] = [_detail(r) for r in results]
        if skipped:
            details["signatures_not_evaluated"] = skipped
            summary += f" (+{skipped} signatures not evaluated)"
        reason = f"dkim={summary}"
        clauses = []
        arc_result = None
        if self.settings.arc:
            arc_result = (
                arc.verify_chain(
                    raw,
                    lambda name: self.records.fetch(name, ctx.budget),
                    self.settings.min_key_bits,
                )
                if msg.get_all("ARC-Seal")
                else arc.ArcResult("none")
            )
            clauses.append(authres.arc_clause(arc_result))
            details["arc"] = arc_result.result
            reason += f"; arc={arc_result.result}"
        verdict_action = Action.ACCEPT
        reply = None
        if self.settings.dmarc:
            dm = self._dmarc(msg, env, results, ctx)
            if dm is not None:
                action, note = self._enforce(dm, arc_result, msg)
                clauses.append(authres.dmarc_clause(dm, note))
                details["dmarc"] = dm.result
                ctx.stats.add(f"milter.dkim.dmarc_{dm.result}")
                reason += f"; dmarc={dm.result} p={dm.requested} dis={note}"
                if action is Action.REJECT:
                    verdict_action = Action.REJECT
                    reply = DMARC_REJECT.with_text(
                        f"Email rejected per DMARC policy for {dm.from_domain}"
                    )
                elif action is Action.QUARANTINE:
                    verdict_action = Action.QUARANTINE
        value = authres.header_value(self.authserv_id, results, clauses)
        edits.append(HeaderEdit(HeaderOp.INSERT, authres.HEADER, value, 0))
        if verdict_action is Action.ACCEPT and self._should_seal(msg, env):
            sealed = self._seal(msg, value, ctx)
            # Inserted bottom-up at the top, so they read ARC-Seal first.
            edits.extend(HeaderEdit(HeaderOp.INSERT, n, v, 0) for n, v in reversed(sealed))
            details["arc_sealed"] = bool(sealed)
        if self.settings.sign:
            reason += "; not signed: client neither authenticated nor trusted"
        log.info("dkim %s", reason)
        return Verdict(
            verdict_action, reason=reason, reply=reply, header_edits=tuple(edits), details=details
        )

    # -- ARC sealing -----------------------------------------------------------
    def _should_seal(self, msg: Message, env: Envelope) -> bool:
        s = self.settings
        if not s.arc_seal or msg.truncated:
            return False
        return not s.arc_seal_daemon_names or env.daemon_name in s.arc_seal_daemon_names

    def _seal(self, msg: Message, our_ar: str, ctx: MessageContext) -> list[tuple[str, str]]:
        s = self.settings
        key = self.keys.find(s.arc_seal_domain, s.arc_seal_selector)
        if key is None or not isinstance(key.signer.key, rsa.RSAPrivateKey):
            return []
        ctx.budget.check("arc seal")
        # Our A-R unfolded on top (dkimpy reads it to build the set; forged
        # ones claiming our id are dropped first, as the edits above do).
        kept = [
            h
            for h in msg.headers
            if not (
                h.name.lower() == "authentication-results"
                and authres.authserv_id_of(h.value) == self.authserv_id.lower()
            )
        ]
        view = Message((Header(authres.HEADER, " ".join(our_ar.split())), *kept), msg.body)
        try:
            return arc.seal(
                self._raw(view), key.domain, key.selector, key.signer.key, self.authserv_id,
                int(ctx.clock.now()),
            )  # fmt: skip
        except (dkim.DKIMException, ValueError) as exc:
            log.info("dkim arc seal skipped: %s", exc)
            return []

    # -- DMARC ---------------------------------------------------------------
    def _dmarc(
        self,
        msg: Message,
        env: Envelope,
        results: list[SignatureResult],
        ctx: MessageContext,
    ) -> dmarc.DmarcResult | None:
        domain = from_domain(msg)
        if not domain:
            return None

        def txt(name: str) -> list[str] | None:
            try:
                answer = self.records.txt(name, ctx.budget)
            except KeyTemporaryError as exc:
                raise dmarc.DmarcTemporaryError(str(exc)) from None
            return None if answer is None else answer[0]

        spf = dmarc.spf_from_header(msg, self.spf_receiver)
        return dmarc.evaluate(domain, results, spf, txt)

    def _enforce(
        self,
        dm: dmarc.DmarcResult,
        arc_result: arc.ArcResult | None,
        msg: Message,
    ) -> tuple[Action, str]:
        """(action, disposition) for a DMARC result (RFC 7489 section 6.6.4)."""
        if dm.result != "fail" or dm.requested == "none" or dm.policy is None:
            return Action.ACCEPT, "none"
        if self.settings.dmarc_enforcement is not DmarcEnforcement.ENFORCE:
            return Action.ACCEPT, "none"
        trusted = {d.lower() for d in self.settings.trusted_arc_sealers}
        if arc_result is not None and arc_result.result == "pass" and arc_result.sealer in trusted:
            return Action.ACCEPT, "none"  # a trusted forwarder vouched for it (RFC 8617 7.2)
        requested = dm.requested
        if dm.policy.pct < 100 and not self._in_share(dm.policy.pct, msg):
            requested = dmarc.NEXT_LOWER[requested]  # outside the pct= share
        if requested == "reject":
            return Action.REJECT, "reject"
        if requested == "none":
            return Action.ACCEPT, "none"
        if self.settings.dmarc_quarantine_hold:
            return Action.QUARANTINE, "quarantine"
        return Action.ACCEPT, "quarantine"

    def _in_share(self, pct: int, msg: Message) -> bool:
        """Whether this message gets the policy itself under pct=. Without
        Redis (no secret) it does not: the RFC says MUST NOT enact the policy
        on more than pct % of the mail, so the next-lower one is the safe side."""
        if self._sample_salt is None:
            try:
                if self.store is None:
                    raise StoreUnavailable("no Redis configured")
                with unavailable_on_error():
                    store = self.store()
                    key = store.keys.secret("dmarc_sample")
                    store.redis.set(key, secrets.token_hex(32), nx=True)
                    value = store.redis.get(key)
            except StoreUnavailable:
                log.warning("DMARC pct=%d: Redis unavailable, next-lower policy applied", pct)
                return False
            self._sample_salt = value if isinstance(value, bytes) else str(value).encode()
        return dmarc.sampled(pct, dmarc.sample_key(msg), self._sample_salt)

    # -- signing -----------------------------------------------------------
    def sign(self, msg: Message, ctx: MessageContext) -> SignOutcome:
        s = self.settings
        if not s.sign:
            return SignOutcome(why_not="signing is off (milters.dkim.sign)")
        if msg.truncated:
            return SignOutcome(why_not="body larger than max_body_size")
        domain = from_domain(msg)
        if not domain:
            return SignOutcome(why_not="no single From address")
        now = ctx.clock.now()
        today = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
        keys = self.keys.for_domain(domain, today)
        if not keys:
            return SignOutcome(why_not=f"no key for {domain}")
        if self._already_ours(msg):
            return SignOutcome(why_not="already carries our signature")
        try:
            headers, body = dkim.rfc822_parse(self._raw(msg))
        except dkim.DKIMException as exc:
            return SignOutcome(why_not=f"message not parseable: {exc}")
        edits = []
        signed = []
        for key in keys:
            ctx.budget.check("dkim sign")
            value = sign(
                headers,
                body,
                SignRequest(
                    key.domain,
                    key.selector,
                    key.signer,
                    s.sign_headers,
                    s.oversign_headers,
                    int(now),
                    int(s.signature_ttl),
                ),
            )
            edits.append(HeaderEdit(HeaderOp.INSERT, SIGNATURE_HEADER, value, 0))
            signed.append(f"d={key.domain} s={key.selector} a={key.signer.algorithm}")
        return SignOutcome(tuple(edits), "", tuple(signed))

    def _already_ours(self, msg: Message) -> bool:
        for value in msg.get_all(SIGNATURE_HEADER):
            try:
                tags = parse_tag_value(value.encode("utf-8", "surrogateescape"))
            except (InvalidTagValueList, ValueError):
                continue
            d = tags.get(b"d", b"").decode("ascii", "replace")
            sel = tags.get(b"s", b"").decode("ascii", "replace")
            if self.keys.is_ours(d, sel):
                return True
        return False

    @staticmethod
    def _raw(msg: Message) -> bytes:
        # Bare LF line ends become CRLF, as they would on the wire (RFC 5322).
        body = re.sub(rb"(?<!\r)\n", b"\r\n", msg.body)
        return msg.header_bytes() + b"\r\n" + body


def _short(r: SignatureResult) -> str:
    text = f"{r.result}"
    if r.domain:
        text += f" d={r.domain} s={r.selector}"
    if r.reason:
        text += f" ({r.reason})"
    return text


def _detail(r: SignatureResult) -> dict[str, str]:
    out = {"result": r.result, "d": r.domain, "s": r.selector, "a": r.algorithm, "b": r.b_prefix}
    if r.reason:
        out["reason"] = r.reason
    return out


def build(ctx: ServiceContext) -> DkimEngine | None:
    return build_from(ctx.settings, ctx)


def build_from(settings: Settings, ctx: ServiceContext) -> DkimEngine | None:
    s = settings.milters.dkim
    if not s.enabled:
        return None
    try:
        keys = KeyTable.load(s.keys)
    except KeyFileError as exc:  # the loader checked; the file changed since
        ctx.problems.append(settings.locations.problem("milters.dkim.keys", str(exc)))
        keys = KeyTable(())
    records = KeyRecords(
        lambda: ctx.resolver,
        lambda: ctx.store,
        float(settings.dns.timeout),
        float(s.key_cache_ttl),
    )
    return DkimEngine(
        s, settings.trusted_networks, keys, records, settings.policyd.spf.receiver,
        lambda: ctx.store,
    )  # fmt: skip


MILTER = MilterSpec(
    name="dkim",
    build=build,
    position=30,
    description="DKIM: signs outbound mail, verifies inbound, writes Authentication-Results",
    uses_store=True,
    uses_dns=True,
)
