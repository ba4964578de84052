"""How a schema field declares its constraints.

Schema classes are frozen dataclasses; `setting()` attaches the metadata the
loader checks (range, unit, whether a path names a file that must exist) and
a one-line doc that `deploy/postwarden.yaml` expands on.
"""

from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any


def setting(
    default: Any = MISSING,
    *,
    factory: Any = MISSING,
    doc: str = "",
    min: float | None = None,  # noqa: A002 - reads naturally at call sites
    max: float | None = None,  # noqa: A002
) -> Any:
    meta = {"doc": doc, "min": min, "max": max}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)
