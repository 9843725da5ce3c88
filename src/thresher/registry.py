"""One registry mechanism for every pluggable component: scorers, selectors, judge backends, merge methods.

A registry maps a name to a ``"module:attribute"`` string; the module is imported only when the name is
looked up, so heavy optional dependencies (torch, vLLM, an API client) load only for the components a
run uses. Registering a name twice is an error; an unknown name gets "Did you mean ...?" and the list
of known names (lm-evaluation-harness's registry is the model).

    SCORERS = Registry("scorer")
    SCORERS.register("ifd", "thresher.scoring.ifd:IFDScorer")
    SCORERS.get("ifd")          # -> the class, imported now
"""

from __future__ import annotations

import importlib

from thresher.config import did_you_mean
from thresher.errors import RegistryError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind                      # "scorer", "selector", ...: used in error messages
        self._targets: dict[str, str] = {}

    def register(self, name: str, target: str) -> None:
        if name in self._targets:
            raise RegistryError(f"{self.kind.capitalize()} {name!r} is already registered (as {self._targets[name]}).")
        if target.count(":") != 1:
            raise RegistryError(f"{self.kind.capitalize()} {name!r}: the target must read 'module:attribute'. "
                                f"Got {target!r}.")
        self._targets[name] = target

    def get(self, name: str):
        """The registered object (class or function) of ``name``; its module is imported now."""
        if name not in self._targets:
            raise RegistryError(f"Unknown {self.kind} {name!r}.{did_you_mean(name, self._targets)} "
                                f"Known {self.kind}s: {', '.join(sorted(self._targets))}.")
        module, attr = self._targets[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def target(self, name: str) -> str:
        return self._targets[name]

    def names(self) -> list[str]:
        """The registered names in registration order (the order choices and help list them in)."""
        return list(self._targets)

    def __contains__(self, name) -> bool:
        return name in self._targets

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._targets)
