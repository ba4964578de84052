"""Value types the YAML file writes as strings: durations, sizes, sockets, networks.

Each parser raises `ValueError` with a message that says what was expected;
the loader adds file:line and the key path.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from redis.connection import parse_url

from postwarden.config.files import check_file
from postwarden.redact import mask_url

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_DURATION_FACTORS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {
    None: 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}


class Duration(float):
    """Seconds; written `300`, `"300s"`, `"5m"`, `"2h"`, `"35d"`, `"1w"`, `"250ms"`."""

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool):
            raise ValueError(f'expected a duration like "5m" or "30s", got {value!r}')
        if isinstance(value, int | float):
            return cls(value)
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f'expected a duration like "5m" or "30s", got {value!r}')
        unit = m.group(2).lower() if m.group(2) else None
        return cls(float(m.group(1)) * _DURATION_FACTORS[unit])

    def __repr__(self) -> str:
        return f"Duration({float(self)!r})"


class Size(int):
    """Bytes; written `1048576`, `"512KB"`, `"10MB"`, `"1GiB"` (binary multiples)."""

    @classmethod
    def parse(cls, value: object) -> Size:
        if isinstance(value, bool):
            raise ValueError(f'expected a size like "10MB", got {value!r}')
        if isinstance(value, int):
            return cls(value)
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f'expected a size like "10MB" or "512KB", got {value!r}')
        unit = m.group(2).lower() if m.group(2) else None
        return cls(int(float(m.group(1)) * _SIZE_FACTORS[unit]))


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """A listening socket in Postfix notation: `unix:/path` or `inet:host:port`.

    `inet:[::1]:9901` for IPv6. Postfix also writes `local:` for unix and
    accepts `inet:port` (host omitted = all addresses); both are read here.
    """

    kind: str  # "unix" | "inet"
    path: str = ""
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, value: object) -> SocketAddress:
        if not isinstance(value, str) or not value:
            raise ValueError(
                f'expected a socket like "unix:/path" or "inet:127.0.0.1:9901", got {value!r}'
            )
        scheme, sep, rest = value.partition(":")
        scheme = scheme.lower()
        if not sep:
            raise ValueError(
                f'expected "unix:/path" or "inet:host:port" (Postfix notation), got {value!r}'
            )
        if scheme in ("unix", "local"):
            if not rest.startswith("/"):
                raise ValueError(f"unix socket path must be absolute, got {rest!r}")
            return cls("unix", path=rest)
        if scheme in ("inet", "inet6"):
            host, port_text = _split_host_port(rest)
            try:
                port = int(port_text)
            except ValueError:
                raise ValueError(f"port must be a number, got {port_text!r}") from None
            if not 0 < port < 65536:
                raise ValueError(f"port must be 1-65535, got {port}")
            if host and not valid_host(host):
                raise ValueError(f"not an IP address or host name: {host!r}")
            return cls("inet", host=host, port=port)
        raise ValueError(f'unknown socket type {scheme!r}: use "unix:/path" or "inet:host:port"')

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"inet:{host}:{self.port}"

    @property
    def libmilter(self) -> str:
        """libmilter's spelling: `local:/path`, `inet:port@host`, `inet6:port@host`."""
        if self.kind == "unix":
            return f"local:{self.path}"
        family = "inet6" if ":" in self.host else "inet"
        return f"{family}:{self.port}@{self.host or '0.0.0.0'}"


def _split_host_port(text: str) -> tuple[str, str]:
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f'expected "inet:[v6addr]:port", got "inet:{text}"')
        return host, port
    if text.count(":") == 0:
        return "", text
    if text.count(":") > 1:
        raise ValueError(f'write IPv6 hosts in brackets, e.g. "inet:[::1]:9901", got {text!r}')
    host, _, port = text.rpartition(":")
    return host, port


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def valid_host(host: str) -> bool:
    """An IP address, or a host name by RFC 1123 2.1 (letters, digits and
    hyphens in dot-separated labels of at most 63 characters)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    return 0 < len(name) <= 253 and all(_HOST_LABEL.match(label) for label in name.split("."))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(value: object) -> Network:
    """A CIDR or a bare address (= /32 or /128). Host bits set is an error,
    because `10.1.2.3/8` usually means a typo for `10.0.0.0/8`."""
    if not isinstance(value, str):
        raise ValueError(f'expected an address or CIDR like "192.0.2.0/24", got {value!r}')
    text = value.strip()
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"not an IP address or CIDR: {text!r} ({exc})") from None
        raise ValueError(f"{text!r} has host bits set; did you mean {loose}?") from None


class FilePath(str):
    """A file the config names: a readable regular file within the size limit
    (postwarden/config/files.py), checked at load time."""

    @classmethod
    def parse(cls, value: object) -> FilePath:
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected a file path, got {value!r}")
        try:
            check_file(value)
        except FileNotFoundError:
            raise ValueError(f"file not found: {value}") from None
        except OSError as exc:
            raise ValueError(f"cannot read {value}: {exc.strerror or exc}") from None
        return cls(value)


class RedisUrl(str):
    """`redis://`, `rediss://` or `unix://` URL, checked as the services'
    redis-py will read it at start: scheme, host, port, database number and
    query options. Shown masked (`redis://:***@host`) in every message."""

    @classmethod
    def parse(cls, value: object) -> RedisUrl:
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected a URL like redis://host:6379/0, got {value!r}")
        shown = mask_url(value)
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"must start with redis://, rediss:// or unix://, got {shown!r}")
        try:
            parsed = urlsplit(value)
            parse_url(value)  # type: ignore[no-untyped-call]  # what Redis.from_url does first
            port = parsed.port
        except ValueError as exc:
            raise ValueError(f"{shown!r}: {exc}") from None
        if parsed.scheme == "unix":
            if not parsed.path.startswith("/"):
                raise ValueError(f"{shown!r}: unix:// needs an absolute socket path")
            return cls(value)
        if not parsed.hostname:
            raise ValueError(f"{shown!r}: no host")
        if not valid_host(parsed.hostname):
            raise ValueError(f"{shown!r}: not an IP address or host name: {parsed.hostname!r}")
        if port == 0:
            raise ValueError(f"{shown!r}: port must be 1-65535")
        db = parsed.path.strip("/")
        if db and not db.isdigit():
            raise ValueError(f"{shown!r}: the path must be a database number, got {db!r}")
        return cls(value)

    def __repr__(self) -> str:
        return f"RedisUrl({mask_url(self)!r})"
