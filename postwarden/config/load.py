"""YAML nodes -> typed settings, collecting every problem with its file:line.

`yaml.compose` keeps each node's position, so a wrong value is reported as
`postwarden.yaml:41: policyd.greylist.delay: expected a duration like "5m",
got 'five'`. The walker is driven by the dataclass annotations in the schema:
adding a field to a settings class is all a new key needs.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from postwarden.config.errors import ConfigError, ConfigProblem, FieldProblem
from postwarden.config.files import MAX_CONFIG_SIZE, read_file
from postwarden.config.locations import Locations
from postwarden.config.schema import Settings
from postwarden.config.units import (
    Duration,
    FilePath,
    RedisUrl,
    Size,
    SocketAddress,
    parse_network,
)

DEFAULT_PATH = "/etc/postwarden/postwarden.yaml"
ENV_VAR = "POSTWARDEN_CONFIG"

# libyaml's composer when PyYAML has it (several times faster; same nodes and marks).
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_NETWORK_TYPES = {"IPv4Network | IPv6Network", "Network"}


def config_path(explicit: str | None) -> str:
    """`-c FILE`, else `$POSTWARDEN_CONFIG`, else the system default."""
    return explicit or os.environ.get(ENV_VAR) or DEFAULT_PATH


def load_config(path: str | os.PathLike[str]) -> Settings:
    """Read, parse and validate; raise ConfigError with every problem found."""
    path = str(path)
    return load_config_text(read_config_text(path), path)


def read_config_text(path: str) -> str:
    """The config file's text: a regular UTF-8 file of at most 1 MiB."""
    try:
        data = read_file(path, MAX_CONFIG_SIZE)
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(path, 0, "", "config file not found")]) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([ConfigProblem(path, 0, "", f"cannot read config: {reason}")]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(path, 0, "", f"config is not UTF-8: {exc}")]) from None


def load_config_text(text: str, filename: str = "<string>") -> Settings:
    return _load(text, filename)[0]


def load_pinned(text: str, filename: str) -> tuple[Settings, str]:
    """Settings from `text` (read from `filename`), and the same text with
    every relative file path written out absolute, so that a copy kept in
    another directory (the supervisor's `running.yaml`) loads to the same
    settings, line for line."""
    settings, walker = _load(text, filename)
    pinned = text
    for start, end, absolute in sorted(walker.relative_paths, reverse=True):
        # A double-quoted JSON string is a valid YAML scalar in any context.
        pinned = pinned[:start] + json.dumps(absolute) + pinned[end:]
    return settings, pinned


def _load(text: str, filename: str) -> tuple[Settings, _Walker]:
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigProblem(filename, line, "", f"YAML syntax: {problem}")]) from None
    walker = _Walker(filename)
    if node is None or (isinstance(node, yaml.ScalarNode) and node.value == ""):
        settings = Settings()
    else:
        try:
            settings = walker.build(Settings, node, "")
        except _Invalid:
            settings = Settings()
    if walker.problems:
        # Top to bottom, as an editor shows the file (a block's cross-field
        # checks run after its keys, so discovery order jumps around).
        raise ConfigError(sorted(walker.problems, key=lambda p: p.line))
    return dataclasses.replace(settings, _locations=walker.locations), walker


class _Invalid(Exception):
    """Internal: this node's value was reported; the caller uses the default."""


class _Walker:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.base = Path(filename).resolve().parent if filename != "<string>" else Path.cwd()
        self.problems: list[ConfigProblem] = []
        self.locations = Locations(filename)
        # (start, end) character offsets of relative file paths, and the
        # absolute path each one names (for load_pinned).
        self.relative_paths: list[tuple[int, int, str]] = []

    def report(self, node: yaml.Node, key: str, message: str) -> None:
        self.problems.append(ConfigProblem(self.filename, _line(node), key, message))

    # -- dataclasses ------------------------------------------------------
    def build(self, cls: type, node: yaml.Node, key: str, base: Any = None) -> Any:
        if not isinstance(node, yaml.MappingNode):
            self.report(node, key or "(top level)", f"expected a mapping, got {_kind(node)}")
            raise _Invalid
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        seen: set[str] = set()
        for knode, vnode in node.value:
            name = knode.value if isinstance(knode, yaml.ScalarNode) else None
            sub = f"{key}.{name}" if key else str(name)
            public = [n for n in fields if not n.startswith("_")]
            if name is None or name not in public:
                hint = difflib.get_close_matches(str(name), public, n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                valid = ", ".join(sorted(public))
                self.report(knode, sub, f"unknown key{extra} (valid keys: {valid})")
                continue
            if name in seen:
                self.report(knode, sub, "key given twice")
                continue
            seen.add(name)
            f = fields[name]
            self.locations.record(sub, _line(vnode), _line(knode))
            try:
                values[name] = self.value(hints[name], vnode, sub, f.metadata, _default(f))
            except _Invalid:
                continue
        validate = getattr(cls, "validate_node", None)
        try:
            # Start from the parent's default for this block (e.g. the dkim
            # milter's own socket), not the block class's generic defaults.
            obj = dataclasses.replace(base, **values) if base is not None else cls(**values)
        except (TypeError, ValueError) as exc:
            self.report(node, key or "(top level)", str(exc))
            raise _Invalid from None
        if validate is not None:
            for finding in validate(obj):
                self.finding(node, key, finding)
        return obj

    def finding(self, node: yaml.Node, key: str, finding: str | FieldProblem) -> None:
        """A `validate_node` result: at the named field's line, else the block's."""
        if isinstance(finding, FieldProblem):
            sep = "" if not key or finding.field.startswith("[") else "."
            path = f"{key}{sep}{finding.field}"
            problem = self.locations.problem(path, finding.message, at_key=finding.at_key)
            if problem.line == 0:
                problem = dataclasses.replace(problem, line=_line(node))
            self.problems.append(problem)
            return
        line = self.locations.line(key, at_key=True) if key else 0
        self.problems.append(
            ConfigProblem(self.filename, line or _line(node), key or "(top level)", finding)
        )

    # -- values -----------------------------------------------------------
    def value(
        self, tp: Any, node: yaml.Node, key: str, meta: Mapping[str, Any], default: Any = None
    ) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            non_none = [a for a in args if a is not type(None)]
            if _is_null(node) and type(None) in args:
                return None
            if len(non_none) == 1:
                return self.value(non_none[0], node, key, meta, default)
            if {a.__name__ for a in non_none} == {"IPv4Network", "IPv6Network"}:
                return self.scalar(parse_network, node, key)
            self.report(node, key, f"unsupported schema type {tp}")
            raise _Invalid
        if origin in (tuple, list):
            if not isinstance(node, yaml.SequenceNode):
                if isinstance(node, yaml.ScalarNode) and not _is_null(node):
                    # A single value where a list is expected: accept as a list of one.
                    items = [node]
                elif _is_null(node):
                    items = []
                else:
                    self.report(node, key, f"expected a list, got {_kind(node)}")
                    raise _Invalid
            else:
                items = list(node.value)
            item_tp = args[0]
            out = []
            ok = True
            for i, item in enumerate(items):
                self.locations.record(f"{key}[{i}]", _line(item))
                try:
                    out.append(self.value(item_tp, item, f"{key}[{i}]", meta))
                except _Invalid:
                    ok = False
            if not ok:
                raise _Invalid
            return tuple(out)
        if origin in (dict, Mapping) or origin is typing.get_origin(Mapping[str, int]):
            if _is_null(node):
                return {}
            if not isinstance(node, yaml.MappingNode):
                self.report(node, key, f"expected a mapping, got {_kind(node)}")
                raise _Invalid
            result: dict[Any, Any] = {}
            bad = False
            key_tp = args[0]
            for knode, vnode in node.value:
                k = str(knode.value)
                sub = f"{key}.{k}"
                self.locations.record(sub, _line(vnode), _line(knode))
                try:
                    # Keys from a closed set (SPF results) are parsed like values, at the key.
                    name = _key_enum(key_tp, knode, sub, self) if _is_enum(key_tp) else k
                    result[name] = self.value(args[1], vnode, sub, meta)
                except _Invalid:
                    bad = True
            if bad:
                raise _Invalid
            return types.MappingProxyType(result)
        if tp is SocketAddress:
            return self.scalar(SocketAddress.parse, node, key)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            if _is_null(node):
                return default if isinstance(default, tp) else tp()
            return self.build(tp, node, key, default if isinstance(default, tp) else None)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return self.scalar(lambda v: _enum(tp, v), node, key)
        if tp is bool:
            return self.scalar(_bool, node, key)
        if tp is Duration:
            return self.ranged(self.scalar(Duration.parse, node, key), node, key, meta)
        if tp is Size:
            return self.ranged(self.scalar(Size.parse, node, key), node, key, meta)
        if tp is int:
            return self.ranged(self.scalar(_int, node, key), node, key, meta)
        if tp is float:
            return self.ranged(self.scalar(_float, node, key), node, key, meta)
        if tp is RedisUrl:
            return self.scalar(RedisUrl.parse, node, key)
        if tp is FilePath:
            path = self.scalar(lambda v: FilePath.parse(self.resolve(v)), node, key)
            if isinstance(node.value, str) and not os.path.isabs(node.value):
                self.relative_paths.append((node.start_mark.index, node.end_mark.index, path))
            return path
        if tp is str:
            return self.scalar(_str, node, key)
        if tp is typing.Any:
            return yaml.safe_load(yaml.serialize(node))
        self.report(node, key, f"unsupported schema type {tp}")
        raise _Invalid

    def resolve(self, value: object) -> object:
        """Relative paths are relative to the config file's directory."""
        if isinstance(value, str) and value and not os.path.isabs(value):
            return str(self.base / value)
        return value

    def scalar(self, parse: Any, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.report(node, key, f"expected a single value, got {_kind(node)}")
            raise _Invalid
        try:
            return parse(_plain(node))
        except ValueError as exc:
            self.report(node, key, str(exc))
            raise _Invalid from None

    def ranged(self, value: Any, node: yaml.Node, key: str, meta: Mapping[str, Any]) -> Any:
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and value < lo:
            self.report(node, key, f"must be at least {_show(lo)}, got {_show(value)}")
            raise _Invalid
        if hi is not None and value > hi:
            self.report(node, key, f"must be at most {_show(hi)}, got {_show(value)}")
            raise _Invalid
        return value


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def _key_enum(tp: type[enum.Enum], knode: yaml.Node, key: str, walker: _Walker) -> enum.Enum:
    if not isinstance(knode, yaml.ScalarNode):
        walker.report(knode, key, f"expected a single value as key, got {_kind(knode)}")
        raise _Invalid
    try:
        return _enum(tp, knode.value)
    except ValueError as exc:
        walker.report(knode, key, str(exc))
        raise _Invalid from None


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _show(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and float(v).is_integer() else str(v)


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _plain(node: yaml.ScalarNode) -> object:
    """The scalar's Python value by the YAML core schema (int, bool, str, ...)."""
    return (
        yaml.safe_load(yaml.serialize(node)) if node.tag != "tag:yaml.org,2002:str" else node.value
    )


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{node.value!r}"


def _bool(v: object) -> bool:
    if isinstance(v, bool):
        return v
    raise ValueError(f"expected true or false, got {v!r}")


def _int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected a whole number, got {v!r}")
    return v


def _float(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"expected a number, got {v!r}")
    return float(v)


def _str(v: object) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool) or v is None:
        raise ValueError(f"expected a string, got {v!r}")
    return str(v)


def _enum(tp: type[enum.Enum], v: object) -> enum.Enum:
    text = str(v).strip()
    for member in tp:
        if str(member.value).lower() == text.lower():
            return member
    choices = ", ".join(str(m.value) for m in tp)
    raise ValueError(f"expected one of {choices}; got {v!r}")
