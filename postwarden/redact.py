"""Secrets never appear in output (ARCHITECTURE.md, principle 8).

The only secret the config holds today is the password in a Redis URL
(`redis://:PASSWORD@host`, `redis://user:PASSWORD@host`, or `?password=`).
Everything that prints, logs or raises a URL passes it through `mask_url`.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode

MASK = "***"
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^@/?#]*)@")


def mask_url(url: str) -> str:
    """`redis://:secret@host:6379/0` -> `redis://:***@host:6379/0`; the user
    name stays (it helps tell accounts apart), the password never does."""
    masked = _USERINFO.sub(_mask_userinfo, url, count=1)
    head, sep, rest = masked.partition("?")
    if not sep:
        return masked
    query, hash_, fragment = rest.partition("#")
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(k.lower() == "password" for k, _ in pairs):
        return masked
    hidden = urlencode([(k, MASK if k.lower() == "password" else v) for k, v in pairs], safe="*")
    return f"{head}?{hidden}{hash_}{fragment}"


def _mask_userinfo(m: re.Match[str]) -> str:
    user, sep, _password = m.group("userinfo").partition(":")
    if not sep:
        # `redis://secret@host`: redis-py reads a lone userinfo as the password.
        return f"{m.group('scheme')}{MASK}@"
    return f"{m.group('scheme')}{user}:{MASK}@"
