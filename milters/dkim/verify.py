"""Verifying every DKIM-Signature of a message (RFC 6376 section 6).

dkimpy parses the message and the tag lists, validates the tags and
canonicalises headers and body (`hash_headers` blanks b= and selects the
signed headers bottom-up); the signature check itself is OpenSSL's
(`milters.dkim.crypto.PublicKey`), with parsed key records cached. The steps
are those of dkimpy's `verify_sig_process`, so the two agree; doing them here
keeps the clock injected and the key fetch cached and budgeted.

Each signature gets one of RFC 8601's results (section 2.7.1), decided here
so that the reasons are ours and stable:

- permerror: the signature or key cannot be used at all: malformed tag
  list, missing tags, bad base64, unknown algorithm, no key record, a
  revoked key (empty p=, RFC 6376 section 3.6.1) or an unusable key;
- temperror: the key record could not be fetched now (DNS timeout or
  failure, or the message's time budget ran out before its turn);
- fail: the signature is well formed but the body hash or the signature
  does not match, or it expired (x= in the past by our clock);
- policy: it verifies, but we do not accept it: `l=` leaves part of the body
  unsigned (anyone may append content, RFC 6376 section 8.2) or the RSA key
  is smaller than `min_key_bits` (RFC 8301);
- pass.

At most `max_signatures` signatures are evaluated (a message with 50
signatures costs 5 key lookups, not 50); the rest are left out and logged.
Nothing here raises on bad input: library errors about the message become
permerror for that one signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import dkim
from dkim import hash_headers
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import InvalidTagValueList, parse_tag_value

from milters.dkim.crypto import KeyRecordError, parse_key_record
from milters.dkim.records import KeyTemporaryError
from postwarden.budget import Budget

log = logging.getLogger("postwarden.milter.dkim")

# a= values we verify, with the key type (k=) each needs.
ACCEPTED_ALGORITHMS = {b"rsa-sha256": "rsa", b"ed25519-sha256": "ed25519"}


class LibraryLog:
    """dkimpy's logger: everything it says goes to debug.

    It logs a bad signature at ERROR, but a bad signature on inbound mail is
    an ordinary outcome that our Authentication-Results and decision line
    already report; an operator's error log is for our own faults.
    """

    def __init__(self) -> None:
        self._log = logging.getLogger("postwarden.milter.dkim.dkimpy")

    def isEnabledFor(self, level: int) -> bool:
        return self._log.isEnabledFor(logging.DEBUG) and level <= logging.DEBUG

    def debug(self, msg: object, *args: object) -> None:
        self._log.debug(msg, *args)

    info = warning = error = debug


LIB_LOG = LibraryLog()

# Malformed input surfaces from dkimpy and the codecs as these.
_INPUT_ERRORS = (
    dkim.DKIMException,
    InvalidTagValueList,
    InvalidCanonicalizationPolicyError,
    binascii.Error,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    UnicodeError,
)


@dataclass(frozen=True, slots=True)
class SignatureResult:
    """One signature's verdict, as Authentication-Results reports it."""

    result: str  # pass | fail | neutral | policy | temperror | permerror
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    b_prefix: str = ""
    reason: str = ""

    @property
    def passed(self) -> bool:
        return self.result == "pass"


@dataclass(frozen=True, slots=True)
class VerifyLimits:
    max_signatures: int = 5
    min_key_bits: int = 1024
    # Stop starting new work when less than this share of the budget is left,
    # so the verdict (with temperror for the rest) still makes it back.
    reserve: float = 0.1


def _text(value: bytes | None, limit: int = 253) -> str:
    if value is None:
        return ""
    return value.decode("ascii", "replace")[:limit]


def _b_prefix(tags: dict[bytes, bytes]) -> str:
    return re.sub(r"\s+", "", _text(tags.get(b"b"), 4096))[:8]


class ParsedMessage:
    """The message as dkimpy parses it, with canonical forms cached per
    algorithm (several signatures usually share one)."""

    def __init__(self, raw: bytes) -> None:
        headers, body = dkim.rfc822_parse(raw)
        self.headers: list[tuple[bytes, bytes]] = [(bytes(n), bytes(v)) for n, v in headers]
        self.body: bytes = body
        self._bodies: dict[bytes, bytes] = {}
        self._headers: dict[bytes, list[tuple[bytes, bytes]]] = {}

    def canonical_body(self, policy: CanonicalizationPolicy) -> bytes:
        key = policy.to_c_value()
        if key not in self._bodies:
            self._bodies[key] = policy.canonicalize_body(self.body)
        return self._bodies[key]

    def canonical_headers(self, policy: CanonicalizationPolicy) -> list[tuple[bytes, bytes]]:
        key = policy.to_c_value()
        if key not in self._headers:
            self._headers[key] = policy.canonicalize_headers(self.headers)
        return self._headers[key]


def verify_all(
    raw: bytes,
    fetch: Callable[[str, Budget], str | None],
    budget: Budget,
    now: float,
    limits: VerifyLimits,
) -> tuple[list[SignatureResult], int]:
    """Results for the first `max_signatures` signatures, and how many were skipped."""
    try:
        message = ParsedMessage(raw)
    except _INPUT_ERRORS as exc:
        count = raw.lower().count(b"\ndkim-signature:") + raw[:15].lower().startswith(
            b"dkim-signature:"
        )
        reason = f"message not parseable: {str(exc)[:120]}"
        return [SignatureResult("permerror", reason=reason)] * min(
            count, limits.max_signatures
        ), max(0, count - limits.max_signatures)
    sig_headers = [(n, v) for n, v in message.headers if n.lower() == b"dkim-signature"]
    results: list[SignatureResult] = []
    reserve = budget.seconds * limits.reserve if budget.seconds != float("inf") else 0.0
    for header in sig_headers[: limits.max_signatures]:
        if budget.remaining() <= reserve:
            results.append(SignatureResult("temperror", reason="time budget used up"))
            continue
        results.append(_verify_one(message, header, fetch, budget, now, limits.min_key_bits))
    return results, max(0, len(sig_headers) - limits.max_signatures)


def _verify_one(
    message: ParsedMessage,
    header: tuple[bytes, bytes],
    fetch: Callable[[str, Budget], str | None],
    budget: Budget,
    now: float,
    min_key_bits: int,
) -> SignatureResult:
    try:
        tags = parse_tag_value(header[1])
    except _INPUT_ERRORS as exc:
        return SignatureResult("permerror", reason=f"malformed signature: {str(exc)[:80]}")
    base = SignatureResult(
        "permerror",
        domain=_text(tags.get(b"d")).lower(),
        selector=_text(tags.get(b"s"), 63),
        algorithm=_text(tags.get(b"a"), 32),
        b_prefix=_b_prefix(tags),
    )

    def result(kind: str, reason: str = "") -> SignatureResult:
        return SignatureResult(
            kind, base.domain, base.selector, base.algorithm, base.b_prefix, reason[:120]
        )

    problem = _time_problem(tags, now)
    if problem:
        return result(*problem)
    try:
        # Times are checked above by our clock; dkimpy would use time.time().
        dkim.validate_signature_fields({k: v for k, v in tags.items() if k not in (b"t", b"x")})
        policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    except _INPUT_ERRORS as exc:
        return result("permerror", str(exc))
    if tags[b"a"] not in ACCEPTED_ALGORITHMS:
        # RFC 8301 section 3.1: rsa-sha1 signatures must not be considered valid.
        return result("permerror", f"algorithm {base.algorithm} is not accepted (RFC 8301)")
    name = f"{base.selector}._domainkey.{base.domain}"
    try:
        record = fetch(name, budget)
    except KeyTemporaryError as exc:
        return result("temperror", str(exc))
    if record is None:
        return result("permerror", "no key record")
    try:
        key = parse_key_record(record)
    except KeyRecordError as exc:
        return result("permerror", str(exc))
    if key.kind != ACCEPTED_ALGORITHMS[tags[b"a"]]:
        return result("permerror", f"a={base.algorithm} does not match the k={key.kind} key")
    budget.check("dkim verify")
    # RFC 6376 section 3.7: the body hash first ...
    body = message.canonical_body(policy)
    if b"l" in tags:
        body = body[: int(tags[b"l"])]
    try:
        claimed = base64.b64decode(re.sub(rb"\s+", b"", tags[b"bh"]))
        signature = base64.b64decode(re.sub(rb"\s+", b"", tags[b"b"]))
    except _INPUT_ERRORS:
        return result("permerror", "bh= or b= is not base64")
    if hashlib.sha256(body).digest() != claimed:
        return result("fail", "body hash mismatch")
    # ... then the signed headers (bottom-up) and this header with b= empty.
    include = [h.lower() for h in re.split(rb"\s*:\s*", tags[b"h"].strip())]
    if b"from" not in include:
        return result("permerror", "From is not signed (RFC 6376 section 5.4)")
    # A second From added by an attacker must break the signature (dkimpy
    # bug#644046): hash one From more than h= names.
    include.append(b"from")
    h = hashlib.sha256()
    hash_headers(h, policy, message.canonical_headers(policy), include, header, tags)
    if not key.verify_digest(signature, h.digest()):
        return result("fail", "signature did not verify")
    if key.kind == "rsa" and key.bits < min_key_bits:
        return result("policy", f"key too small ({key.bits} bits)")
    if b"l" in tags:
        unsigned = len(message.canonical_body(policy)) - int(tags[b"l"])
        if unsigned > 0:
            return result("policy", f"l= leaves {unsigned} body bytes unsigned")
    return result("pass")


# Signers' clocks drift; dkimpy allows the same 10 hours for t= in the future.
CLOCK_SLOP = 36000


def _time_problem(tags: dict[bytes, bytes], now: float) -> tuple[str, str] | None:
    """t= and x= checked by our clock (RFC 6376 section 3.5)."""
    t, x = tags.get(b"t"), tags.get(b"x")
    for name, value in ((b"t", t), (b"x", x)):
        if value is not None and not re.fullmatch(rb"\d{1,12}", value):
            return "permerror", f"{name.decode()}= value is not a decimal integer"
    if t is not None and int(t) > now + CLOCK_SLOP:
        return "permerror", "t= value is in the future"
    if x is not None and t is not None and int(x) < int(t):
        return "permerror", "x= value is less than t= value"
    if x is not None and int(x) < now:
        return "fail", "signature expired"
    return None
