"""No import cycles among advlab's modules: every `import` / `from ... import` of every module under
src/advlab (also those inside functions: a lazy import closes a cycle too, only later), read with
`ast`, and a depth-first search over that graph. Standard library only, nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO


def module_names(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} of every module of `package` under `root` (a package: its __init__)."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _known(name: str, modules) -> str:
    """The longest of a.b.c, a.b, a that is one of `modules` ("" if none)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules) -> set[str]:
    """The package's modules an import statement loads. `from a import b`: a.b where that is a
    module, else a; `import a.b.c`: the longest of a.b.c, a.b, a that is a module."""
    if isinstance(node, ast.Import):
        return {_known(alias.name, modules) for alias in node.names} - {""}
    base = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):  # relative: one package up per extra dot
        base = base.rpartition(".")[0]
    target = ".".join(p for p in ((base if node.level else ""), node.module or "") if p)
    return {_known(f"{target}.{alias.name}", modules) if f"{target}.{alias.name}" in modules else _known(target, modules)
            for alias in node.names} - {""}


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, from every import statement of its file."""
    modules = module_names(root, package)
    graph = {}
    for module, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _imported(node, module, path.name == "__init__.py", modules)
        graph[module] = edges - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [m0, m1, ..., m0], or None (depth-first search, grey / black marks)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "grey"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "grey":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "black"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_advlab_has_no_import_cycle():
    graph = import_graph(REPO / "src", "advlab")
    assert len(graph) > 50 and "advlab.derived.perturbation" in graph["advlab.derived"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_finds_a_cycle_through_a_lazy_import(tmp_path):
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .c import C\n")
    (pkg / "a.py").write_text("import os\nfrom toy import sub, b\n")
    (pkg / "b.py").write_text("def f():\n    from toy.sub import C  # lazy\n    return C\n")
    (pkg / "sub" / "c.py").write_text("C = 1\n")
    (pkg / "d.py").write_text("import toy.a\n")
    graph = import_graph(tmp_path, "toy")
    assert graph == {"toy": set(), "toy.a": {"toy.b", "toy.sub"}, "toy.b": {"toy.sub"}, "toy.d": {"toy.a"},
                     "toy.sub": {"toy.sub.c"}, "toy.sub.c": set()}
    assert find_cycle(graph) is None
    (pkg / "sub" / "c.py").write_text("def g():\n    from ..d import x\n\nC = 1\n")  # relative, two levels up
    cycle = find_cycle(import_graph(tmp_path, "toy"))
    assert cycle == ["toy.a", "toy.b", "toy.sub", "toy.sub.c", "toy.d", "toy.a"]
