"""The public-key operations of DKIM, done by OpenSSL (`cryptography`).

dkimpy canonicalises and hashes well, but its RSA is pure Python: about
6.4 ms per RSA-2048 signature against 0.28 ms through OpenSSL (measured for
issue 11), and its verification spends more time converting integers than
the check itself. So `milters.dkim.sign` and `milters.dkim.verify` use
dkimpy's canonicalisation and hand the finished SHA-256 digest to a
`Signer` or a `PublicKey` here.

- rsa-sha256: RSASSA-PKCS1-v1_5 over the SHA-256 digest (RFC 6376
  section 3.3.1, RFC 8017 section 8.2);
- ed25519-sha256: PureEdDSA over the SHA-256 digest (RFC 8463 section 3:
  the hash, not the data, is what Ed25519 signs).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from postwarden.dkim_keys import PrivateKey


@dataclass(frozen=True)
class Signer:
    """Signs a SHA-256 digest with one parsed private key (parsed once, reused)."""

    key: PrivateKey

    @property
    def algorithm(self) -> str:
        return "ed25519-sha256" if isinstance(self.key, ed25519.Ed25519PrivateKey) else "rsa-sha256"

    def sign_digest(self, digest: bytes) -> bytes:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        return self.key.sign(digest)


class KeyRecordError(ValueError):
    """A key record that cannot be used: the message says why (permerror)."""


@dataclass(frozen=True)
class PublicKey:
    """A parsed key record's key: `k=` type, the key and its size in bits."""

    kind: str  # "rsa" | "ed25519"
    key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    bits: int

    def verify_digest(self, signature: bytes, digest: bytes) -> bool:
        """True when `signature` signs the SHA-256 `digest` (see the module doc)."""
        try:
            if isinstance(self.key, rsa.RSAPublicKey):
                self.key.verify(
                    signature, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())
                )
            else:
                self.key.verify(signature, digest)
        except InvalidSignature:
            return False
        return True


@lru_cache(maxsize=1024)
def parse_key_record(record: str) -> PublicKey:
    """The key of a DKIM key record (RFC 6376 section 3.6.1; RFC 8463 section 4).

    Cached by record text: the same few keys sign most mail. RSA keys come
    as SubjectPublicKeyInfo (the standard) or bare PKCS#1 RSAPublicKey
    (some old generators); Ed25519 keys as the raw 32 bytes.
    """
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip(), "".join(value.split()))
    if tags.get("v", "DKIM1") != "DKIM1":
        raise KeyRecordError("key record v= is not DKIM1")
    if "p" not in tags:
        raise KeyRecordError("key record has no p=")
    if tags["p"] == "":
        raise KeyRecordError("key revoked")
    if tags.get("s", "*") not in ("*", "email"):
        raise KeyRecordError(f"key is not for email (s={tags['s']})")
    try:
        data = base64.b64decode(tags["p"], validate=True)
    except (binascii.Error, ValueError):
        raise KeyRecordError("key p= is not base64") from None
    kind = tags.get("k", "rsa")
    if kind == "ed25519":
        try:
            return PublicKey("ed25519", ed25519.Ed25519PublicKey.from_public_bytes(data), 256)
        except ValueError:
            raise KeyRecordError("key p= is not an Ed25519 key") from None
    if kind != "rsa":
        raise KeyRecordError(f"unknown key type k={kind}")
    key: object
    try:
        key = serialization.load_der_public_key(data)
    except (ValueError, TypeError):
        pem = b"-----BEGIN RSA PUBLIC KEY-----\n" + base64.encodebytes(data)
        try:
            key = serialization.load_pem_public_key(pem + b"-----END RSA PUBLIC KEY-----\n")
        except (ValueError, TypeError):
            raise KeyRecordError("key p= is not an RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise KeyRecordError("k=rsa but p= holds another kind of key")
    return PublicKey("rsa", key, key.key_size)
