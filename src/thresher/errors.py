"""Errors a user can act on.

Every error raised for bad input or bad configuration is a ``ThresherError``: the CLI prints its
message (no traceback) and exits with status 2. Messages name the file, the record or line, the
field, what was expected and what to do.
"""

from __future__ import annotations


class ThresherError(Exception):
    """Base class of all user-facing errors."""


class DataError(ThresherError):
    """A data file is unreadable, malformed, or holds a record that cannot be used.

    ``path``: the file; ``where``: e.g. "line 12" or "record 7"; ``field``: the offending field;
    ``expected``: what was expected; ``hint``: what to do about it.
    """

    def __init__(self, path, problem: str, *, where: str | None = None, field: str | None = None,
                 expected: str | None = None, hint: str | None = None):
        self.path, self.problem, self.where = str(path), problem, where
        self.field, self.expected, self.hint = field, expected, hint
        parts = [f"{self.path}"]
        if where:
            parts[0] += f", {where}"
        if field:
            parts[0] += f", field '{field}'"
        msg = f"{parts[0]}: {problem}"
        if expected:
            msg += f" Expected {expected}."
        if hint:
            msg += f" {hint}"
        super().__init__(msg)


class ConfigError(ThresherError):
    """A recipe, option or parameter is invalid (unknown key, wrong type, out of range)."""


class RegistryError(ThresherError):
    """An unknown name was asked of a registry (scorer, selector, recipe, template)."""


class WorkerError(ThresherError):
    """A worker of the ray executor failed (its own error, or it died more often than it is restarted);
    ``worker_traceback``: the worker's traceback text, when there is one."""

    def __init__(self, message: str, worker_traceback: str = ""):
        super().__init__(message)
        self.worker_traceback = worker_traceback

    def __reduce__(self):
        return (type(self), (str(self), self.worker_traceback))
