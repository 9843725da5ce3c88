"""The package's import graph, read from the source with ``ast`` (scripts/arch_report.py builds it): no import
cycles, no import from a higher layer into a lower one, and function-local imports of thresher modules only where
the imported module pulls in an optional heavy dependency (torch and friends, ray, flwr, vllm, ...), i.e. never
just to dodge a cycle.

Layers, bottom to top (DESIGN.md): a module may import from its own layer or a lower one.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / "src" / "thresher"

LAYERS = [
    {"thresher", "thresher.errors", "thresher.config", "thresher.io", "thresher.registry", "thresher.outputs",
     "thresher.manifest", "thresher.checks", "thresher.keys", "thresher.progress"},
    {"thresher.data", "thresher.selection", "thresher.algorithms"},
    {"thresher.models"},
    {"thresher.gradients"},
    {"thresher.scoring"},
    {"thresher.training", "thresher.evaluation", "thresher.engine"},
    {"thresher.pipeline"},
    {"thresher.reporting"},
    {"thresher.api"},
    {"thresher.cli", "thresher.__main__"},
]

# Third-party packages that are optional or slow to import: a function-local import of them (or of a thresher
# module whose top-level imports reach them) keeps torch-free paths, `thresher --help` and `validate` light.
HEAVY = {"torch", "transformers", "peft", "trl", "accelerate", "sentence_transformers", "safetensors", "gguf",
         "vllm", "ray", "flwr", "datasets", "sklearn", "scipy", "lm_eval", "nltk", "openai", "httpx", "tqdm"}


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix naming ``module``'s package."""
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
                best = (i, prefix)
    assert best is not None, f"{module} is in no layer: add its package to LAYERS in {__file__}"
    return best[0]


def _arch():
    spec = importlib.util.spec_from_file_location("arch_report", REPO / "scripts" / "arch_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ARCH = _arch()
MODULES = ARCH.modules(ROOT)
IMPORTS = ARCH.parse_imports(MODULES)
EDGES = ARCH.graph(MODULES, IMPORTS)


def _heavy_at_import(module: str, seen=None) -> bool:
    """True when importing ``module`` imports a HEAVY package (through its top-level imports, transitively)."""
    seen = set() if seen is None else seen
    if module in seen:
        return False
    seen.add(module)
    for target, local, _ in IMPORTS.get(module, ()):
        if local:
            continue
        if target.split(".")[0] in HEAVY:
            return True
        t = ARCH.resolve(MODULES, target) if target.startswith("thresher") else None
        if t and _heavy_at_import(t, seen):
            return True
    return False


def test_every_module_is_in_a_layer_and_imports():
    for m in sorted(MODULES):
        layer_of(m)
        if m != "thresher.__main__":
            importlib.import_module(m)


def test_no_import_cycles():
    cycles = ARCH.cycles(MODULES, EDGES)
    assert not cycles, "import cycles (top-level and function-local imports): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_no_import_from_a_higher_layer():
    upward = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
              for m, targets in EDGES.items() for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert not upward, "imports from a higher layer:\n  " + "\n  ".join(upward)


def test_function_local_imports_only_for_heavy_dependencies():
    """A function-local import of a thresher module is allowed only when that module pulls in a heavy optional
    dependency at import time (so the function keeps torch-free paths light); anything else dodges a cycle."""
    bad = []
    for m, imps in IMPORTS.items():
        for target, local, line in imps:
            if local and target.startswith("thresher"):
                t = ARCH.resolve(MODULES, target)
                if t and not _heavy_at_import(t):
                    bad.append(f"{MODULES[m].relative_to(ROOT.parent)}:{line} imports {target} inside a function")
    assert not bad, ("function-local imports of light thresher modules (import them at the top; if that makes a "
                     "cycle, move the shared code down a layer):\n  " + "\n  ".join(sorted(bad)))


def test_the_checks_catch_a_planted_cycle_and_an_upward_import(tmp_path):
    """The graph code itself, on a planted package: a cycle through a function-local import, an upward import,
    and a heavy module told apart from a light one."""
    pkg = tmp_path / "thresher"
    (pkg / "data").mkdir(parents=True)
    (pkg / "scoring").mkdir()
    for f, text in {"__init__.py": "", "data/__init__.py": "", "scoring/__init__.py": "",
                    "data/a.py": "from thresher.data.b import x\n",
                    "data/b.py": "def x():\n    from thresher.data import a\n",
                    "data/c.py": "from thresher.scoring.s import y\n",
                    "scoring/s.py": "import torch\ny = 1\n"}.items():
        (pkg / f).write_text(text)
    mods = ARCH.modules(pkg)
    imports = ARCH.parse_imports(mods)
    edges = ARCH.graph(mods, imports)
    assert ARCH.cycles(mods, edges) == [["thresher.data.a", "thresher.data.b"]]
    assert [(m, t) for m, ts in edges.items() for t in ts if layer_of(t) > layer_of(m)] == \
        [("thresher.data.c", "thresher.scoring.s")]
    assert imports["thresher.data.b"] == [("thresher.data.a", True, 2)]        # the function-local import
    assert _heavy_at_import("thresher.gradients.persample") and not _heavy_at_import("thresher.errors")
