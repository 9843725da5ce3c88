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

Components outside thresher, without registering anything:
  - a name holding ":" is imported as it stands (``"mypkg.scorers:MyScorer"``, in a recipe or ``--scorer``);
  - an installed package declares entry points in the registry's ``group`` (``thresher.scorers``,
    ``thresher.selectors``): ``my_scorer = "mypkg.scorers:MyScorer"`` under ``[project.entry-points."thresher.scorers"]``
    in its pyproject.toml. They are read on the first lookup (nothing is imported until a name is used); a plugin
    name that is already taken is a RegistryError naming both.
Either way the object must be a subclass of the registry's ``base`` with a non-empty ``name``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
from pathlib import Path

from thresher.config import did_you_mean
from thresher.errors import RegistryError


class Registry:
    def __init__(self, kind: str, *, base: type | None = None, group: str | None = None):
        self.kind = kind                      # "scorer", "selector", ...: used in error messages
        self.base = base                      # entries must subclass it and set a non-empty ``name`` (None: any)
        self.group = group                    # entry-point group of installed plugins, read on first use
        self._targets: dict[str, str] = {}
        self._packages: list[str] = []        # discovered on first use (``_all``), not at import
        self._plugins_read = group is None

    def register(self, name: str, target: str) -> None:
        self._add(self._all(), name, target)

    def _add(self, targets: dict[str, str], name: str, target: str, origin: str = "") -> None:
        if name in targets:
            raise RegistryError(f"{self.kind.capitalize()} {name!r}{origin} is already registered (as "
                                f"{targets[name]}).")
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
        """Name -> target, after reading the packages given to ``discover`` and the plugins (once)."""
        while self._packages:
            package = self._packages.pop(0)
            spec = importlib.util.find_spec(package)
            for path in sorted(Path(p) for loc in spec.submodule_search_locations for p in Path(loc).glob("*.py")):
                for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
                    name = _component_name(node)
                    if name:
                        self._add(self._targets, name, f"{package}.{path.stem}:{node.name}")
        if not self._plugins_read:
            self._plugins_read = True
            for ep in sorted(importlib.metadata.entry_points(group=self.group), key=lambda e: e.name):
                dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed package"
                self._add(self._targets, ep.name, ep.value,
                          f" (entry point {ep.name} = {ep.value} in group {self.group!r} of {dist})")
        return self._targets

    def get(self, name: str):
        """The registered object (class or function) of ``name``, or the ``module:attribute`` ``name`` names;
        its module is imported now."""
        if ":" in name:
            return self._load(name, name)
        targets = self._all()
        if name not in targets:
            raise RegistryError(f"Unknown {self.kind} {name!r}.{did_you_mean(name, targets)} "
                                f"Known {self.kind}s: {', '.join(sorted(targets))}; or give a class of your own "
                                "as 'module:Class'.")
        return self._load(name, targets[name])

    def _load(self, name: str, target: str):
        """Import ``target`` ("module:attribute", the attribute may be dotted) and check it (``base``, ``name``)."""
        module_name, _, attr = target.partition(":")
        what = f"{self.kind.capitalize()} {name!r}"
        if not module_name or not attr or ":" in attr:
            raise RegistryError(f"{what}: expected 'module:Class' (e.g. 'mypkg.scorers:MyScorer'). Got {target!r}.")
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is None or not module_name.startswith(e.name):
                raise RegistryError(f"{what}: importing module {module_name!r} failed: {e}. Install what it "
                                    "needs.") from None
            raise RegistryError(f"{what}: no module named {e.name!r} (of {module_name!r}). Check the spelling, and "
                                "that the module is installed or on PYTHONPATH.") from None
        except Exception as e:        # the user's module itself fails to import: name it, with its error
            raise RegistryError(f"{what}: importing module {module_name!r} failed: {type(e).__name__}: {e}") from None
        owner = f"module {module_name!r}"
        for part in attr.split("."):
            if not hasattr(obj, part):
                known = [n for n in dir(obj) if not n.startswith("_")]
                raise RegistryError(f"{what}: {owner} has no attribute {part!r}.{did_you_mean(part, known)}")
            obj, owner = getattr(obj, part), f"{owner}.{part}"
        self._check(obj, what, target)
        return obj

    def _check(self, obj, what: str, target: str) -> None:
        if self.base is None:
            return
        base = f"{self.base.__module__}.{self.base.__qualname__}"
        if not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise RegistryError(f"{what}: {target} is {_shown(obj)}, not a {self.kind} (a subclass of {base}).")
        if not (isinstance(getattr(obj, "name", None), str) and obj.name):
            raise RegistryError(f"{what}: {target} sets no name: give the class a non-empty 'name' attribute "
                                f"(it names the {self.kind}'s outputs and cache).")

    def target(self, name: str) -> str:
        return name if ":" in name else self._all()[name]

    def names(self) -> list[str]:
        """The registered names in registration order (the order choices and help list them in)."""
        return list(self._all())

    def __contains__(self, name) -> bool:
        return name in self._all()

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._all())


def _shown(obj) -> str:
    return f"the class {obj.__qualname__}" if isinstance(obj, type) else f"a {type(obj).__name__}"


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
