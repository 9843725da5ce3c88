"""thresher: find the high-quality part of an instruction-tuning dataset.

Data flow (arrows point one way):  data -> scoring -> selection -> (training) -> evaluation,
with all model access through ``thresher.models``.

``thresher.load``, ``score``, ``select``, ``run``, ``report`` and ``Run`` are the Python API
(``thresher.api``), imported on first use so that ``import thresher`` stays light.
"""

import importlib

__version__ = "0.1.0"

__all__ = ["Run", "__version__", "load", "report", "run", "score", "select"]
_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str):
    """The API's names, from ``thresher.api`` on first use (PEP 562)."""
    if name in _API:
        return getattr(importlib.import_module("thresher.api"), name)
    raise AttributeError(f"module 'thresher' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
