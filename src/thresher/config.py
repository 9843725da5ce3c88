"""Strict, typed configuration: dataclasses filled from dicts (YAML, CLI flags), and the flags themselves.

Unknown keys are errors with a "did you mean" hint; values are checked against the field's type
and, where a field declares choices, against the allowed values. Messages name the owner, the
parameter, what is allowed and what was given (scikit-learn style).

A field's metadata is the one description of a parameter; ``build`` checks values against it,
``add_flags`` / ``given`` make and read its command-line flag, ``describe`` feeds ``thresher ls``:
    choices   the allowed values                       (declare with ``choice(default, *choices, help=)``)
    help      one line: what it does, its unit or range (declare with ``option(default, help=)``)
    flags     the CLI spellings when they are not ``--<prefix>-<name>`` (bools: and ``--no-...``):
              {"--flag": converter} for a flag taking a value, {"--flag": constant} for one taking none,
              e.g. {"--lora": True, "--full": False}
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing

from thresher.errors import ConfigError


def did_you_mean(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


# ------------------------------------------------------------------------------------ declaring fields
def option(default=dataclasses.MISSING, *, help: str = "", choices=None, flags: dict | None = None,
           default_factory=dataclasses.MISSING):
    """A dataclass field with its description (see the module docstring for ``choices`` and ``flags``)."""
    meta: dict = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if flags is not None:
        meta["flags"] = dict(flags)
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def choice(default, *choices, help: str = "", flags: dict | None = None):
    """A field whose value must be one of ``choices``."""
    return option(default, help=help, choices=choices, flags=flags)


# ------------------------------------------------------------------------------------ building
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


def type_name(tp) -> str:
    """``int``, ``int | None``, ``list``: a type annotation as a user reads it."""
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


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
            raise ConfigError(f"The {key!r} parameter of {owner} must be of type {type_name(tp)}. Got {value!r}.")
        if choices is not None and value not in choices:
            raise ConfigError(f"The {key!r} parameter of {owner} must be one of "
                              f"{', '.join(map(repr, choices))}. Got {value!r}.{did_you_mean(value, choices)}")
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(owner)
    return obj


def merged(cls, config, overrides: dict | None, owner: str):
    """``config`` (an instance of dataclass ``cls``; None: its defaults) with ``overrides`` (field values; a
    None value leaves the field as it is) applied, checked by ``build``."""
    if config is not None and not isinstance(config, cls):
        raise ConfigError(f"The 'config' parameter of {owner} must be a {cls.__name__}. Got {type(config).__name__}; "
                          "pass its fields as keyword arguments instead.")
    values = dataclasses.asdict(config) if config is not None else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build(cls, values, owner)


# ------------------------------------------------------------------------------------ describing
@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """One parameter as ``thresher ls`` shows it."""
    name: str
    type: str
    default: object             # dataclasses.MISSING for a required parameter
    choices: tuple | None
    help: str


def default_of(f: dataclasses.Field):
    """The field's default value (a fresh one from its default_factory), or dataclasses.MISSING."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def describe(cls) -> list[ParamInfo]:
    """The parameters of dataclass ``cls`` in declaration order, read from the field metadata."""
    hints = typing.get_type_hints(cls)
    return [ParamInfo(f.name, type_name(hints[f.name]), default_of(f), f.metadata.get("choices"),
                      f.metadata.get("help", "")) for f in dataclasses.fields(cls)]


# ------------------------------------------------------------------------------------ flags
def comma_list(text: str) -> list[str]:
    """``"q_proj, v_proj"`` -> ``["q_proj", "v_proj"]`` (empty items dropped)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def float_or(*words: str):
    """A flag converter taking a float or one of ``words`` (e.g. ``float_or("mt-bench")``)."""
    def convert(text: str):
        if text in words:
            return text
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a float or {' or '.join(words)}; got {text!r}") from None
    return convert


def dest(name: str, prefix: str = "") -> str:
    """The argparse destination of field ``name`` in the flag group ``prefix``."""
    return f"{prefix}_{name}" if prefix else name


def add_flags(parser, cls, *, prefix: str = "", only=None, exclude=()) -> None:
    """Add a flag for each field of dataclass ``cls`` (every field, or those in ``only``, less ``exclude``).

    Spelling ``--<prefix>-<name>`` with ``-`` for ``_`` (a bool also gets ``--no-<prefix>-<name>``) unless
    the field's metadata gives ``flags``; type from the annotation (a list is comma-separated), choices and
    help from the metadata, the dataclass default shown in the help. Every flag defaults to None, so
    ``given`` returns only what was typed and the dataclass, a preset or a recipe supplies the rest.
    """
    hints = typing.get_type_hints(cls)
    for f in _selected(cls, only, exclude):
        _add_field(parser, f, hints[f.name], prefix, cls.__name__)


def given(args: argparse.Namespace, cls, *, prefix: str = "", only=None, exclude=()) -> dict:
    """The values of ``cls``'s flags (as ``add_flags`` made them) that were given, by field name."""
    values = {}
    for f in _selected(cls, only, exclude):
        value = getattr(args, dest(f.name, prefix), None)
        if value is not None:
            values[f.name] = value
    return values


def _selected(cls, only, exclude) -> list[dataclasses.Field]:
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    unknown = [n for n in (*(only or ()), *exclude) if n not in names]
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
    return [f for f in fields if (only is None or f.name in only) and f.name not in exclude]


def _add_field(parser, f: dataclasses.Field, tp, prefix: str, owner: str) -> None:
    spellings = f.metadata.get("flags") or _default_spellings(f.name, tp, prefix, owner)
    target = parser.add_mutually_exclusive_group() if len(spellings) > 1 else parser
    first = None
    for flag, how in spellings.items():
        if callable(how):
            kw = {"type": how, "choices": f.metadata.get("choices"), "metavar": _metavar(f, flag)}
        else:
            kw = {"action": "store_const", "const": how}
        target.add_argument(flag, dest=dest(f.name, prefix), default=None, help=_help(f, how, first), **kw)
        first = first or flag


def _default_spellings(name: str, tp, prefix: str, owner: str) -> dict:
    stem = f"{prefix}-{name}".replace("_", "-") if prefix else name.replace("_", "-")
    base = _without_none(tp)
    if base is bool:
        return {f"--{stem}": True, f"--no-{stem}": False}
    converters = {int: int, float: float, str: str, list: comma_list}
    convert = converters.get(typing.get_origin(base) or base)
    if convert is None:
        raise TypeError(f"{owner}.{name}: no flag for type {type_name(tp)}; give the field flags= metadata")
    return {f"--{stem}": convert}


def _without_none(tp):
    """``X | None`` -> ``X``; any other annotation unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _metavar(f: dataclasses.Field, flag: str) -> str:
    """``{a,b,c}`` for a field with choices, else the flag's name: ``--question-ids`` -> ``QUESTION_IDS``."""
    choices = f.metadata.get("choices")
    return "{" + ",".join(map(str, choices)) + "}" if choices else flag.lstrip("-").replace("-", "_").upper()


def _help(f: dataclasses.Field, how, first: str | None) -> str:
    """The help line of one spelling: the field's help and default on the first, a pointer on the others."""
    default = default_of(f)
    if not callable(how):                                    # a constant flag (bools: --x / --no-x)
        text = f.metadata.get("help", "") if first is None else f"the opposite of {first}"
        text = f"{text} ({f.name} = {_shown(how)}{', the default' if how == default else ''})"
    elif first is None:
        shown = "" if default in (None, dataclasses.MISSING) else f" (default: {_shown(default)})"
        text = f.metadata.get("help", "") + shown
    else:
        text = f"another way to set {f.name}: see {first}"
    return text.strip().replace("%", "%%")


def _shown(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)
