"""Keep the code base honest: layering, names, the shipped config, replies."""

from __future__ import annotations

import ast
import dataclasses
import typing
from collections.abc import Iterator, Mapping
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


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for package in PACKAGES for p in python_files(package)}


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node that can run: all of it except `if TYPE_CHECKING:` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def project_imports(name: str) -> set[str]:
    """Project modules `name` imports at run time, at module level or inside
    functions; `from pkg import mod` counts as importing `pkg.mod`."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES}


def test_core_imports_neither_the_cli_nor_a_service() -> None:
    # `postwarden/__main__.py` is `python -m postwarden`: the CLI's entry point.
    entry = {"postwarden.__main__"}
    core = [m for m in MODULES if m.split(".")[0] == "postwarden" and m not in entry]
    core = [m for m in core if m != "postwarden.cli" and not m.startswith("postwarden.cli.")]
    assert "postwarden.supervisor" in core
    wrong = {
        m: sorted(
            d for d in project_imports(m)
            if d.split(".")[0] in {"milters", "policyd"} or d.startswith("postwarden.cli")
        )
        for m in core
    }  # fmt: skip
    assert {m: d for m, d in wrong.items() if d} == {}


def import_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles_among_project_modules() -> None:
    graph = {m: project_imports(m) - {m} for m in MODULES}
    assert import_cycles(graph) == []


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
