"""One registry mechanism for every pluggable component: scorers, selectors, judge backends, merge methods.

A registry maps a name to a ``"module:attribute"`` string; the module is imported only when the name is
looked up, so heavy optional dependencies (torch, vLLM, an API client) load only for the components a
run uses. Registering a name twice is an error; an unknown name gets "Did you mean ...?" and the list
of known names (lm-evaluation-harness's registry is the model).

    SCORERS = Registry("scorer")
    SCORERS.register("ifd", "thresher.scoring.ifd:IFDScorer")
    SCORERS.get("ifd")          # -> the class, imported now

Scorers and selectors are found, not listed: ``discover(package)`` reads the source of the package's modules
(``ast``, on the first lookup; nothing is imported) and registers every top-level class whose body sets ``name``
to a non-empty string literal (a base class leaves it empty). Adding a scorer or a selector is therefore one file;
code outside thresher registers its own components with ``register``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

from thresher.config import did_you_mean
from thresher.errors import RegistryError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind                      # "scorer", "selector", ...: used in error messages
        self._targets: dict[str, str] = {}
        self._packages: list[str] = []        # discovered on first use (``_all``), not at import

    def register(self, name: str, target: str) -> None:
        targets = self._all()
        if name in targets:
            raise RegistryError(f"{self.kind.capitalize()} {name!r} is already registered (as {targets[name]}).")
        if target.count(":") != 1:
            raise RegistryError(f"{self.kind.capitalize()} {name!r}: the target must read 'module:attribute'. "
                                f"Got {target!r}.")
        targets[name] = target

    def discover(self, package: str) -> None:
        """Register the components defined in the modules of ``package`` (an importable package name): each
        top-level class whose body sets ``name`` to a non-empty string literal. Modules are read, not imported,
        when a name is first looked up (a command that never looks one up pays nothing); their order (file name,
        then position) is the registration order. Two classes of one name: RegistryError."""
        self._packages.append(package)

    def _all(self) -> dict[str, str]:
        """Name -> target, after reading the packages given to ``discover`` (once)."""
        while self._packages:
            package = self._packages.pop(0)
            spec = importlib.util.find_spec(package)
            for path in sorted(Path(p) for loc in spec.submodule_search_locations for p in Path(loc).glob("*.py")):
                for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
                    name = _component_name(node)
                    if name:
                        self.register(name, f"{package}.{path.stem}:{node.name}")
        return self._targets

    def get(self, name: str):
        """The registered object (class or function) of ``name``; its module is imported now."""
        targets = self._all()
        if name not in targets:
            raise RegistryError(f"Unknown {self.kind} {name!r}.{did_you_mean(name, targets)} "
                                f"Known {self.kind}s: {', '.join(sorted(targets))}.")
        module, attr = targets[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def target(self, name: str) -> str:
        return self._all()[name]

    def names(self) -> list[str]:
        """The registered names in registration order (the order choices and help list them in)."""
        return list(self._all())

    def __contains__(self, name) -> bool:
        return name in self._all()

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._all())


def _component_name(node) -> str | None:
    """The non-empty string literal a top-level class sets ``name`` to (None for anything else)."""
    if not isinstance(node, ast.ClassDef):
        return None
    for stmt in node.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        value = getattr(stmt, "value", None)
        if (any(isinstance(t, ast.Name) and t.id == "name" for t in targets) and isinstance(value, ast.Constant)
                and isinstance(value.value, str) and value.value):
            return value.value
    return None
