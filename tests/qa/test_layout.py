"""Keep the code base honest: layering, names, the shipped config, replies."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import yaml

import milters
import policyd
import postwarden
from postwarden.config import Settings, load_config
from postwarden.replies import CATALOGUE
from tests.conftest import REPO

PACKAGES = ("postwarden", "milters", "policyd")


def python_files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_packages_import_from_this_checkout() -> None:
    for module in (postwarden, milters, policyd):
        assert Path(module.__file__ or "").resolve().is_relative_to(REPO)


def test_no_grab_bag_modules() -> None:
    for package in (*PACKAGES, "tests", "bench"):
        for path in (REPO / package).rglob("*.py"):
            assert path.stem not in {"utils", "util", "helpers", "misc", "common_utils"}, path


def test_core_depends_on_neither_milters_nor_policyd() -> None:
    allowed = {REPO / "postwarden" / "supervisor.py"}
    for path in python_files("postwarden"):
        if path in allowed or (REPO / "postwarden" / "cli") in path.parents:
            continue
        for name in imported_modules(path):
            assert name.split(".")[0] not in {"milters", "policyd"}, f"{path} imports {name}"


def test_milters_and_policyd_do_not_import_each_other() -> None:
    for package, other in (("milters", "policyd"), ("policyd", "milters")):
        for path in python_files(package):
            for name in imported_modules(path):
                assert name.split(".")[0] != other, f"{path} imports {name}"


def test_only_the_adapter_imports_pymilter() -> None:
    for package in PACKAGES:
        for path in python_files(package):
            if path == REPO / "milters" / "adapter.py":
                continue
            for name in imported_modules(path):
                assert name.split(".")[0] not in {"Milter", "milter"}, f"{path} imports {name}"


def test_reply_catalogue_classes_agree() -> None:
    assert CATALOGUE
    for name, reply in CATALOGUE.items():
        assert str(reply.code)[0] == reply.enhanced[0], name
        assert reply.text, name


def _schema_paths(cls: type, prefix: str = "") -> tuple[list[str], list[str]]:
    """(keys the YAML must show, item fields of lists that comments must name)."""
    keys: list[str] = []
    item_fields: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue  # filled in by the loader (where each key was written), not a YAML key
        key = f"{prefix}{f.name}"
        keys.append(key)
        tp = hints[f.name]
        origin = typing.get_origin(tp)
        args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
        inner = args[0] if args else tp
        is_block = dataclasses.is_dataclass(inner) and isinstance(inner, type)
        if not is_block or inner.__name__ == "SocketAddress":
            continue
        if origin in (tuple, list):
            # Lists of rules default to empty; their item keys are documented
            # in comments (a commented example), so only the names are checked.
            sub_keys, sub_items = _schema_paths(inner)
            item_fields.extend(f"{key}[].{k}" for k in sub_keys + sub_items)
        elif f.default is None:
            continue  # optional blocks (e.g. sentinel) are documented as null
        else:
            sub_keys, sub_items = _schema_paths(inner, key + ".")
            keys.extend(sub_keys)
            item_fields.extend(sub_items)
    return keys, item_fields


def _yaml_paths(node: yaml.Node, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            out.add(key)
            out |= _yaml_paths(v, key + ".")
    return out


def test_shipped_config_loads_to_exactly_the_defaults() -> None:
    assert load_config(REPO / "deploy" / "postwarden.yaml") == Settings()


def test_shipped_config_documents_every_key() -> None:
    text = (REPO / "deploy" / "postwarden.yaml").read_text()
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    assert node is not None
    documented = _yaml_paths(node)
    keys, item_fields = _schema_paths(Settings)
    assert [k for k in keys if k not in documented] == []
    # A list item's key must at least be named (as "name:") somewhere in the file.
    unnamed = [f for f in item_fields if f"{f.rpartition('.')[2]}:" not in text]
    assert unnamed == []
