"""The few error types imagefactory raises, and the exit codes they map to.

Everything a user can fix (bad recipe, bad arguments, missing host tool) is a `UserError` and
exits 2; everything that went wrong while building or testing is a `BuildError` and exits 1.
The CLI maps them in one place and prints a traceback only with `--debug`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    FAILED = 1
    USER_ERROR = 2
    INTERRUPTED = 130


class ImageFactoryError(Exception):
    """Base class; `hint` tells the user what to do about it."""

    exit_status = ExitStatus.FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class UserError(ImageFactoryError):
    """Bad input: recipe, arguments, configuration, missing host tool."""

    exit_status = ExitStatus.USER_ERROR


class BuildError(ImageFactoryError):
    """A build step, a download or a boot test failed."""


class CommandNotFound(UserError):
    """An external program is not installed."""


class CommandFailed(BuildError):
    """An external program exited non-zero."""

    def __init__(self, argv: list[str], returncode: int, stderr: str = "") -> None:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        msg = f"command failed with exit code {returncode}: {argv[0]}"
        if tail:
            msg += f"\n{tail}"
        super().__init__(msg)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class Problem:
    """One validation problem, located in a recipe file."""

    file: str
    line: int | None
    path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.path or '<root>'}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


class ValidationError(UserError):
    """A recipe (or a set of recipes) failed validation; carries *all* problems at once."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
