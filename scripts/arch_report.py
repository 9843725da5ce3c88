"""The import graph of a thresher source tree, read with ``ast`` (nothing is imported), and a report of its shape:
modules, import cycles, imports from a higher layer, function-local imports of thresher modules, the largest files
and functions. tests/test_architecture.py checks the same graph against its layer list.

    python scripts/arch_report.py                          # this checkout's src/thresher
    python scripts/arch_report.py /tmp/old/src/thresher    # another tree: git archive REV src | tar -x -C /tmp/old

Older trees' names are mapped onto the test's layers: methods/ (now pipeline/) and knn.py (now algorithms/).
"""

from __future__ import annotations

import ast
import importlib.util
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OLD_NAMES = {"thresher.methods": "thresher.pipeline", "thresher.knn": "thresher.algorithms.knn"}


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``root`` (a package folder such as src/thresher)."""
    out = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def resolve(mods: dict[str, Path], name: str) -> str | None:
    """The module of ``mods`` that ``name`` (a module, or an attribute of one) belongs to."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def parse_imports(mods: dict[str, Path]) -> dict[str, list[tuple[str, bool, int]]]:
    """Module -> [(target, inside a function, line)] for every import statement; a target is a module of ``mods``
    (or an attribute of one) or a third-party dotted name."""
    out = {}
    for module, path in mods.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found = []

        def targets(node):
            if isinstance(node, ast.Import):
                return [a.name for a in node.names]
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            return [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]

        def walk(node, local: bool):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    found.extend((t, local, child.lineno) for t in targets(child))
                walk(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        walk(ast.parse(path.read_text(encoding="utf-8")), False)
        out[module] = found
    return out


def graph(mods, imports) -> dict[str, set[str]]:
    """Module -> the thresher modules it imports (top level and inside functions; not its own package)."""
    edges = defaultdict(set)
    for m, imps in imports.items():
        for target, _, _ in imps:
            t = resolve(mods, target) if target.startswith("thresher") else None
            if t and t != m and not m.startswith(t + "."):
                edges[m].add(t)
    return edges


def cycles(mods, edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
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
            comp = [stack.pop()]
            while comp[-1] != v:
                comp.append(stack.pop())
            on.difference_update(comp)
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(mods):
        if v not in index:
            visit(v)
    return comps


def report(root: Path) -> None:
    spec = importlib.util.spec_from_file_location("_arch_test", REPO / "tests" / "test_architecture.py")
    test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test)

    def layer(module: str) -> int:
        for old, new in OLD_NAMES.items():
            if module == old or module.startswith(old + "."):
                module = new + module[len(old):]
        return test.layer_of(module)

    mods = modules(root)
    imports = parse_imports(mods)
    edges = graph(mods, imports)
    found = cycles(mods, edges)
    upward = sorted(f"{a} -> {b}" for a, bs in edges.items() for b in bs if layer(b) > layer(a))
    local = {(m, line) for m, imps in imports.items() for t, inside, line in imps if inside and t.startswith("thresher")}
    funcs = sorted(((n.end_lineno - n.lineno + 1, f"{m}.{n.name}") for m, p in mods.items()
                    for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), reverse=True)
    files = sorted(((len(p.read_text(encoding="utf-8").splitlines()), m) for m, p in mods.items()), reverse=True)
    print(f"modules: {len(mods)}")
    print(f"import cycles: {len(found)}" + "".join(f"\n    {' <-> '.join(c)}" for c in found))
    print(f"imports from a higher layer: {len(upward)}" + "".join(f"\n    {u}" for u in upward))
    print(f"function-local import statements of thresher modules: {len(local)}")
    print("largest files: " + ", ".join(f"{m} {n}" for n, m in files[:6]))
    print("largest functions: " + ", ".join(f"{m} {n}" for n, m in funcs[:6]))


if __name__ == "__main__":
    import sys

    report(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "src" / "thresher")
