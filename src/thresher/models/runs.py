"""The one reader of a training run folder: what ``thresher train`` (thresher.training.sft) writes to ``--out``.

A run folder ``OUT/`` holds:
  config.json             {"config": the resolved TrainConfig as a dict, "preset": its name or null,
                           "model": the model's identity, e.g. "hub:<id>@<commit>"}
  manifest.json           argv, time, package versions
  train_ids.json          {"ids": ids of the rows trained on, in table order, "skipped": {id: reason}}
  epochs/epoch-<e>.json   ids in the order epoch e trained them (thresher.training.hooks)
  iterit/epoch-<e>.json   an IterIT run's selection of epoch e, "selected_ids" in rank order
                          (thresher.training.iterit)
  checkpoint-<step>/      a checkpoint (thresher.models.checkpoints reads them)
  final/                  written when the run reached its last step: a PEFT adapter (adapter_config.json,
                          adapter_model.safetensors) for LoRA, a plain model folder (config.json, weights)
                          for full fine-tuning
  merged/                 (when asked) the base model with the adapter folded in, a plain model folder
                          (thresher.training.export)
  summary.json            steps, loss, runtime, throughput, "final": the final/ path or null

``TrainingRunFolder(path)`` reads a file when one of its properties is asked for, every time (a view of the
folder, not a copy). A file that is missing, not JSON or without the field asked for is a ConfigError that
names the folder and the file and says what to do. The file names are defined here only; ``write_config``
and ``write_train_ids`` write the two records the reader reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from thresher.errors import ConfigError
from thresher.io import write_json

CONFIG = "config.json"
MANIFEST = "manifest.json"
TRAIN_IDS = "train_ids.json"
SUMMARY = "summary.json"
EPOCHS = "epochs"
ITERIT = "iterit"
FINAL = "final"
MERGED = "merged"
MODEL_CONFIG = "config.json"                 # a plain model folder's config (final/ of a full run, merged/)
ADAPTER_CONFIG = "adapter_config.json"       # a PEFT adapter folder (final/ of a LoRA run, a checkpoint)
ADAPTER_WEIGHTS = "adapter_model.safetensors"

_RETRAIN = "Train again into a new --out, or restore the file."
_MISSING = {
    CONFIG: "is not a thresher training run (no config.json). Pass the --out folder of a `thresher train` run.",
    TRAIN_IDS: "has no train_ids.json, which `thresher train` writes next to config.json before training: the "
               "folder is incomplete. " + _RETRAIN,
    SUMMARY: "has no summary.json: the run has not finished. Resume it with `thresher train` and the same "
             "arguments.",
    f"{FINAL}/{ADAPTER_CONFIG}": f"has no finished LoRA adapter ({FINAL}/{ADAPTER_CONFIG} is missing): the run is a "
                                 "full fine-tune or stopped before its last step.",
}


def write_config(out, config: dict, preset: str | None, model: str) -> None:
    """Write ``out/config.json``: the resolved TrainConfig (``config``), the preset's name, the model identity."""
    write_json(Path(out) / CONFIG, {"config": config, "preset": preset, "model": model})


def write_train_ids(out, ids, skipped: dict) -> None:
    """Write ``out/train_ids.json``: the ids trained on (table order) and {id: reason} of the rows left out."""
    write_json(Path(out) / TRAIN_IDS, {"ids": list(ids), "skipped": dict(skipped)})


@dataclass(frozen=True)
class TrainingRunFolder:
    """A ``thresher train`` run folder (see the module docstring); nothing is read until asked for."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    # ------------------------------------------------------------------ where things are, what is there
    @property
    def final_dir(self) -> Path:
        return self.path / FINAL

    @property
    def merged_dir(self) -> Path:
        return self.path / MERGED

    @property
    def iterit_dir(self) -> Path:
        return self.path / ITERIT

    @property
    def has_records(self) -> bool:
        """config.json and train_ids.json are there: a run of thresher's trainer (also one written before
        output folders were marked)."""
        return (self.path / CONFIG).is_file() and (self.path / TRAIN_IDS).is_file()

    @property
    def finished(self) -> bool:
        """final/ and summary.json are there: the run reached its last step (summary.json's "final" says
        whether its latest call did)."""
        return self.final_dir.is_dir() and (self.path / SUMMARY).is_file()

    @property
    def is_lora(self) -> bool:
        """final/ holds a PEFT adapter."""
        return (self.final_dir / ADAPTER_CONFIG).is_file()

    @property
    def is_full(self) -> bool:
        """final/ holds a plain model (full fine-tuning)."""
        return (self.final_dir / MODEL_CONFIG).is_file()

    @property
    def has_merged(self) -> bool:
        """merged/ holds a plain model (base + adapter folded in)."""
        return (self.merged_dir / MODEL_CONFIG).is_file()

    @property
    def model_dir(self) -> Path | None:
        """The plain model folder a later stage or scorer loads: merged/ (LoRA), final/ (full), or None."""
        if self.has_merged:
            return self.merged_dir
        return self.final_dir if self.is_full else None

    # ------------------------------------------------------------------ config.json
    @property
    def config(self) -> dict:
        """The resolved TrainConfig the run trained with, as a dict."""
        return self._field(CONFIG, "config", dict)

    @property
    def preset(self) -> str | None:
        return self._object(CONFIG).get("preset")

    @property
    def model_identity(self) -> str:
        """The trained model's identity ("hub:<id>@<commit>", a folder's fingerprint, ...); "" when unrecorded."""
        return str(self._object(CONFIG).get("model") or "")

    @property
    def base_model(self) -> str:
        """The run's model spec (TrainConfig.model): "bundled", a path or a hub id."""
        model = self.config.get("model")
        if not isinstance(model, str) or not model:
            raise ConfigError(f"{self.path / CONFIG} records no model (its 'config' has no 'model' string); training "
                              f"run {self.path} is damaged. {_RETRAIN}")
        return model

    def config_or_none(self) -> dict | None:
        """The recorded TrainConfig, or None for a folder without thresher's config.json: no such file, or
        the config.json of another program (a JSON object without a "config" object, e.g. a model's)."""
        if not (self.path / CONFIG).is_file():
            return None
        saved = self._object(CONFIG).get("config")
        return saved if isinstance(saved, dict) else None

    # ------------------------------------------------------------------ train_ids.json, summary.json, final/
    @property
    def ids(self) -> list[str]:
        """Ids of the rows trained on, in table order."""
        return self._field(TRAIN_IDS, "ids", list)

    @property
    def skipped(self) -> dict:
        """{id: reason} of the rows that could not be trained on."""
        return self._field(TRAIN_IDS, "skipped", dict)

    @property
    def rows(self) -> int | None:
        """Number of rows trained on (>= 0); None when the run has no train_ids.json."""
        return len(self.ids) if (self.path / TRAIN_IDS).is_file() else None

    @property
    def summary(self) -> dict:
        return self._object(SUMMARY)

    @property
    def adapter_config(self) -> dict:
        """final/adapter_config.json of a finished LoRA run (r, lora_alpha, target_modules, ...)."""
        return self._object(f"{FINAL}/{ADAPTER_CONFIG}")

    @property
    def iterit_selected_ids(self) -> list[str]:
        """Ids an IterIT run trained in its last epoch, in rank order; [] when it logged no epoch."""
        logs = sorted(self.iterit_dir.glob("epoch-*.json"), key=lambda p: int(p.stem.split("-")[1]))
        if not logs:
            return []
        return list(self._field(f"{ITERIT}/{logs[-1].name}", "selected_ids", list))

    # ------------------------------------------------------------------ reading
    def _object(self, name: str) -> dict:
        """The JSON object in ``path/name``; a ConfigError naming the folder and the file otherwise."""
        file = self.path / name
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{self.path} " + _MISSING.get(name, f"has no {name}. {_RETRAIN}")) from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"{file} cannot be read as JSON ({e}); training run {self.path} is damaged. "
                              f"{_RETRAIN}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{file} must hold a JSON object. Got {type(data).__name__}; training run {self.path} "
                              f"is damaged. {_RETRAIN}")
        return data

    def _field(self, name: str, key: str, kind: type):
        value = self._object(name).get(key)
        if not isinstance(value, kind):
            raise ConfigError(f"{self.path / name} must have a {key!r} {'object' if kind is dict else 'list'}. Got "
                              f"{type(value).__name__}; training run {self.path} is damaged. {_RETRAIN}")
        return value
