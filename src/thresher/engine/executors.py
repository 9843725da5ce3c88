"""Where shards are scored: this process (``local``, the default; ``thresher.engine.base``) or Ray actors
(``ray``: ``thresher.engine.ray_executor``, imported only when that executor is chosen, so Ray is needed
only then)."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

from thresher.config import build
from thresher.engine.base import ExecutorConfig, LocalExecutor
from thresher.errors import ConfigError


def make_executor(cfg: ExecutorConfig | None = None, **options):
    """The executor ``cfg`` (or keyword options of ExecutorConfig) describes."""
    cfg = cfg or build(ExecutorConfig, options, "the executor")
    cfg.check()
    if cfg.executor == "local":
        return LocalExecutor()
    try:
        from thresher.engine.ray_executor import RayExecutor   # imports ray: only when it is chosen
    except ImportError as err:
        if "ray" not in str(err):
            raise
        raise ConfigError("The ray executor needs Ray, which is not installed. Install it with: "
                          "pip install 'thresher[ray]'") from None
    return RayExecutor(cfg)


@contextmanager
def open_executor(spec=None):
    """An executor for ``spec``: None (local), an ExecutorConfig, its fields as a dict, or an executor (used
    as it is and left open); one this function made is closed (Ray actors stopped) on exit."""
    if spec is not None and hasattr(spec, "run") and hasattr(spec, "runner"):
        yield spec
        return
    cfg = spec if isinstance(spec, ExecutorConfig) else build(ExecutorConfig, dict(spec or {}), "the executor")
    ex = make_executor(cfg)
    try:
        yield ex
    finally:
        ex.close()


def executor_record(ex) -> dict:
    """What a manifest records of the executor (the scores do not depend on it)."""
    cfg = getattr(ex, "cfg", None)
    return dataclasses.asdict(cfg) if cfg is not None else {"executor": ex.name}
