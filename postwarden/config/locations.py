"""Where each setting was written: key path -> file:line, kept with the settings.

The loader records the line of every value (and of every mapping key) it
walks, under the same dotted key path it prints in problems
(`policyd.greylist.whitelist_clients_files[0]`). Code that finds a problem
after loading (a builder reading a whitelist file, compiling a rule) asks
`settings.locations.problem(key, message)` and gets a ConfigProblem at the
line that set it, or at the nearest enclosing block that was written when
the key itself was left at its default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from postwarden.config.errors import ConfigProblem

# A list index at the end of a key path (`rules[3]`). Named steps are peeled
# by `_parent`, which must cope with dots inside mapping keys (a CIDR).
_LAST_INDEX = re.compile(r"\[\d+\]$")


@dataclass(slots=True)
class Locations:
    """Line numbers of one loaded config file, by key path."""

    file: str = "config"
    values: dict[str, int] = field(default_factory=dict)
    keys: dict[str, int] = field(default_factory=dict)

    def record(self, key: str, line: int, key_line: int | None = None) -> None:
        self.values.setdefault(key, line)
        if key_line is not None:
            self.keys.setdefault(key, key_line)

    def line(self, key: str, *, at_key: bool = False) -> int:
        """The line of `key`'s value (or its key), else of its nearest written parent; 0 if none."""
        if key in self.values:
            return self.keys.get(key, self.values[key]) if at_key else self.values[key]
        path = self._parent(key)
        while path:
            if path in self.values:
                # A block left at its defaults below: point at the block's own key.
                return self.keys.get(path, self.values[path])
            path = self._parent(path)
        return 0

    def _parent(self, key: str) -> str:
        if _LAST_INDEX.search(key):
            return _LAST_INDEX.sub("", key)
        # Prefer the longest recorded prefix ending before a dot: a mapping key
        # with dots in it (`overrides.10.0.0.0/8`) still finds `overrides`.
        cut = key.rfind(".")
        while cut > 0:
            if key[:cut] in self.values:
                return key[:cut]
            cut = key.rfind(".", 0, cut)
        return ""

    def problem(
        self, key: str, message: str, severity: str = "error", *, at_key: bool = False
    ) -> ConfigProblem:
        """A problem about setting `key`, placed at the config line that set it."""
        return ConfigProblem(self.file, self.line(key, at_key=at_key), key, message, severity)
