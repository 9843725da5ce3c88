"""The run's checkpoints: when one is complete, which one to resume from, rotation, Adam's moments by name.

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
optimizer state and weights are there (the Trainer writes ``trainer_state.json`` after them).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from thresher.io import write_json
from thresher.errors import ConfigError

log = logging.getLogger(__name__)

MARKER = "thresher_complete.json"
SAMPLER_STATE = "sampler_state.json"
OPTIMIZER_PARAMS = "optimizer_params.json"
MARKER_VERSION = 1
_CKPT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
_NEEDED = ("trainer_state.json", "optimizer.pt", OPTIMIZER_PARAMS)


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
    return (out / "train_ids.json").is_file() or any((d / MARKER).is_file() for _, d in _checkpoint_dirs(out))


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
        json.loads((d / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (d / "optimizer.pt").is_file() and any((d / w).is_file() for w in _WEIGHTS)


# ----------------------------------------------------------------------------------- contents
def learning_rates(checkpoint) -> dict[int, float]:
    """step -> learning rate, from the checkpoint's trainer_state.json (entries without one skipped)."""
    require_complete(checkpoint)
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return {int(e["step"]): float(e["learning_rate"]) for e in state.get("log_history", [])
            if "learning_rate" in e and "step" in e}


def load_adam_moments(checkpoint) -> dict[str, dict]:
    """{parameter name: {"exp_avg", "exp_avg_sq", "step"}} from a checkpoint's optimizer.pt.

    Names are the model's ``named_parameters()`` names at training time (for LoRA, e.g.
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight``). Only trainable
    parameters are in the optimizer, so these are exactly the LoRA matrices under LoRA.
    """
    import torch

    ck = Path(checkpoint)
    require_complete(ck)
    names_file = ck / OPTIMIZER_PARAMS
    if not names_file.exists():
        raise ConfigError(f"{ck}: no {OPTIMIZER_PARAMS}; this checkpoint was not written by thresher's trainer, "
                          "so its optimizer state cannot be matched to parameter names.")
    groups = json.loads(names_file.read_text(encoding="utf-8"))["param_groups"]
    opt = torch.load(ck / "optimizer.pt", map_location="cpu", weights_only=True)
    order = [i for g in opt["param_groups"] for i in g["params"]]       # state ids, group by group
    names = [n for g in groups for n in g]
    if len(order) != len(names):
        raise ConfigError(f"{ck}: optimizer.pt has {len(order)} parameters but {OPTIMIZER_PARAMS} names "
                          f"{len(names)}; the two files come from different runs.")
    out = {}
    for sid, name in zip(order, names):
        st = opt["state"].get(sid)
        if st is not None:                                               # no state before a first step
            out[name] = {k: st[k] for k in ("exp_avg", "exp_avg_sq", "step") if k in st}
    return out
