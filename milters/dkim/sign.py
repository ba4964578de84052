"""Making a DKIM-Signature (RFC 6376 section 5): dkimpy canonicalises, OpenSSL signs.

The flow is dkimpy's own (`dkim.DKIM.sign`/`gen_header`) with one seam
changed: the header hash goes to `milters.dkim.crypto.Signer`, not to
dkimpy's pure-Python RSA. Canonicalisation, header selection (bottom-up, as
RFC 6376 section 5.4.2 says), folding and the handling of the empty `b=` tag
while hashing are dkimpy's functions, so what we sign is exactly what
dkimpy (and every other verifier) reconstructs.

Signatures are always `c=relaxed/relaxed`: Postfix hands milters headers
with the space after the colon normalised, so `simple` header
canonicalisation would be fragile, and relaxed survives re-folding by
relays (RFC 6376 section 3.4).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from dkim import fold, hash_headers
from dkim.canonicalization import CanonicalizationPolicy

from milters.dkim.crypto import Signer

RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
HEADER_NAME = b"DKIM-Signature"

RawHeaders = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class SignRequest:
    """What to sign with: d=, s=, the signer, the header names and times."""

    domain: str
    selector: str
    signer: Signer
    sign_headers: Sequence[str]
    oversign_headers: Sequence[str]
    timestamp: int
    expire_after: int = 0  # seconds; 0 = no x= tag


def header_list(headers: RawHeaders, sign: Sequence[str], oversign: Sequence[str]) -> list[bytes]:
    """The h= list: each configured header as often as it occurs, plus once
    more for oversigned ones (so none can be added; RFC 6376 section 8.15)."""
    counts: dict[bytes, int] = {}
    for name, _ in headers:
        low = name.lower()
        counts[low] = counts.get(low, 0) + 1
    extra = {h.lower().encode("ascii") for h in oversign}
    out: list[bytes] = []
    seen: set[bytes] = set()
    for h in sign:
        low = h.lower().encode("ascii")
        if low in seen:
            continue
        seen.add(low)
        times = counts.get(low, 0) + (1 if low in extra else 0)
        out.extend([low] * times)
    return out


def body_hash(body: bytes) -> bytes:
    """bh=: SHA-256 of the relaxed-canonical body (RFC 6376 section 3.7)."""
    return base64.b64encode(hashlib.sha256(RELAXED.canonicalize_body(body)).digest())


def sign(headers: RawHeaders, body: bytes, req: SignRequest) -> str:
    """The DKIM-Signature value (folded with CRLF+space, no trailing CRLF).

    `headers` are dkimpy's (name, value) pairs (`dkim.rfc822_parse`), `body`
    the body with CRLF line ends.
    """
    include = header_list(headers, req.sign_headers, req.oversign_headers)
    fields: list[tuple[bytes, bytes]] = [
        (b"v", b"1"),
        (b"a", req.signer.algorithm.encode("ascii")),
        (b"c", b"relaxed/relaxed"),
        (b"d", req.domain.encode("ascii")),
        (b"s", req.selector.encode("ascii")),
        (b"t", str(req.timestamp).encode("ascii")),
    ]
    if req.expire_after:
        fields.append((b"x", str(req.timestamp + req.expire_after).encode("ascii")))
    fields += [
        (b"h", b" : ".join(include)),  # spaces give fold() legal break points
        (b"bh", body_hash(body)),
        # A placeholder long enough that b= folds onto its own line, so
        # filling it in cannot re-fold the tags before it.
        (b"b", b"0" * 60),
    ]
    value = fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(HEADER_NAME))
    # dkimpy's hash_headers blanks b= itself (RFC 6376 section 3.7, step 2).
    h = hashlib.sha256()
    hash_headers(
        h, RELAXED, RELAXED.canonicalize_headers(list(headers)), include,
        (HEADER_NAME, b" " + value), dict(fields),
    )  # fmt: skip
    signature = req.signer.sign_digest(h.digest())
    fields[-1] = (b"b", base64.b64encode(signature))
    final: bytes = fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(HEADER_NAME))
    return final.decode("ascii").strip()
