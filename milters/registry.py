"""Every milter this version serves, found by the `MILTER` spec its module declares.

The registry imports each module of the `milters` package (and each
subpackage's `__init__`) once and keeps those that declare `MILTER`; nothing
else lists milters by hand, so `postwarden milter NAME`, `scan`, `run`,
`config check` and `postfix-config` cannot drift apart.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

import milters
from milters.engine import MilterSpec


@functools.cache
def specs() -> dict[str, MilterSpec]:
    """Name -> spec, in smtpd_milters order (by `position`)."""
    found: list[MilterSpec] = []
    for info in pkgutil.iter_modules(milters.__path__):
        module = importlib.import_module(f"milters.{info.name}")
        spec = getattr(module, "MILTER", None)
        if isinstance(spec, MilterSpec):
            found.append(spec)
    found.sort(key=lambda s: (s.position, s.name))
    return {s.name: s for s in found}


def names() -> tuple[str, ...]:
    return tuple(specs())
