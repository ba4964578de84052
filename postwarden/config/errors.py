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
