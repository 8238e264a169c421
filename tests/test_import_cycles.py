"""No import cycles between echo_os packages (engines, models, requests, artifacts, ...), nor between
modules: every `import` / `from ... import` is counted, including those inside functions, except the
ones under `if TYPE_CHECKING:` (never run)."""

from __future__ import annotations

import ast
from pathlib import Path

import echo_os

ROOT = Path(echo_os.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = ("echo_os", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, module: str, modules: set[str], type_checking: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node) and not type_checking:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in modules and name != module}


def import_graph(type_checking: bool = False) -> dict[str, set[str]]:
    """module -> the echo_os modules it imports; type_checking=True counts the TYPE_CHECKING ones too."""
    paths = {(_module_name(path)): path for path in ROOT.rglob("*.py")}
    modules = set(paths)
    return {module: _imports(path, module, modules, type_checking) for module, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = dfs(node)
            if cycle:
                return cycle
    return None


# Packages whose modules are layered across other packages: echo_os.render holds the request/result types
# (below the engines) and the scheduler and Ray (above them), so each of its modules is its own unit.
LAYERED_PACKAGES = {"echo_os.render"}


def package_of(module: str) -> str:
    """echo_os.engines.sdxl -> echo_os.engines; top-level modules (echo_os.settings) are their own unit, and
    so is each module of a layered package (echo_os.render.requests)."""
    parts = module.split(".")
    if ".".join(parts[:2]) in LAYERED_PACKAGES:
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = package_of(module)
        out.setdefault(source, set()).update(package_of(t) for t in targets if package_of(t) != source)
    out.pop("echo_os", None)  # the root package's __init__ (version) imports nothing of ours
    return {k: {t for t in v if t != "echo_os"} for k, v in out.items()}


def module_graph_without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Modules only: a package __init__ re-exporting its submodules is not a dependency of theirs."""
    inits = {m for m in graph if (ROOT / Path(*m.split(".")[1:]) / "__init__.py").is_file()}
    return {m: {t for t in targets if t not in inits} for m, targets in graph.items() if m not in inits}


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    # echo_os.engines imports echo_os.models only inside _lacks(): still an edge.
    assert "echo_os.models" in graph["echo_os.engines"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_cycle_between_packages():
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


def test_no_cycle_between_modules():
    cycle = find_cycle(module_graph_without_package_inits(import_graph()))
    assert cycle is None, "import cycle between modules: " + " -> ".join(cycle)


# Circles that only `if TYPE_CHECKING:` used to hide, broken for real by moving the shared piece down a layer
# (issue 23): models/entry.py (ModelEntry, EntryLookup), api/options.py (ApiOptions), story/results.py
# (SceneResult).
ONCE_HIDDEN = [("echo_os.models.registry", "echo_os.models.resolve"), ("echo_os.api.deps", "echo_os.api.processes"),
               ("echo_os.story.render", "echo_os.resonance.story")]


def test_the_circles_type_checking_hid_are_gone():
    graph = import_graph(type_checking=True)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    for a, b in ONCE_HIDDEN:
        assert not (reaches(a, b) and reaches(b, a)), f"{a} and {b} import each other (TYPE_CHECKING counted)"
