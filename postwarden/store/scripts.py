"""Lua scripts, one file each under `lua/`, registered once per client.

redis-py's `Script` objects call EVALSHA and, on NOSCRIPT (a restarted or
failed-over Redis has an empty script cache), load the script and retry: the
"registered once, called by SHA" contract survives restarts by itself.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any


@cache
def source(name: str) -> str:
    """The text of `lua/<name>.lua`."""
    return resources.files("postwarden.store").joinpath("lua", f"{name}.lua").read_text("utf-8")


class ScriptSet:
    """Scripts registered on one client, looked up by file name."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._scripts: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._client.register_script(source(name))
            self._scripts[name] = script
        return script
