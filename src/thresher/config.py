"""Strict, typed configuration: dataclasses filled from dicts (YAML, CLI flags).

Unknown keys are errors with a "did you mean" hint; values are checked against the field's type
and, where a field declares ``metadata={"choices": (...)}``, against the allowed values. Messages
name the owner, the parameter, what is allowed and what was given (scikit-learn style).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing

from thresher.errors import ConfigError


def did_you_mean(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _type_ok(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, tp)


def build(cls, values: dict | None, owner: str):
    """Instantiate dataclass ``cls`` from ``values``, rejecting unknown keys and wrong types."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise ConfigError(f"{owner} has no parameter {key!r}.{did_you_mean(key, fields)} "
                              f"Known parameters: {', '.join(fields)}.")
    for key, value in values.items():
        tp, choices = hints[key], fields[key].metadata.get("choices")
        if not _type_ok(value, tp):
            raise ConfigError(f"The {key!r} parameter of {owner} must be of type "
                              f"{getattr(tp, '__name__', str(tp))}. Got {value!r}.")
        if choices is not None and value not in choices:
            raise ConfigError(f"The {key!r} parameter of {owner} must be one of "
                              f"{', '.join(map(repr, choices))}. Got {value!r}.{did_you_mean(value, choices)}")
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(owner)
    return obj


def choice(default, *choices):
    return dataclasses.field(default=default, metadata={"choices": choices})
