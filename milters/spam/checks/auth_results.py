"""Symbols from postwarden's own SPF, DKIM, DMARC and ARC verdicts.

The dkim milter writes one Authentication-Results header (RFC 8601) with our
authserv-id after deleting forged ones (section 5), so only a header with
our id is believed; others are the sender's claims. The policy daemon
PREPENDs Received-SPF (RFC 7208 section 9.1) with `receiver=` our host name;
only the topmost Received-SPF naming our receiver is believed.

What a milter sees, checked with the real Postfix fixture
(tests/integration/test_spam_e2e.py): the Received-SPF that smtpd PREPENDs
for the policy daemon at RCPT, and headers that milters earlier in
`smtpd_milters` added. So no Redis hand-over is needed for these verdicts.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

from milters.context import ServiceContext
from milters.spam.checks.api import Check, CheckContext, CheckSpec, SymbolDef, SymbolHit
from milters.spam.view import MessageView
from postwarden.config.sections.spam import SpamMilterSettings

SYMBOLS = {
    "R_SPF_ALLOW": SymbolDef(-0.2, "SPF pass"),
    "R_SPF_FAIL": SymbolDef(1.0, "SPF fail"),
    "R_SPF_SOFTFAIL": SymbolDef(0.5, "SPF softfail"),
    "R_SPF_NEUTRAL": SymbolDef(0.0, "SPF neutral"),
    "R_SPF_NA": SymbolDef(0.0, "no SPF record"),
    "R_SPF_DNSFAIL": SymbolDef(0.0, "SPF temporary error"),
    "R_SPF_PERMFAIL": SymbolDef(0.0, "SPF permanent error"),
    "R_DKIM_ALLOW": SymbolDef(-0.2, "DKIM signature verified"),
    "R_DKIM_REJECT": SymbolDef(1.0, "DKIM signature failed"),
    "R_DKIM_TEMPFAIL": SymbolDef(0.0, "DKIM temporary error"),
    "R_DKIM_PERMFAIL": SymbolDef(0.0, "DKIM permanent error"),
    "R_DKIM_NA": SymbolDef(0.0, "no DKIM signature"),
    "DMARC_POLICY_ALLOW": SymbolDef(-0.5, "DMARC pass"),
    "DMARC_POLICY_REJECT": SymbolDef(2.0, "DMARC fail, policy reject"),
    "DMARC_POLICY_QUARANTINE": SymbolDef(1.5, "DMARC fail, policy quarantine"),
    "DMARC_POLICY_SOFTFAIL": SymbolDef(0.1, "DMARC fail, policy none"),
    "DMARC_NA": SymbolDef(0.0, "no DMARC policy"),
    "ARC_ALLOW": SymbolDef(-1.0, "ARC chain valid"),
    "ARC_REJECT": SymbolDef(1.0, "ARC chain invalid"),
    "ARC_NA": SymbolDef(0.0, "no ARC chain"),
}

_SPF = {"pass": "R_SPF_ALLOW", "fail": "R_SPF_FAIL", "softfail": "R_SPF_SOFTFAIL",
        "neutral": "R_SPF_NEUTRAL", "none": "R_SPF_NA", "temperror": "R_SPF_DNSFAIL",
        "permerror": "R_SPF_PERMFAIL"}  # fmt: skip
_DKIM = {"pass": "R_DKIM_ALLOW", "fail": "R_DKIM_REJECT", "temperror": "R_DKIM_TEMPFAIL",
         "permerror": "R_DKIM_PERMFAIL", "neutral": "R_DKIM_PERMFAIL", "policy": "R_DKIM_PERMFAIL",
         "none": "R_DKIM_NA"}  # fmt: skip
_ARC = {"pass": "ARC_ALLOW", "fail": "ARC_REJECT", "none": "ARC_NA"}
_METHOD = re.compile(r"(?i)^\s*(spf|dkim|dmarc|arc)\s*=\s*([a-z]+)")
_AUTHSERV = re.compile(r'^\s*(?:\([^)]*\)\s*)*(?:"([^"]*)"|([^\s;()"]+))')
# The policy that applies: our dkim milter's policy.dmarc= (sp= already
# chosen for a subdomain), else another verifier's, else the comment's p=.
_APPLIED = re.compile(r"(?i)\bpolicy\.(?:dmarc|published-domain-policy)=(reject|quarantine|none)\b")
_POLICY = re.compile(r"(?i)\bp=(reject|quarantine|none)\b")
_RECEIVER = re.compile(r"(?i)\breceiver=\"?([^\s;\"]+)")


def authserv_id_of(value: str) -> str:
    m = _AUTHSERV.match(value)
    return (m.group(1) if m and m.group(1) is not None else m.group(2) if m else "").strip().lower()


def _clauses(value: str) -> list[str]:
    return [c.strip() for c in value.split(";")[1:] if c.strip()]


def build(ctx: ServiceContext, settings: SpamMilterSettings) -> Check:
    dkim_id = str(getattr(ctx.settings.milters.dkim, "authserv_id", "") or "")
    host = socket.getfqdn().lower()
    our_id = (settings.authserv_id or dkim_id or host).lower()
    receiver = (ctx.settings.policyd.spf.receiver or socket.getfqdn()).lower()
    receivers = {receiver, host, our_id}

    def auth_results(view: MessageView, cctx: CheckContext) -> Iterator[SymbolHit]:
        """SPF from our Received-SPF (or A-R spf=), DKIM/DMARC/ARC from our A-R."""
        seen: set[str] = set()
        for value in view.headers.get("authentication-results", []):
            if authserv_id_of(value) != our_id:
                continue
            for clause in _clauses(value):
                m = _METHOD.match(clause)
                if not m:
                    continue
                method, result = m.group(1).lower(), m.group(2).lower()
                if method == "dkim" and result in _DKIM:
                    d = re.search(r"header\.d=([^\s;]+)", clause)
                    yield SymbolHit(_DKIM[result], (d.group(1),) if d else ())
                elif method == "spf" and result in _SPF and "spf" not in seen:
                    seen.add("spf")
                    yield SymbolHit(_SPF[result])
                elif method == "arc" and result in _ARC:
                    yield SymbolHit(_ARC[result])
                elif method == "dmarc":
                    yield from _dmarc(result, clause)
        if "spf" not in seen:
            for value in view.headers.get("received-spf", [])[:1]:
                r = _RECEIVER.search(value)
                word = value.split(None, 1)[0].lower() if value.split() else ""
                if r and r.group(1).lower().rstrip(".") in receivers and word in _SPF:
                    yield SymbolHit(_SPF[word])

    return auth_results


def _dmarc(result: str, clause: str) -> Iterator[SymbolHit]:
    if result == "pass":
        yield SymbolHit("DMARC_POLICY_ALLOW")
    elif result == "fail":
        p = _APPLIED.search(clause) or _POLICY.search(clause)
        policy = p.group(1).lower() if p else "none"
        yield SymbolHit({"reject": "DMARC_POLICY_REJECT", "quarantine": "DMARC_POLICY_QUARANTINE"}
                        .get(policy, "DMARC_POLICY_SOFTFAIL"))  # fmt: skip
    elif result == "none":
        yield SymbolHit("DMARC_NA")


CHECK = CheckSpec(name="auth_results", build=build, symbols=SYMBOLS)
