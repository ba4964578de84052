"""DKIM private key files: reading, checking and writing them.

One home for the key-file format, shared by the config loader (a missing,
unreadable or mismatched key is a config error with file:line), the dkim
milter (which signs with the loaded key) and `postwarden dkim keygen`.

Formats read: PEM (PKCS#1 "RSA PRIVATE KEY", as `opendkim-genkey` writes,
or PKCS#8 for RSA and Ed25519) and, for Ed25519, dkimpy's `dknewkey` format
(the 32-byte seed in base64 on one line). Keys are written as PKCS#8 PEM.
The public half is what goes into DNS: RSA as SubjectPublicKeyInfo DER in
base64 (RFC 6376 section 3.6.1), Ed25519 as the raw 32 bytes in base64
(RFC 8463 section 4).
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from postwarden.config.files import read_file

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
MIN_RSA_BITS = 1024  # RFC 8301 section 3.2: verifiers must refuse smaller keys


class KeyFileError(ValueError):
    """A key file cannot be used; the message says why (the loader adds file:line)."""


def key_type(algorithm: str) -> str:
    """The DNS k= value of a signing algorithm: "rsa" or "ed25519"."""
    return "ed25519" if algorithm.startswith("ed25519") else "rsa"


def read_private_key(path: str | os.PathLike[str], algorithm: str) -> PrivateKey:
    """Load `path` and check that it holds a key for `algorithm`."""
    try:
        data = read_file(path)  # a regular file of bounded size
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    return parse_private_key(data, algorithm, str(path))


def parse_private_key(data: bytes, algorithm: str, where: str = "key") -> PrivateKey:
    if algorithm not in ALGORITHMS:
        raise KeyFileError(f"unknown algorithm {algorithm!r}: use {' or '.join(ALGORITHMS)}")
    key: object
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{where} is not a readable PEM private key: {exc}") from None
    else:
        try:
            seed = base64.b64decode(data.strip(), validate=True)
        except (binascii.Error, ValueError):
            seed = b""
        if len(seed) != 32:
            raise KeyFileError(f"{where} is neither a PEM key nor a base64 Ed25519 seed")
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    wanted = key_type(algorithm)
    if isinstance(key, rsa.RSAPrivateKey):
        if wanted != "rsa":
            raise KeyFileError(f"{where} holds an RSA key, but algorithm is {algorithm}")
        if key.key_size < MIN_RSA_BITS:
            raise KeyFileError(f"{where}: RSA key of {key.key_size} bits is too small (RFC 8301)")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        if wanted != "ed25519":
            raise KeyFileError(f"{where} holds an Ed25519 key, but algorithm is {algorithm}")
        return key
    raise KeyFileError(f"{where} holds a {type(key).__name__}, not an RSA or Ed25519 key")


def public_key_b64(key: PrivateKey) -> str:
    """The p= value of the DNS record for `key`."""
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        der = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    return base64.b64encode(der).decode("ascii")


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """The TXT record publishing a key at `<selector>._domainkey.<domain>`."""

    name: str
    value: str

    def strings(self) -> list[str]:
        """The value as 255-byte character-strings (RFC 1035 section 3.3.14)."""
        return [self.value[i : i + 255] for i in range(0, len(self.value), 255)] or [""]

    def zone_line(self) -> str:
        quoted = " ".join(f'"{s}"' for s in self.strings())
        return f"{self.name}. IN TXT ( {quoted} )"


def dns_record(domain: str, selector: str, key: PrivateKey) -> DnsRecord:
    k = "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa"
    return DnsRecord(f"{selector}._domainkey.{domain}", f"v=DKIM1; k={k}; p={public_key_b64(key)}")


def generate_key(algorithm: str, bits: int = 2048) -> PrivateKey:
    if key_type(algorithm) == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if bits < MIN_RSA_BITS:
        raise KeyFileError(f"RSA keys need at least {MIN_RSA_BITS} bits (RFC 8301)")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def write_private_key(path: str | os.PathLike[str], key: PrivateKey) -> None:
    """Write `key` as PKCS#8 PEM, created with mode 0600 (never world-readable)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(path, 0o600)


def record_problems(text: str | None, key: PrivateKey) -> list[str]:
    """Why a published TXT record does not publish `key` ([] = it does).

    RFC 6376 section 3.6.1: v= (if given) must be DKIM1, k= defaults to rsa,
    an empty p= means the key was revoked.
    """
    if text is None:
        return ["no TXT record is published"]
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags[name.strip()] = "".join(value.split())
    problems = []
    if tags.get("v", "DKIM1") != "DKIM1":
        problems.append(f"v={tags['v']} (must be DKIM1)")
    want_k = "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa"
    if tags.get("k", "rsa") != want_k:
        problems.append(f"k={tags.get('k', 'rsa')} but the key file holds an {want_k} key")
    if "p" not in tags:
        problems.append("no p= tag")
    elif tags["p"] == "":
        problems.append("p= is empty: the key is revoked")
    elif tags["p"] != public_key_b64(key):
        problems.append("p= is a different public key than the key file's")
    return problems
