"""Errors a user can act on.

Every error raised for bad input or bad configuration is a ``ThresherError``: the CLI prints its
message (no traceback) and exits with status 2. Messages name the file, the record or line, the
field, what was expected and what to do.

A message that names an option speaks the language the user came through: ``as_option("on_invalid", "skip")``
reads ``--on-invalid skip`` while the CLI runs a command (``cli.main`` sets ``surface("cli")``) and
``on_invalid='skip'`` from Python (the default).
"""

from __future__ import annotations

import contextlib
import contextvars

_SURFACE = contextvars.ContextVar("thresher_surface", default="python")
_NO_VALUE = object()


@contextlib.contextmanager
def surface(name: str):
    """Within the block, messages name options as the ``name`` surface spells them: "cli" or "python"."""
    if name not in ("cli", "python"):
        raise ValueError(f"surface must be 'cli' or 'python', not {name!r}")
    token = _SURFACE.set(name)
    try:
        yield
    finally:
        _SURFACE.reset(token)


def as_option(name: str, value=_NO_VALUE, *, metavar: str | None = None, flag: str | None = None) -> str:
    """Option ``name`` (a keyword, e.g. ``on_invalid``), with ``value`` or a placeholder ``metavar``, as the
    user types it: ``--on-invalid skip`` / ``--lenient`` / ``--max-record-chars N`` on the CLI,
    ``on_invalid='skip'`` / ``lenient=True`` / ``max_record_chars=N`` from Python. ``flag``: the CLI spelling
    when it is not ``--`` + ``name`` with dashes (``fmt`` is ``--format``)."""
    if _SURFACE.get() == "cli":
        flag = flag or "--" + name.replace("_", "-")
        if value is True or value is False:
            return flag if value else "--no-" + flag[2:]
        shown = metavar if metavar is not None else None if value is _NO_VALUE else str(value)
        return flag if shown is None else f"{flag} {shown}"
    if metavar is not None:
        return f"{name}={metavar}"
    return name if value is _NO_VALUE else f"{name}={value!r}"


def flag_note(name: str, *, flag: str | None = None) -> str:
    """`` (--shard-size)`` after a parameter's name in a message while the CLI runs; ``""`` from Python."""
    return f" ({as_option(name, flag=flag)})" if _SURFACE.get() == "cli" else ""


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
