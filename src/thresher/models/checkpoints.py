"""The one reader of training checkpoints: when one is complete, which one to resume from, rotation, and
what a checkpoint holds (Adam's moments by name, learning rates, the LoRA adapter, a content fingerprint).

A checkpoint ``OUT/checkpoint-<step>/`` holds the model (LoRA: ``adapter_model.safetensors``; full
fine-tuning: ``model.safetensors``), ``optimizer.pt`` (AdamW state: per parameter ``step``, ``exp_avg``,
``exp_avg_sq``), ``scheduler.pt``, ``rng_state.pth``, ``trainer_state.json`` (``log_history`` with the
learning rate of every logged step), thresher's ``optimizer_params.json`` (parameter names in the order
of the optimizer's state ids), ``sampler_state.json`` (when the epoch sampler has a state) and, written
last, ``thresher_complete.json``: every file of the checkpoint with its size in bytes.

Completeness: a checkpoint of a thresher run counts only when its marker is readable, lists the files
thresher needs and every listed file is there with the listed size. Anything else (a save cut off by a
kill, a file truncated later) is skipped with a warning, so a resume falls back to the newest complete
checkpoint and never continues without the sampler state. Rotation (``save_total_limit``) is done here,
after the marker of the new checkpoint is written, and only ever deletes complete checkpoints older than
the newest ``limit`` complete ones: transformers' own rotation ran before thresher's files were written,
so a kill in between could leave only an incomplete checkpoint.

A run directory without thresher's records (a plain HF Trainer run, read by the gradient scorers with
``foreign=True``) has no markers; its checkpoints count when ``trainer_state.json`` is readable and the
optimizer state and weights are there (the Trainer writes ``trainer_state.json`` after them). Its
``optimizer.pt`` numbers parameters by position without names: the Trainer builds its groups as
[weight-decay params, no-decay params], each in ``model.named_parameters()`` order over trainable params
(transformers ``Trainer.create_optimizer``), and ``trainer_param_order`` rebuilds that order from the model.

torch, PEFT and safetensors are imported inside the functions that load tensors, so listing, completeness
and rotation stay importable without them.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np

from thresher.errors import ConfigError
from thresher.io import file_sha256, sha256_hex, write_json
from thresher.models.runs import ADAPTER_CONFIG, ADAPTER_WEIGHTS, TRAIN_IDS

log = logging.getLogger(__name__)

MARKER = "thresher_complete.json"
SAMPLER_STATE = "sampler_state.json"
OPTIMIZER_PARAMS = "optimizer_params.json"
OPTIMIZER = "optimizer.pt"
TRAINER_STATE = "trainer_state.json"
MARKER_VERSION = 1
_CKPT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = (ADAPTER_WEIGHTS, "model.safetensors", "model.safetensors.index.json")
_NEEDED = (TRAINER_STATE, OPTIMIZER, OPTIMIZER_PARAMS)
_NO_DECAY = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


# ----------------------------------------------------------------------------------- completeness
def mark_complete(ckpt, required: tuple[str, ...] = ()) -> None:
    """Write the completion marker, last: every file under ``ckpt`` with its size, and the files that
    must be listed (``required``: e.g. the sampler state of a run whose sampler has one)."""
    ckpt = Path(ckpt)
    files = {p.relative_to(ckpt).as_posix(): p.stat().st_size for p in sorted(ckpt.rglob("*"))
             if p.is_file() and p.name != MARKER and not p.name.startswith(".")}
    missing = [f for f in (*_NEEDED, *required) if f not in files]
    if missing:                                  # a bug in the writer, not a user error: never mark it
        raise RuntimeError(f"{ckpt} lacks {', '.join(missing)}; not marking it complete")
    write_json(ckpt / MARKER, {"version": MARKER_VERSION, "required": [*_NEEDED, *required], "files": files})


def checkpoint_problem(ckpt) -> str | None:
    """Why ``ckpt`` is not a complete thresher checkpoint, or None when it is."""
    ckpt = Path(ckpt)
    try:
        marker = json.loads((ckpt / MARKER).read_text(encoding="utf-8"))
        files, required = dict(marker["files"]), list(marker["required"])
    except FileNotFoundError:
        return f"no {MARKER}: the save was cut off before thresher finished it"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MARKER} is unreadable"
    absent = [f for f in required if f not in files]
    if absent or not any(w in files for w in _WEIGHTS):
        return f"{MARKER} does not list {', '.join(absent) or 'the model weights'}"
    for name, size in files.items():
        p = ckpt / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != size:
            return f"{name} has {p.stat().st_size} bytes, {MARKER} says {size}"
    return None


def is_thresher_run(out) -> bool:
    """True for a run directory written by thresher's trainer (its run records or any marker)."""
    out = Path(out)
    return (out / TRAIN_IDS).is_file() or any((d / MARKER).is_file() for _, d in _checkpoint_dirs(out))


def require_complete(ckpt) -> None:
    """ConfigError when ``ckpt`` is a checkpoint of a thresher run that is not complete (see module doc);
    a checkpoint of another trainer (no marker, no thresher run records beside it) passes."""
    ckpt = Path(ckpt)
    if not ((ckpt / MARKER).exists() or is_thresher_run(ckpt.parent)):
        return
    why = checkpoint_problem(ckpt)
    if why:
        raise ConfigError(f"{ckpt} is an incomplete checkpoint ({why}). Use a complete checkpoint of the run: "
                          "thresher.training.last_checkpoint(run directory) names the newest one.")


# ----------------------------------------------------------------------------------- listing, rotation
def _checkpoint_dirs(out: Path) -> list[tuple[int, Path]]:
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), d) for d in out.iterdir() if (m := _CKPT.match(d.name)) and d.is_dir()]
    return sorted(found)


def list_checkpoints(out, *, foreign: bool = False, warn: bool = True) -> list[Path]:
    """Complete checkpoints of a run directory, oldest step first; incomplete ones are skipped with a
    warning (``warn=False``: silently). ``foreign=True`` also reads runs of other trainers (no markers)."""
    out = Path(out)
    dirs = _checkpoint_dirs(out)
    if foreign and dirs and not is_thresher_run(out):
        return [d for _, d in dirs if _plain_complete(d)]
    found = []
    for _, d in dirs:
        why = checkpoint_problem(d)
        if why is None:
            found.append(d)
        elif warn:
            log.warning("skipping %s: incomplete checkpoint (%s)", d, why)
    return found


def step_of(ckpt) -> int:
    """The training step in a checkpoint folder's name (``checkpoint-<step>``)."""
    return int(_CKPT.match(Path(ckpt).name).group(1))


def has_adapter(ckpt) -> bool:
    """Whether a checkpoint holds a PEFT LoRA adapter (its weights and its config)."""
    return (Path(ckpt) / ADAPTER_WEIGHTS).is_file() and (Path(ckpt) / ADAPTER_CONFIG).is_file()


def last_checkpoint(out) -> Path | None:
    ck = list_checkpoints(out)
    return ck[-1] if ck else None


def rotate(out, limit: int | None) -> list[Path]:
    """Delete complete checkpoints older than the newest ``limit`` complete ones; the deleted folders.

    Incomplete checkpoints are neither counted nor deleted here (the trainer replaces one when it saves
    the same step again), so an incomplete checkpoint never pushes out the last complete one."""
    if not limit or limit <= 0:
        return []
    doomed = list_checkpoints(out, warn=False)[:-limit]
    for d in doomed:
        log.info("deleting %s (save_total_limit=%d)", d, limit)
        shutil.rmtree(d, ignore_errors=True)
    return doomed


def _plain_complete(d: Path) -> bool:
    try:
        json.loads((d / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (d / OPTIMIZER).is_file() and any((d / w).is_file() for w in _WEIGHTS)


# ----------------------------------------------------------------------------------- contents
def read_trainer_state(checkpoint) -> dict:
    """The checkpoint's trainer_state.json (``log_history``, ``epoch``, ...)."""
    require_complete(checkpoint)
    return json.loads((Path(checkpoint) / TRAINER_STATE).read_text(encoding="utf-8"))


def learning_rates(checkpoint) -> dict[int, float]:
    """step -> learning rate, from the checkpoint's trainer_state.json (entries without one skipped)."""
    return {int(e["step"]): float(e["learning_rate"]) for e in read_trainer_state(checkpoint).get("log_history", [])
            if "learning_rate" in e and "step" in e}


def checkpoint_learning_rate(trainer_state, window_epochs: float = 1.0) -> float:
    """Mean learning rate over the log entries of the last ``window_epochs`` epochs before the checkpoint.

    ``trainer_state``: a checkpoint folder, its trainer_state.json, or that file's content (a dict).
    CLUES's eta_c: mean of ``learning_rate`` over log_history entries with epoch > last epoch - 1. Eval
    entries carry no ``learning_rate`` and are skipped (the reference raised KeyError on them).
    """
    state = trainer_state
    if not isinstance(state, dict):
        path = Path(state)
        state = read_trainer_state(path if path.is_dir() else path.parent)
    logs = [e for e in state.get("log_history", []) if "learning_rate" in e and "epoch" in e]
    if not logs:
        raise ConfigError("trainer_state.json has no log entry with a learning_rate; "
                          "train with logging_steps small enough to log inside every checkpoint window.")
    epochs = np.array([e["epoch"] for e in logs], dtype=float)
    last = float(state.get("epoch", epochs.max()))
    keep = (epochs > last - window_epochs) & (epochs <= last + 1e-9)      # window (last - w, last]
    if not keep.any():
        raise ConfigError(f"No learning_rate was logged in the last {window_epochs} epoch(s) before epoch {last}.")
    return float(np.mean([e["learning_rate"] for e, k in zip(logs, keep) if k]))


def checkpoint_fingerprint(checkpoint) -> str:
    """32 hex characters naming a LoRA checkpoint's content: its adapter weights and trainer_state.json
    (not its path, so a copied run keeps its caches and a retrained one misses them)."""
    ck = Path(checkpoint)
    return sha256_hex(file_sha256(ck / ADAPTER_WEIGHTS), file_sha256(ck / TRAINER_STATE))[:32]


def load_adam_moments(checkpoint, model=None) -> dict[str, dict]:
    """{parameter name: {"exp_avg", "exp_avg_sq", "step"}} from a checkpoint's optimizer.pt.

    Names are the model's ``named_parameters()`` names at training time (for LoRA, e.g.
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight``), read from thresher's
    optimizer_params.json; a checkpoint of another trainer has none, and its moments are named after
    ``model``'s trainable parameters in the Trainer's order (``trainer_param_order``). Only trainable
    parameters are in the optimizer, so these are exactly the LoRA matrices under LoRA. A parameter without
    optimizer state (no step taken yet) is left out.
    """
    import torch

    ck = Path(checkpoint)
    require_complete(ck)
    if not (ck / OPTIMIZER).is_file():
        raise ConfigError(f"{ck / OPTIMIZER} does not exist. Point at a Trainer checkpoint directory "
                          "(checkpoint-N with optimizer.pt, trainer_state.json and the adapter).")
    names, mismatch = _optimizer_names(ck, model)
    opt = torch.load(ck / OPTIMIZER, map_location="cpu", weights_only=True)
    order = [i for g in opt["param_groups"] for i in g["params"]]       # state ids, group by group
    if len(order) != len(names):
        raise ConfigError(f"{ck}: optimizer.pt has {len(order)} parameters but {mismatch}")
    out = {}
    for sid, name in zip(order, names):
        st = opt["state"].get(sid)
        if st is not None:                                               # no state before a first step
            out[name] = {k: st[k] for k in ("exp_avg", "exp_avg_sq", "step") if k in st}
    return out


def _optimizer_names(ck: Path, model) -> tuple[list[str], str]:
    """Parameter names in the order of optimizer.pt's state ids (see ``load_adam_moments``), and what to say
    when their number differs from the optimizer's."""
    names_file = ck / OPTIMIZER_PARAMS
    if names_file.exists():
        names = [n for g in json.loads(names_file.read_text(encoding="utf-8"))["param_groups"] for n in g]
        return names, f"{OPTIMIZER_PARAMS} names {len(names)}; the two files come from different runs."
    if model is None:
        raise ConfigError(f"{ck}: no {OPTIMIZER_PARAMS}; this checkpoint was not written by thresher's trainer, "
                          "so its optimizer state cannot be matched to parameter names without the model.")
    names = trainer_param_order(model)
    return names, f"the model has {len(names)} trainable ones. Load the adapter of the same training run first."


def trainer_param_order(model) -> list[str]:
    """Trainable parameter names of a torch module in the order HF Trainer numbers them in its optimizer."""
    import torch

    no_decay = [re.compile(p) for p in _NO_DECAY]
    norm_mods = {n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]

    def decays(n):
        return not any(p.search(n.lower()) for p in no_decay) and n.rsplit(".", 1)[0] not in norm_mods
    return [n for n in trainable if decays(n)] + [n for n in trainable if not decays(n)]


def load_adapter(checkpoint, model) -> None:
    """Load the PEFT adapter weights of a checkpoint into ``model`` (a PeftModel) in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    require_complete(checkpoint)
    path = Path(checkpoint) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; the checkpoint has no PEFT adapter.")
    res = set_peft_model_state_dict(model, load_file(str(path)))
    if getattr(res, "unexpected_keys", None):
        raise ConfigError(f"{path} has weights the model does not: {res.unexpected_keys[:3]}.")
