"""ARC (RFC 8617): was this message authenticated before a forwarder changed it?

Sealing (`arc_seal`) adds our own ARC set to inbound mail we pass on (to an
external mailbox, a list), built from the Authentication-Results we wrote,
so the next receiver can see our verdicts even after SPF breaks. It is
dkimpy's `arc_sign` with its own RSA: slower than our signing path (about
6 ms per seal) but only forwarded mail pays it.

dkimpy verifies the chain (`dkim.arc_verify`); key records come through our
cached, budgeted lookup. The result is `arc=pass|fail|none` in
Authentication-Results (RFC 8617 section 10.1), and the sealer of the last
ARC set (`ARC-Seal` with the highest `i=`) is reported so DMARC enforcement
can trust a forwarder listed in `trusted_arc_sealers` (RFC 8617 section 7.2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.util import InvalidTagValueList, parse_tag_value

from milters.dkim.records import KeyTemporaryError
from milters.dkim.verify import LIB_LOG


@dataclass(frozen=True, slots=True)
class ArcResult:
    result: str  # pass | fail | none | temperror
    sealer: str = ""  # d= of the latest ARC-Seal
    instance: int = 0
    reason: str = ""


def latest_seal(headers: list[tuple[bytes, bytes]]) -> tuple[int, str]:
    """(i=, d=) of the ARC-Seal with the highest instance; (0, "") if none."""
    best = (0, "")
    for name, value in headers:
        if name.lower() != b"arc-seal":
            continue
        try:
            tags = parse_tag_value(value)
            i = int(tags.get(b"i", b"0"))
        except (InvalidTagValueList, ValueError):
            continue
        if i > best[0]:
            best = (i, tags.get(b"d", b"").decode("ascii", "replace").lower())
    return best


def verify_chain(raw: bytes, fetch: Callable[[str], str | None], min_key_bits: int) -> ArcResult:
    try:
        headers, _ = dkim.rfc822_parse(raw)
    except dkim.DKIMException as exc:
        return ArcResult("fail", reason=f"message not parseable: {exc}")
    instance, sealer = latest_seal([(bytes(n), bytes(v)) for n, v in headers])
    if instance == 0:
        return ArcResult("none")

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        text = fetch(name.decode("ascii", "replace"))
        return None if text is None else text.encode("ascii", "replace")

    try:
        cv, _, comment = dkim.arc_verify(raw, logger=LIB_LOG, dnsfunc=dnsfunc, minkey=min_key_bits)
    except KeyTemporaryError as exc:
        return ArcResult("temperror", sealer, instance, str(exc))
    except (dkim.DKIMException, ValueError, TypeError, IndexError, KeyError) as exc:
        return ArcResult("fail", sealer, instance, str(exc)[:120])
    if cv == dkim.CV_Pass:
        return ArcResult("pass", sealer, instance)
    return ArcResult("fail", sealer, instance, str(comment)[:120])


def seal(
    raw_with_our_ar: bytes, domain: str, selector: str, key: rsa.RSAPrivateKey, authserv_id: str,
    now: int,
) -> list[tuple[str, str]]:  # fmt: skip
    """The ARC set (name, value) to prepend, top first; [] when dkimpy
    declines (no Authentication-Results of ours, chain ended)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    lines = dkim.arc_sign(
        raw_with_our_ar, selector.encode(), domain.encode(), pem, authserv_id.encode(),
        timestamp=now, logger=LIB_LOG,
    )  # fmt: skip
    out = []
    for line in lines:
        name, _, value = bytes(line).decode("ascii", "replace").partition(":")
        out.append((name, value.strip()))
    return out
