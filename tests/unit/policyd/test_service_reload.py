"""SIGHUP in policyd: the new config is loaded and compiled off the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from policyd.check import BuiltCheck
from policyd.service import load_checks, reload_config
from postwarden.config import Settings


def test_reload_loads_on_a_worker_thread_while_the_loop_keeps_running(tmp_path: Path) -> None:
    cfg = tmp_path / "pw.yaml"
    cfg.write_text(
        "policyd:\n  spf: {enabled: false}\n"
        "  access:\n    rules:\n      - {sender: a@b.example, action: OK}\n"
    )
    applied: list[tuple[Settings, Sequence[BuiltCheck]]] = []
    loop_ran_during_load = threading.Event()

    def slow_load(path: str) -> tuple[Settings, list[BuiltCheck]]:
        # Waits for a coroutine on the loop: possible only if the loop is free,
        # i.e. this runs on another thread. (The timeout only turns a
        # regression into a failure instead of a hang.)
        assert loop_ran_during_load.wait(30), "the load blocked the event loop"
        return load_checks(path)

    async def scenario() -> bool:
        loop_thread = threading.get_ident()
        reload = asyncio.create_task(
            reload_config(str(cfg), lambda s, c: applied.append((s, c)), slow_load)
        )
        await asyncio.sleep(0)  # let the reload start its worker
        assert threading.get_ident() == loop_thread
        loop_ran_during_load.set()
        return await reload

    assert asyncio.run(scenario()) is True
    ((settings, checks),) = applied
    assert [c.name for c in checks] == ["access"]
    assert settings.policyd.access.rules[0].sender == "a@b.example"


@pytest.mark.expect_log("ERROR", "reload refused")
def test_a_bad_config_on_reload_keeps_the_running_one(tmp_path: Path) -> None:
    cfg = tmp_path / "pw.yaml"
    cfg.write_text("policyd:\n  order: [nope]\n")
    applied: list[object] = []
    ok = asyncio.run(reload_config(str(cfg), lambda s, c: applied.append(s)))
    assert ok is False and applied == []
