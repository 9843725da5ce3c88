"""A trained run as a plain model folder that every scorer and `thresher eval` can load by path.

LoRA runs keep only the adapter in ``final/``; ``export_merged`` folds it into the base weights
(PEFT ``merge_and_unload``) and saves the merged model with its tokenizer, atomically. Cherry's
pre-experienced model and IterIT's trained model are scored this way (``--model RUN/merged``).
"""

from __future__ import annotations

from pathlib import Path

from thresher.errors import ConfigError
from thresher.models.hf import HFCausalLM
from thresher.models.runs import TrainingRunFolder
from thresher.outputs import atomic_dir


def export_merged(run_dir, out=None) -> Path:
    """Write ``out`` (default RUN/merged): base model + the run's final adapter merged, float32 safetensors."""
    run = TrainingRunFolder(run_dir)
    if not run.is_lora:
        if run.is_full:
            return run.final_dir              # a full fine-tune: final/ already is a plain model folder
        raise ConfigError(f"{run.path} has no finished model in final/: the run stopped before its last step "
                          "(rerun `thresher train` with the same arguments to resume it).")
    out = Path(out) if out else run.merged_dir
    # The run's own model spec (the adapter's recorded base path may be a cache folder long gone), and for
    # a hub model the commit it trained on (its identity "hub:<id>@<commit>").
    ident = run.model_identity
    revision = ident.rsplit("@", 1)[1] if ident.startswith("hub:") and "@" in ident else None
    return fold_adapter(run.base_model, run.final_dir, out, revision=revision)


def fold_adapter(base: str, adapter_dir, out, *, revision: str | None = None) -> Path:
    """Base model ``base`` (a model spec: "bundled", a path or a hub id; ``revision``: the hub commit,
    default the one it resolves to now) with the LoRA adapter in ``adapter_dir`` folded in (PEFT
    merge_and_unload), saved as float32 with the adapter folder's tokenizer to ``out``, atomically."""
    import warnings

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, kw = HFCausalLM(base).source() if revision is None else (base, {"revision": revision})
    model = AutoModelForCausalLM.from_pretrained(src, dtype="float32", **kw)
    with warnings.catch_warnings():
        # transformers 5.x deprecation notice raised from inside PEFT, not actionable by the user
        warnings.filterwarnings("ignore", message=".*deprecated and will be removed in v6.*", category=FutureWarning)
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    with atomic_dir(out, "export") as tmp:    # a half-written export is never left in place
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(tmp)
    return Path(out)
