"""The package's import graph, read from the source with ``ast``: no import cycles, no import from a higher
layer into a lower one, and function-local imports of thresher modules only where the imported module pulls in an
optional heavy dependency (torch and friends, ray, flwr, vllm, ...), i.e. never just to dodge a cycle.

Layers, bottom to top (DESIGN.md): a module may import from its own layer or a lower one.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1] / "src" / "thresher"

LAYERS = [
    {"thresher", "thresher.errors", "thresher.config", "thresher.io", "thresher.registry", "thresher.outputs",
     "thresher.manifest", "thresher.checks", "thresher.keys"},
    {"thresher.data", "thresher.selection", "thresher.algorithms"},
    {"thresher.models"},
    {"thresher.gradients"},
    {"thresher.scoring"},
    {"thresher.training", "thresher.evaluation", "thresher.engine"},
    {"thresher.pipeline"},
    {"thresher.cli", "thresher.__main__"},
]

# Third-party packages that are optional or slow to import: a function-local import of them (or of a thresher
# module whose top-level imports reach them) keeps torch-free paths, `thresher --help` and `validate` light.
HEAVY = {"torch", "transformers", "peft", "trl", "accelerate", "sentence_transformers", "safetensors", "gguf",
         "vllm", "ray", "flwr", "datasets", "sklearn", "scipy", "lm_eval", "nltk", "openai", "httpx"}


def _modules() -> dict[str, Path]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The thresher module ``name`` (a module, or an attribute of one) belongs to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path):
    """(target, is_function_local, lineno) for every import statement of ``module``; target is a dotted name
    (a thresher module or a third-party top-level package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []

    def targets(node):
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        if node.level:
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]

    def walk(node, local: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.extend((t, local, child.lineno) for t in targets(child))
            walk(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    return out


IMPORTS = {m: _imports(m, p) for m, p in MODULES.items()}


def _graph() -> dict[str, set[str]]:
    edges = defaultdict(set)
    for m, imps in IMPORTS.items():
        for target, _, _ in imps:
            t = _resolve(target) if target.startswith("thresher") else None
            if t and t != m and not m.startswith(t + "."):     # a module importing its own package's __init__
                edges[m].add(t)
    return edges


def _layer(module: str) -> int:
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (i, prefix)
    assert best is not None, f"{module} is in no layer: add its package to LAYERS in {__file__}"
    return best[0]


def _cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    return comps


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
        t = _resolve(target) if target.startswith("thresher") else None
        if t and _heavy_at_import(t, seen):
            return True
    return False


def test_every_module_is_in_a_layer_and_imports():
    import importlib

    for m in sorted(MODULES):
        _layer(m)
        if m != "thresher.__main__":
            importlib.import_module(m)


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (top-level and function-local imports): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_no_import_from_a_higher_layer():
    upward = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
              for m, targets in _graph().items() for t in sorted(targets) if _layer(t) > _layer(m)]
    assert not upward, "imports from a higher layer:\n  " + "\n  ".join(upward)


def test_function_local_imports_only_for_heavy_dependencies():
    """A function-local import of a thresher module is allowed only when that module pulls in a heavy optional
    dependency at import time (so the function keeps torch-free paths light); anything else dodges a cycle."""
    bad = []
    for m, imps in IMPORTS.items():
        for target, local, line in imps:
            if local and target.startswith("thresher"):
                t = _resolve(target)
                if t and not _heavy_at_import(t):
                    bad.append(f"{MODULES[m].relative_to(ROOT.parent)}:{line} imports {target} inside a function")
    assert not bad, ("function-local imports of light thresher modules (import them at the top; if that makes a "
                     "cycle, move the shared code down a layer):\n  " + "\n  ".join(sorted(bad)))


def test_the_checks_catch_a_planted_cycle_and_an_upward_import():
    """The graph code itself: a planted cycle and an upward edge are found."""
    edges = {"thresher.data.a": {"thresher.data.b"}, "thresher.data.b": {"thresher.data.a"}}
    global MODULES
    saved = MODULES
    try:
        MODULES = {**saved, "thresher.data.a": Path("a"), "thresher.data.b": Path("b")}
        assert _cycles(edges) == [["thresher.data.a", "thresher.data.b"]]
    finally:
        MODULES = saved
    assert _layer("thresher.data.readers") < _layer("thresher.engine.scoring")
    assert _layer("thresher.pipeline.run") > _layer("thresher.scoring.ifd")
    assert _heavy_at_import("thresher.gradients.persample") and not _heavy_at_import("thresher.errors")
