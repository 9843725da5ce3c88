"""Instruction-tuning records: their three shapes, validation, normalisation to one conversation form,
ids, and the turns of a conversation that get scored.

Shapes: alpaca ``{"instruction", "input"?, "output"}`` (IterIT's multi-turn variant holds the earlier
turns in ``instruction``), sharegpt ``{"conversations": [{"from", "value"}, ...]}`` and messages
``{"messages": [{"role", "content"}, ...]}``. ``NORMALISERS[fmt](record)`` returns
``(messages, meta)`` or raises ``Invalid``, whose ``reason`` is the short key counted when invalid
records are skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import numpy as np

from thresher.data.jsonscan import type_name
from thresher.errors import ConfigError, DataError, as_option

FORMATS = ("alpaca", "sharegpt", "messages")
TURNS = ("last", "first", "all")
SHAPES = ('alpaca {"instruction", "input"?, "output"}, sharegpt {"conversations": '
          '[{"from", "value"}, ...]} or messages {"messages": [{"role", "content"}, ...]}')
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
                   "system": "system"}
_MESSAGE_ROLES = ("system", "user", "assistant")
_MAX_DEPTH = 500              # nesting a record may have: json.dumps (ids, writing) fails near 1000
_SURROGATE = re.compile("[\ud800-\udfff]")


def _limit_hint() -> str:
    return (f"Raise the limit with {as_option('max_record_chars', metavar='N')} (0 = no limit; in a recipe "
            f"data.max_record_chars), or drop such records with {as_option('on_invalid', 'skip')}.")


class Invalid(Exception):
    """One record cannot be used; ``reason`` is the short key counted in ``report.skipped``."""

    def __init__(self, reason: str, problem: str, *, field: str | None = None,
                 expected: str | None = None, hint: str | None = None):
        super().__init__(problem)
        self.reason, self.problem, self.field = reason, problem, field
        self.expected, self.hint = expected, hint

    def error(self, path, where: str, *, failing: bool = False) -> DataError:
        hint = self.hint
        if failing and hint is None:
            hint = f"Fix the record, or pass {as_option('on_invalid', 'skip')} to drop invalid records."
        return DataError(path, self.problem, where=where, field=self.field,
                         expected=self.expected, hint=hint)


def detect_format(record, *, path="<input>", where: str = "record 0") -> str:
    """Which of the three shapes ``record`` has, judged by its keys."""
    if not isinstance(record, dict):
        raise DataError(path, f"the record is {type_name(record)}, not a JSON object, so its "
                        "format cannot be detected.", where=where, expected=SHAPES)
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    keys = ", ".join(repr(k) for k in list(record)[:12]) or "none"
    raise DataError(path, f"cannot detect the record format from its keys ({keys}).",
                    where=where, expected=SHAPES,
                    hint="Rename the fields, or name the format with "
                         f"{as_option('fmt', metavar='alpaca|sharegpt|messages', flag='--format')}.")


def split_turns(messages, turns: str = "last") -> list[tuple[list[dict], str]]:
    """The (context messages, response text) units of one conversation that get scored."""
    if turns not in TURNS:
        raise ConfigError(f"turns={turns!r} is not allowed; use one of {', '.join(TURNS)}.")
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not answers:
        return []
    chosen = {"last": answers[-1:], "first": answers[:1], "all": answers}[turns]
    return [(list(messages[:i]), messages[i]["content"]) for i in chosen]


# --------------------------------------------------------------------------------------------
# Validation and normalisation
# --------------------------------------------------------------------------------------------

def _require(record: dict, key: str, kind: type, expected: str, field: str | None = None):
    """``record[key]`` checked to be present and of type ``kind``."""
    name = field or key
    if key not in record:
        raise Invalid(f"missing field '{name}'", "the field is missing.", field=name,
                      expected=expected)
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise Invalid(f"wrong type for '{name}'", f"the value is {type_name(value)}.",
                      field=name, expected=expected)
    return value


def _check_object(record) -> dict:
    if not isinstance(record, dict):
        raise Invalid("not an object", f"the record is {type_name(record)}.",
                      expected="a JSON object")
    return record


def _normalise_alpaca(record) -> tuple[list[dict], dict]:
    record = _check_object(record)
    instruction = _require(record, "instruction", (str, list),
                           "a string (or a list of {\"from\", \"value\"} turns)")
    output = _require(record, "output", str, "a string")
    text = record.get("input")
    if text is None:                      # Parquet and HF tables fill a missing column with null
        text = ""
    elif not isinstance(text, str):
        raise Invalid("wrong type for 'input'", f"the value is {type_name(text)}.",
                      field="input", expected="a string (may be empty)")
    if isinstance(instruction, list):
        return _normalise_iterit(instruction, output)
    return _alpaca_messages(instruction, text, output), {"instruction": instruction, "input": text}


def _alpaca_messages(instruction: str, text: str, output: str) -> list[dict]:
    if not instruction.strip():
        raise Invalid("empty instruction", "the instruction is empty.", field="instruction",
                      expected="non-blank text")
    if not output.strip():
        raise Invalid("empty response", "the response is empty.", field="output",
                      expected="non-blank text")
    prompt = instruction + ("\n\n" + text if text else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def _normalise_iterit(turns: list, output: str) -> tuple[list[dict], dict]:
    """IterIT's multi-turn alpaca: ``instruction`` holds the earlier turns of the dialogue."""
    messages = _sharegpt_turns(turns, "instruction")
    messages.append({"role": "assistant", "content": output})
    messages = _check_conversation(messages, "instruction", output_field="output")
    last_user = [m["content"] for m in messages if m["role"] == "user"][-1]
    return messages, {"instruction": last_user, "input": ""}


def _normalise_sharegpt(record) -> tuple[list[dict], dict]:
    record = _check_object(record)
    turns = _require(record, "conversations", list, 'a list of {"from", "value"} turns')
    return _check_conversation(_sharegpt_turns(turns, "conversations"), "conversations"), {}


def _sharegpt_turns(turns: list, key: str) -> list[dict]:
    messages = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise Invalid(f"wrong type for '{key}' turn", f"the turn is {type_name(turn)}.",
                          field=where, expected='an object {"from", "value"}')
        speaker = _require(turn, "from", str, "a string such as 'human' or 'gpt'",
                           f"{where}.from")
        role = _SHAREGPT_ROLES.get(speaker.strip().lower())
        if role is None:
            raise Invalid(f"unknown speaker '{speaker}'", f"unknown speaker {speaker!r}.",
                          field=f"{where}.from", expected=", ".join(_SHAREGPT_ROLES))
        content = _require(turn, "value", str, "a string", f"{where}.value")
        messages.append({"role": role, "content": content})
    return messages


def _normalise_messages(record) -> tuple[list[dict], dict]:
    record = _check_object(record)
    turns = _require(record, "messages", list, 'a list of {"role", "content"} messages')
    messages = []
    for i, turn in enumerate(turns):
        where = f"messages[{i}]"
        if not isinstance(turn, dict):
            raise Invalid("wrong type for 'messages' turn", f"the turn is {type_name(turn)}.",
                          field=where, expected='an object {"role", "content"}')
        role = _require(turn, "role", str, "system, user or assistant", f"{where}.role")
        if role not in _MESSAGE_ROLES:
            raise Invalid(f"unknown role '{role}'", f"unknown role {role!r}.",
                          field=f"{where}.role", expected="system, user or assistant")
        content = _require(turn, "content", str, "a string", f"{where}.content")
        messages.append({"role": role, "content": content})
    return _check_conversation(messages, "messages"), {}


def _check_conversation(messages: list[dict], key: str, output_field: str | None = None):
    """Rejects empty turns and conversations that have nothing to score.

    An empty system prompt carries no information, so it is dropped rather than rejected.
    """
    if not messages:
        raise Invalid("empty conversation", "the conversation has no turns.", field=key,
                      expected="at least a user turn and an assistant turn")
    kept = []
    for i, m in enumerate(messages):
        if m["content"].strip():
            kept.append(m)
        elif m["role"] != "system":
            _empty_turn(m["role"], f"{key}[{i}]" if i < len(messages) - 1 or not output_field
                        else output_field)
    _check_first_answer(kept, key)
    return kept


def _empty_turn(role: str, field: str):
    if role == "assistant":
        raise Invalid("empty response", "the assistant turn is empty.", field=field,
                      expected="non-blank text")
    raise Invalid("empty instruction", "the user turn is empty.", field=field,
                  expected="non-blank text")


def _check_first_answer(messages: list[dict], key: str) -> None:
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise Invalid("no assistant turn", "the conversation has no assistant turn.",
                      field=key, expected="at least one assistant turn to score")
    if "user" not in roles[:roles.index("assistant")]:
        raise Invalid("assistant turn before any user turn",
                      "the first assistant turn has no user turn before it.", field=key,
                      expected="a user turn before the first assistant turn")


NORMALISERS = {"alpaca": _normalise_alpaca, "sharegpt": _normalise_sharegpt,
               "messages": _normalise_messages}


def check_values(record, max_chars: int | None) -> None:
    """Every string of ``record`` (keys too) is valid Unicode and at most ``max_chars`` long, and the
    record is at most ``_MAX_DEPTH`` levels deep. Iterative: a deep record cannot overflow the stack.

    A quick pass level by level; only a record that fails it is walked again to name the field.
    """
    if not _values_ok(record, max_chars):
        _locate_bad_value(record, max_chars)


def _bad_text(text: str, max_chars: int | None) -> bool:
    return (max_chars is not None and len(text) > max_chars) or (not text.isascii()
                                                                 and _SURROGATE.search(text) is not None)


def _values_ok(record, max_chars: int | None) -> bool:
    level, depth = [record], 0
    while level:
        nxt: list = []
        for value in level:
            if isinstance(value, str):
                if _bad_text(value, max_chars):
                    return False
            elif isinstance(value, (dict, list, tuple)):
                if depth >= _MAX_DEPTH:
                    return False
                if isinstance(value, dict):
                    if any(isinstance(k, str) and _bad_text(k, None) for k in value):
                        return False
                    nxt.extend(value.values())
                else:
                    nxt.extend(value)
        level, depth = nxt, depth + 1
    return True


def _locate_bad_value(record, max_chars: int | None) -> None:
    """Raises the ``Invalid`` naming the first bad value (in document order) of ``record``."""
    stack = [(record, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value, where or "(record)", max_chars)
            continue
        if isinstance(value, dict):
            items = [(k, v, f"{where}.{_printable(k)}" if where else _printable(k)) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            items = [(None, v, f"{where}[{i}]") for i, v in enumerate(value)]
        else:
            continue
        if depth >= _MAX_DEPTH:
            top = re.split(r"[.\[]", where, maxsplit=1)[0]
            raise Invalid("nested too deeply", f"the record is nested more than {_MAX_DEPTH} levels deep.",
                          field=top or None)
        for key, _, path in items:
            if isinstance(key, str):
                _check_text(key, f"{path} (key)", None)
        stack.extend((v, path, depth + 1) for _, v, path in reversed(items))


def _printable(key) -> str:
    """A key as text that can be printed and written (a lone surrogate becomes its \\u escape)."""
    return str(key).encode("utf-8", "backslashreplace").decode("utf-8")


def _check_text(text: str, where: str, max_chars: int | None) -> None:
    if max_chars is not None and len(text) > max_chars:
        raise Invalid("text over max_record_chars", f"the text is {len(text):,} characters long, over the "
                      f"limit of {max_chars:,} characters per field.", field=where, hint=_limit_hint())
    bad = None if text.isascii() else _SURROGATE.search(text)
    if bad:
        raise Invalid("lone surrogate", f"the text holds the lone surrogate \\u{ord(bad.group()):04x} at "
                      f"character {bad.start()}: half of a UTF-16 pair, not a character, so the text cannot "
                      "be encoded.", field=where, expected="valid Unicode text (\\ud800-\\udfff escapes "
                      "only in high+low pairs)")


# --------------------------------------------------------------------------------------------
# Ids
# --------------------------------------------------------------------------------------------

def record_id(record) -> str | None:
    """The record's own id (str or int), or None when it has none usable."""
    if not isinstance(record, dict):
        return None
    own = record.get("id")
    if isinstance(own, bool) or not isinstance(own, (str, int)) or own == "":
        return None
    return str(own)


def content_hash(record) -> str:
    """Stable id from content alone, so it survives reordering, renaming and re-exports."""
    text = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


_SUFFIX = re.compile(r"[1-9][0-9]*")        # the occurrence number a renamed repeat gets after its '#'


def occurrence_renames(ids, keys: np.ndarray, marked) -> dict[int, str]:
    """{row: new id} for the rows whose id repeats an earlier row's: the first occurrence keeps its id, later
    ones get '#2', '#3', ... by occurrence, skipping any id already taken (``x``, ``x``, ``x#2`` becomes
    ``x``, ``x#2``, ``x#2#1``): the same result as checking every row in file order against a set of all
    ids given so far, but without holding that set for every row.

    ``ids``: each row's own id (a sequence of str); ``keys``: int64 ``hash()`` of each id (equal ids have
    equal keys); ``marked``: the rows whose id contains '#'. Only rows whose id is repeated, or is such a
    repeat's renamed form (``x#2``, transitively), can be renamed or collide with a renamed one, so only
    they are checked in order; every other id is unique and never equals a new name (new names hold '#').
    """
    order = np.argsort(keys, kind="stable")
    same = keys[order][1:] == keys[order][:-1]
    suspects = np.unique(np.concatenate([order[1:][same], order[:-1][same]]))
    repeated = {text for text, n in Counter(ids[i] for i in suspects.tolist()).items() if n > 1}
    if not repeated:
        return {}
    involved, rows = set(repeated), {i for i in suspects.tolist() if ids[i] in repeated}
    grown = True
    while grown:                       # "x#2" is involved when "x" is; "x#2#1" when "x#2" is
        grown = False
        for i in np.asarray(marked, dtype=np.int64).tolist():
            text = ids[i]
            base, _, number = text.rpartition("#")
            if text not in involved and _SUFFIX.fullmatch(number) and base in involved:
                involved.add(text)
                grown = True
    rows.update(i for i in np.asarray(marked, dtype=np.int64).tolist() if ids[i] in involved)
    return _rename_in_order(ids, sorted(rows))


def _rename_in_order(ids, rows: list[int]) -> dict[int, str]:
    """The sequential rule over ``rows`` (file order): a taken id gets the next free '#count' suffix."""
    seen: set[str] = set()
    occurrences: dict[str, int] = {}
    renamed = {}
    for i in rows:
        rid = ids[i]
        count = occurrences.get(rid, 0) + 1
        occurrences[rid] = count
        candidate = rid
        while candidate in seen:
            candidate = f"{rid}#{count}"
            count += 1
        seen.add(candidate)
        if candidate != rid:
            renamed[i] = candidate
    return renamed
