"""DMARC (RFC 7489): does an aligned DKIM or SPF pass vouch for the From domain?

1. The RFC 5322 From domain's policy is the TXT record at `_dmarc.<domain>`,
   or, if there is none, at `_dmarc.<organisational domain>` (section 6.6.3),
   where the organisational domain comes from the Public Suffix List
   (`publicsuffixlist`, which ships the list; section 3.2).
2. Identifier alignment (section 3.1): a DKIM pass whose d= equals the From
   domain (strict, `adkim=s`) or shares its organisational domain (relaxed,
   the default); an SPF pass whose MAIL FROM domain does the same (`aspf`).
3. pass if either is aligned, fail otherwise; none without a policy;
   temperror when DNS did not answer.

The SPF result is the one postwarden's policy daemon reached: policyd
PREPENDs `Received-SPF`, and a milter sees that header as the first one of
the message (found with the real Postfix fixture: Postfix hides its own
Received header from milters and the PREPENDed header sits above it). Only
that topmost header is trusted, and only when it names our receiver;
a Received-SPF further down was written by someone else.

The policy used is `sp=` for a subdomain of the organisational domain whose
record was found at the organisational domain, else `p=`. With `pct=` below
100 only that share of failing mail gets it, the rest the next-lower policy
(section 6.6.4); which messages are in the share is decided from the
message itself keyed by a secret kept in Redis, so `postwarden scan` and
Postfix agree and a sender cannot pick its way out of the share.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

from milters.dkim.verify import SignatureResult
from milters.message import Message

POLICIES = ("none", "quarantine", "reject")


class DmarcTemporaryError(Exception):
    """The policy record could not be fetched (DNS timeout, SERVFAIL)."""


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """RFC 7489 section 3.2: the public suffix plus one label."""
    d = domain.lower().rstrip(".")
    return _psl().privatesuffix(d) or d


@dataclass(frozen=True, slots=True)
class Policy:
    p: str
    sp: str
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    found_at: str = ""  # the domain whose _dmarc record this is


def parse_record(text: str, found_at: str) -> Policy | None:
    """A DMARC record (section 6.3), None when it is not one (or unusable)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    if tags.get("v") != "DMARC1" or not text.lstrip().startswith("v"):
        return None
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        # Section 6.6.3: an invalid p= with a rua= is treated as p=none.
        if "rua" not in tags:
            return None
        p = "none"
    sp = tags.get("sp", "").lower()
    pct = tags.get("pct", "100")
    return Policy(
        p=p,
        sp=sp if sp in POLICIES else p,
        adkim="s" if tags.get("adkim", "r").lower() == "s" else "r",
        aspf="s" if tags.get("aspf", "r").lower() == "s" else "r",
        pct=int(pct) if pct.isdigit() and int(pct) <= 100 else 100,
        found_at=found_at,
    )


TxtLookup = Callable[[str], Sequence[str] | None]


def find_policy(from_domain: str, txt: TxtLookup) -> Policy | None:
    """The policy for `from_domain` (section 6.6.3); DmarcTemporaryError on DNS trouble."""
    candidates = [from_domain]
    org = organizational_domain(from_domain)
    if org != from_domain:
        candidates.append(org)
    for domain in candidates:
        records = [
            policy
            for text in (txt(f"_dmarc.{domain}") or ())
            if (policy := parse_record(text, domain)) is not None
        ]
        if len(records) == 1:  # more than one record: none applies (section 6.6.3)
            return records[0]
    return None


def aligned(domain: str, from_domain: str, mode: str) -> bool:
    a, b = domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    if not a:
        return False
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


@dataclass(frozen=True, slots=True)
class SpfFact:
    """What policyd decided about this message's MAIL FROM."""

    result: str  # pass | fail | softfail | neutral | none | temperror | permerror
    domain: str  # the MAIL FROM (or HELO) domain it was about


_ENVELOPE_FROM = re.compile(r'envelope-from="?[^"@;\s]*@([^";\s>]+)', re.IGNORECASE)
_RECEIVER = re.compile(r"receiver=([^;\s]+)", re.IGNORECASE)
_HELO = re.compile(r"helo=([^;\s]+)", re.IGNORECASE)


def spf_from_header(msg: Message, receiver: str) -> SpfFact | None:
    """The Received-SPF our policy daemon PREPENDed: the message's first header."""
    if not msg.headers or msg.headers[0].name.lower() != "received-spf":
        return None
    value = " ".join(msg.headers[0].value.split())
    m = _RECEIVER.search(value)
    if receiver and (m is None or m.group(1).lower() != receiver.lower()):
        return None
    result = value.split(None, 1)[0].lower() if value else ""
    domain_match = _ENVELOPE_FROM.search(value)
    if domain_match:
        domain = domain_match.group(1)
    else:
        helo = _HELO.search(value)
        domain = helo.group(1) if helo else ""
    return SpfFact(result, domain.lower())


@dataclass(frozen=True, slots=True)
class DmarcResult:
    result: str  # pass | fail | none | temperror
    from_domain: str
    policy: Policy | None = None
    disposition: str = "none"  # what the record asks for this message
    reason: str = ""

    @property
    def requested(self) -> str:
        """p= or sp= that applies to this From domain."""
        if self.policy is None:
            return "none"
        sub = self.from_domain != self.policy.found_at
        return self.policy.sp if sub else self.policy.p


NEXT_LOWER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


def sampled(pct: int, key: bytes, salt: bytes) -> bool:
    """Whether a message falls in a policy's pct= share (RFC 7489 section
    6.6.4). The RFC asks for a random sample; a keyed digest of the message's
    identity samples just as evenly, gives the same answer every time the
    same message is judged (Postfix, a retry, `postwarden scan`), and, keyed
    by this installation's secret, cannot be steered by a sender choosing
    its Message-ID."""
    if pct >= 100:
        return True
    h = hashlib.blake2b(key, digest_size=8, key=salt[:64]).digest()
    return int.from_bytes(h, "big") % 100 < pct


def sample_key(msg: Message) -> bytes:
    """What places a message in a pct= sample: its Message-ID, or its body
    when it has none (both the same under Postfix and under scan)."""
    mid = msg.get("Message-ID")
    return mid.strip().encode("utf-8", "surrogateescape") if mid else msg.body


def evaluate(
    from_domain: str, dkim: Sequence[SignatureResult], spf: SpfFact | None, txt: TxtLookup
) -> DmarcResult:
    try:
        policy = find_policy(from_domain, txt)
    except DmarcTemporaryError as exc:
        return DmarcResult("temperror", from_domain, reason=str(exc))
    if policy is None:
        return DmarcResult("none", from_domain)
    dkim_ok = any(r.passed and aligned(r.domain, from_domain, policy.adkim) for r in dkim)
    spf_ok = (
        spf is not None and spf.result == "pass" and aligned(spf.domain, from_domain, policy.aspf)
    )
    if dkim_ok or spf_ok:
        how = "aligned DKIM" if dkim_ok else "aligned SPF"
        return DmarcResult("pass", from_domain, policy, "none", how)
    result = DmarcResult("fail", from_domain, policy)
    return DmarcResult("fail", from_domain, policy, result.requested, "no aligned DKIM or SPF pass")
