"""A trained run as a plain model folder that every scorer and `thresher eval` can load by path.

LoRA runs keep only the adapter in ``final/``; ``export_merged`` folds it into the base weights
(PEFT ``merge_and_unload``) and saves the merged model with its tokenizer, atomically. Cherry's
pre-experienced model and IterIT's trained model are scored this way (``--model RUN/merged``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from thresher.errors import ConfigError


def export_merged(run_dir, out=None) -> Path:
    """Write ``out`` (default RUN/merged): base model + the run's final adapter merged, float32 safetensors."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thresher.models import bundled

    run_dir = Path(run_dir)
    final = run_dir / "final"
    if not (final / "adapter_config.json").exists():
        if (final / "config.json").exists():
            return final                      # a full fine-tune: final/ already is a plain model folder
        raise ConfigError(f"{run_dir} has no finished model in final/: the run stopped before its last step "
                          "(rerun `thresher train` with the same arguments to resume it).")
    out = Path(out) if out else run_dir / "merged"
    # The run's own model spec (the adapter's recorded base path may be a cache folder long gone).
    base = json.loads((run_dir / "config.json").read_text())["config"]["model"]
    src = str(bundled.converted_model_dir()) if base in bundled.BUNDLED_ALIASES else base
    model = AutoModelForCausalLM.from_pretrained(src, dtype="float32")
    merged = PeftModel.from_pretrained(model, str(final)).merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".merged-", dir=out.parent))
    try:
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(str(final)).save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)                  # a half-written export is never left in place
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
