"""Judge prompts: YAML files (packaged under thresher/prompts, or a user's own path), rendering, parsing.

A prompt file has ``system`` and ``user`` texts with ``{{placeholder}}`` slots, a ``parser`` name, a
``scale`` [lo, hi] that parsed numbers must lie in, and for logit rating the ``labels`` (one token each)
and an optional ``answer_prefix``. Slots: instruction, input, response, conversation (DS2's
"### role: content" lines), dimension, and instruction_1/response_1/instruction_2/response_2 for
pairwise prompts. Double braces keep JSON examples inside prompts literal.

Sample text is data, not instructions. The packaged prompts put every sample slot between the markers
``<<<SAMPLE`` and ``SAMPLE>>>`` (each on its own line) and tell the judge that everything between them is
part of the sample, including any instruction it contains. ``render`` neutralises the markers inside
every slot value (``<<<SAMPLE`` becomes ``<< SAMPLE``, ``SAMPLE>>>`` becomes ``SAMPLE >>``, also with
more brackets, spaces or another case), so a sample cannot close its block and speak as the prompt.
Limits: this makes the boundary unambiguous, it does not make a judge obey it; a model can still be
swayed by persuasive text inside the block (e.g. "this answer deserves a 5"), and a parser can only
guess which rating is the judge's own (see ds2_json). Treat judge scores of untrusted data as
evidence, not proof. Your own prompt files get the neutralisation too; add the markers and the
sentence about them to benefit from it.

Parsers return floats, NaN when the answer cannot be read (never a guessed mid-scale value):
  first_number  the first number of the answer (AlpaGasus: the score alone on the first line)
  ds2_json      the judge's own answer object -> (rarity, complexity, informativeness, overall): the first
                {...} object holding all four DS2 keys with a readable overall rating, else the first one
                with a readable overall rating, else the first with any DS2 key. A sample's object quoted
                by the judge (often one key, e.g. {"Overall rating": 10}) does not win over the answer;
                a judge that quotes a full four-key object before answering still fools it
  pair          "[Response k]: [n]" (or "[Response k] Score: n") for k = 1, 2
  tags          a JSON list of {"tag", "explanation"} (OpenCS); returns a list of tag strings or None
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from thresher.config import did_you_mean
from thresher.errors import ConfigError
from thresher.io import sha256_text

PACKAGED = Path(__file__).resolve().parent.parent / "prompts"
PARSERS = ("first_number", "ds2_json", "pair", "tags")
_SLOT = re.compile(r"\{\{(\w+)\}\}")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
SAMPLE_OPEN, SAMPLE_CLOSE = "<<<SAMPLE", "SAMPLE>>>"
_OPEN_RUN = re.compile(r"<{3,}[ \t]*(?=sample)", re.IGNORECASE)    # the brackets of "<<<SAMPLE"
_CLOSE_RUN = re.compile(r"(?<=sample)[ \t]*>{3,}", re.IGNORECASE)  # the brackets of "SAMPLE>>>"
DS2_KEYS = ("Rarity", "Complexity", "Informativeness", "Overall rating")


@dataclass(frozen=True)
class Prompt:
    name: str
    system: str
    user: str
    parser: str
    scale: tuple[float, float] | None = None
    labels: tuple[str, ...] = ()
    answer_prefix: str = ""
    source: str = ""
    slots: frozenset = field(default_factory=frozenset)

    def render(self, **values: str) -> list[dict]:
        """Chat messages with every slot filled; a slot with no value is an error, not an empty string."""
        missing = sorted(self.slots - set(values))
        if missing:
            raise ConfigError(f"Prompt {self.name!r} ({self.source}) uses slot(s) {', '.join(missing)} that the "
                              f"scorer does not fill. Slots it fills: {', '.join(sorted(values))}.")
        fill = lambda text: _SLOT.sub(lambda m: neutralise_markers(values[m.group(1)]), text)
        msgs = [{"role": "system", "content": fill(self.system)}] if self.system else []
        return msgs + [{"role": "user", "content": fill(self.user)}]

    def identity(self) -> str:
        """Content identity for cache keys: changing a prompt's text misses the cache."""
        return json.dumps([self.system, self.user, self.parser, self.scale, self.labels, self.answer_prefix])


def neutralise_markers(text) -> str:
    """``text`` with every sample marker (``<<<SAMPLE``, ``SAMPLE>>>``, any case, with more brackets or
    spaces and tabs between) broken up, so that it cannot open or close a sample block."""
    text = str(text)
    return _CLOSE_RUN.sub(" >>", _OPEN_RUN.sub("<< ", text))


def load_prompt(spec: str) -> Prompt:
    """A packaged prompt name (alpagasus, ds2, deita_complexity, ...) or a path to a YAML prompt file."""
    p = Path(spec)
    if not p.is_file():
        p = PACKAGED / f"{spec}.yaml"
        if not p.is_file():
            names = sorted(q.stem for q in PACKAGED.glob("*.yaml"))
            raise ConfigError(f"Prompt {spec!r} is neither a file nor a packaged prompt.{did_you_mean(spec, names)} "
                              f"Packaged prompts: {', '.join(names)}.")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not a readable YAML prompt file: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("user"), str):
        raise ConfigError(f"{p}: a prompt file must be a mapping with at least a 'user' text "
                          "(and optionally system, parser, scale, labels, answer_prefix).")
    unknown = set(raw) - {"name", "system", "user", "parser", "scale", "labels", "answer_prefix"}
    if unknown:
        raise ConfigError(f"{p}: unknown key(s) {', '.join(sorted(unknown))}.")
    parser = raw.get("parser", "first_number")
    if parser not in PARSERS:
        raise ConfigError(f"{p}: 'parser' must be one of {', '.join(PARSERS)}. Got {parser!r}.")
    scale = raw.get("scale")
    if scale is not None and (not isinstance(scale, list) or len(scale) != 2 or not scale[0] < scale[1]):
        raise ConfigError(f"{p}: 'scale' must be [low, high] with low < high. Got {scale!r}.")
    system, user = raw.get("system") or "", raw["user"]
    return Prompt(name=str(raw.get("name") or p.stem), system=system, user=user, parser=parser,
                  scale=tuple(scale) if scale else None, labels=tuple(str(x) for x in raw.get("labels") or ()),
                  answer_prefix=str(raw.get("answer_prefix") or ""), source=str(p),
                  slots=frozenset(_SLOT.findall(system + user)))


def prompt_sha(spec: str) -> str:
    return sha256_text(load_prompt(spec).identity())[:16]


# ------------------------------------------------------------------------------------------ parsers
def in_scale(x: float, scale) -> float:
    if scale is None or (scale[0] <= x <= scale[1]):
        return float(x)
    return math.nan


def parse_first_number(text: str, scale=None) -> float:
    """The first number in the answer, NaN if none or outside the scale (no fallback to a later one:
    "4/5" reads 4, "I cannot rate this, 10 reasons" on a 0-5 scale reads NaN)."""
    m = _NUMBER.search(text or "")
    return in_scale(float(m.group()), scale) if m else math.nan


def _json_objects(text: str):
    """Every balanced top-level {...} substring, in text order (brace matching that respects JSON strings)."""
    spans, stack, in_str, esc = [], [], False, False
    for i, ch in enumerate(text):
        if in_str:
            esc = (ch == "\\") and not esc
            if ch == '"' and not esc:
                in_str = False
            continue
        if ch == '"' and stack:
            in_str = True
        elif ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            a = stack.pop()
            if not stack:
                spans.append((a, i + 1))
    return [text[a:b] for a, b in spans]


def _ds2_values(obj: dict) -> tuple[float, float, float, float]:
    vals = []
    for k in DS2_KEYS:
        v = obj.get(k)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) or \
            (isinstance(v, str) and _NUMBER.fullmatch(v.strip()))
        vals.append(in_scale(float(v), (1, 10)) if ok else math.nan)
    return tuple(vals)


def parse_ds2(text: str) -> tuple[float, float, float, float]:
    """(rarity, complexity, informativeness, overall) from the judge's own answer object: the first JSON
    object with all four DS2 keys and a readable overall rating, else the first with a readable overall
    rating, else the first with any DS2 key (a key missing or outside 1-10 is NaN). Falls back to the
    first '"Overall rating": n' when no object parses. See the module docstring for the limits."""
    found = []
    for blob in _json_objects(text or ""):
        try:
            obj = json.loads(blob)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and any(k in obj for k in DS2_KEYS):
            vals = _ds2_values(obj)
            found.append((all(k in obj for k in DS2_KEYS) and math.isfinite(vals[3]), math.isfinite(vals[3]), vals))
    for rank in (lambda f: f[0], lambda f: f[1], lambda f: True):
        for f in found:
            if rank(f):
                return f[2]
    m = re.search(r'"?Overall rating"?\s*[:=]\s*(\d+(?:\.\d+)?)', text or "", re.IGNORECASE)
    if m:
        return (math.nan, math.nan, math.nan, in_scale(float(m.group(1)), (1, 10)))
    return (math.nan,) * 4
