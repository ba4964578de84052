"""Policy checks declare themselves; nothing lists them by hand."""

from __future__ import annotations

import dataclasses

from policyd import registry
from policyd.pipeline import build_pipeline, builders
from postwarden.config.schema import Settings
from postwarden.config.sections.common import CheckSettings
from postwarden.config.sections.policyd import CHECK_NAMES, PolicydSettings


def test_every_check_block_has_a_check_module_in_the_default_order() -> None:
    # The default `policyd.order` comes from the settings fields; the spec
    # positions must agree with it, so neither can drift.
    assert registry.names() == CHECK_NAMES == PolicydSettings().order


def test_check_names_are_the_check_settings_fields() -> None:
    blocks = PolicydSettings().checks()
    assert tuple(blocks) == CHECK_NAMES
    assert all(isinstance(b, CheckSettings) for b in blocks.values())
    others = [f.name for f in dataclasses.fields(PolicydSettings) if f.name not in CHECK_NAMES]
    assert "socket" in others and "order" in others


def test_pipeline_builds_what_the_registry_declares() -> None:
    assert set(builders()) == set(CHECK_NAMES)
    policyd = dataclasses.replace(
        PolicydSettings(),
        sender_login=dataclasses.replace(PolicydSettings().sender_login, enabled=True),
        order=("sender_login", "access"),
    )
    checks = build_pipeline(Settings(policyd=policyd), [])
    # access has no rules, so it builds nothing; order is the configured one.
    assert [c.name for c in checks] == ["sender_login"]
