"""Every policy check this version serves, found by the `CHECK` spec its module declares.

Like `milters.registry`: each module of `policyd.checks` is imported once and
kept when it declares `CHECK`; the pipeline's builders and `config check`
derive from this, so no list of checks is kept by hand.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

import policyd.checks
from policyd.check import CheckSpec


@functools.cache
def specs() -> dict[str, CheckSpec]:
    """Name -> spec, in default order (by `position`)."""
    found: list[CheckSpec] = []
    for info in pkgutil.iter_modules(policyd.checks.__path__):
        module = importlib.import_module(f"policyd.checks.{info.name}")
        spec = getattr(module, "CHECK", None)
        if isinstance(spec, CheckSpec):
            found.append(spec)
    found.sort(key=lambda s: (s.position, s.name))
    return {s.name: s for s in found}


def names() -> tuple[str, ...]:
    return tuple(specs())
