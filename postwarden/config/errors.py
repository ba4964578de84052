"""Config problems carry where they are: file, line, key path, and why."""

from __future__ import annotations

from dataclasses import dataclass

from postwarden.errors import PostwardenError


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with the config or a file it names.

    `line` is 1-based (0 when unknown, e.g. a missing file); `key` is the dotted
    key path (`policyd.greylist.delay`), or the rule file's own context.
    """

    file: str
    line: int
    key: str
    message: str
    # "error" refuses start-up; "warning" means the bad line was skipped and
    # the rest loaded (Postfix's own choice for a bad table line).
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        tag = "warning: " if self.severity == "warning" else ""
        if self.key:
            return f"{where}: {tag}{self.key}: {self.message}"
        return f"{where}: {tag}{self.message}"


class ConfigError(PostwardenError):
    """The config cannot be used; holds every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """What `validate_node` returns to name the field at fault.

    `field` is the path below the block being validated, written as the
    loader writes key paths: `url`, `whitelist_clients[2]`,
    `overrides.10.0.0.0/8`. The loader reports the problem at that value's
    line, or at its key's line when `at_key` is set (an unknown key of a
    mapping: the key is what is wrong). A plain string from `validate_node`
    is still reported at the block's own line.
    """

    field: str
    message: str
    at_key: bool = False


# What a `validate_node` method may return in its list.
Finding = str | FieldProblem
