"""The package's import graph: no cycles, and no module reaches into another module's private names.

Both are read from the source with ``ast`` (nothing is imported), counting imports inside functions
too: a lazy import still ties the two modules together.
"""
from __future__ import annotations

import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parent.parent / "onnxviz"



def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names."""
    if not node.level:
        return node.module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mods: dict) -> tuple:
    """(edges: module -> set of package modules it imports, private: (importer, module, name) triples)."""
    edges, private = {}, set()
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        out = edges.setdefault(name, set())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name in mods)
            elif isinstance(node, ast.ImportFrom):
                target = resolve(name, path.name == "__init__.py", node)
                if not target.startswith("onnxviz"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in mods:  # `from . import rules`: the submodule itself
                        out.add(sub)
                        continue
                    if target in mods:
                        out.add(target)
                    if alias.name.startswith("_") and not alias.name.startswith("__") and target != name:
                        private.add((name, target, alias.name))
    return edges, private


def cycles(edges: dict) -> set:
    """Each strongly connected component of more than one module, as a sorted tuple (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), set()

    def visit(v):
        index[v] = low[v] = len(index)
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
                found.add(tuple(sorted(comp)))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _package_parents(edges: dict) -> dict:
    """Drop the edge from a package's modules up to its own __init__ (Python runs it first anyway)."""
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}


EDGES, PRIVATE = imports(modules())


def test_walker_sees_the_package():
    assert "onnxviz.model" in EDGES and "onnxviz.runtime" in EDGES["onnxviz.model"]


def test_no_import_cycle():
    found = cycles(_package_parents(EDGES))
    assert not found, f"import cycles: {sorted(found)}"


def test_no_private_names_across_modules():
    found = PRIVATE
    assert not found, "private names imported from another module: " + ", ".join(
        f"{a} imports {c} from {b}" for a, b, c in sorted(found))


def cli_imports(edges: dict) -> set:
    """(library module, CLI module) for each import of onnxviz.cli from outside it (bar ``__main__``)."""
    def cli(m):
        return m == "onnxviz.cli" or m.startswith("onnxviz.cli.")

    return {(m, t) for m, ts in edges.items() if not cli(m) and m != "onnxviz.__main__" for t in ts if cli(t)}


def test_library_never_imports_the_cli():
    """The CLI sits on top: a library module that needs something from it wants that piece moved down
    (as onnxviz.session and onnxviz.outputs were), even when no cycle results yet."""
    found = cli_imports(EDGES)
    assert not found, "library modules importing the CLI: " + ", ".join(f"{a} -> {b}" for a, b in sorted(found))


def test_checks_can_fail():
    """The two checks catch what they look for."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {("a", "b", "c")}
    tree = ast.parse("from .tracking import _Graph")
    node = tree.body[0]
    assert resolve("onnxviz.graph.heads", False, node) == "onnxviz.graph.tracking"
    assert cli_imports({"onnxviz.distributed.jobs": {"onnxviz.cli.common", "onnxviz.io"},
                        "onnxviz.cli.grad": {"onnxviz.cli.common"}, "onnxviz.__main__": {"onnxviz.cli"}}) == {
        ("onnxviz.distributed.jobs", "onnxviz.cli.common")}
