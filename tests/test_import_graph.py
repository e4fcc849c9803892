"""Static checks on fastdistill's import graph: no circles, and imports only point down the layers.

Circular imports in this package mostly hide inside functions, where they work until someone
moves one to module level, and a module that reaches "up" (a loss importing the engine, a
method importing the student) drags half the package into every import and makes the next
circle likely. Both are invisible at run time until they break, so this test reads every
module's source with `ast` (module level, functions, `if`/`try` blocks and `if TYPE_CHECKING:`
alike) and fails with the offending file:line. The graph builder is tested on a synthetic
package as well, so a silently broken builder cannot make the real checks pass.
"""
from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "fastdistill"

# Lower = more basic. A module may import its own layer or lower ones; the most specific
# prefix wins. The bare package name covers only the top-level __init__, so a new
# subpackage or module has to be placed here explicitly.
LAYERS = {
    "fastdistill": 0,
    "fastdistill.ops": 0,
    "fastdistill.losses": 0,
    "fastdistill.conditioning": 1,
    "fastdistill.plotting": 1,
    "fastdistill.data": 2,
    "fastdistill.metrics": 2,
    "fastdistill.teachers": 3,
    "fastdistill.sampling": 4,
    "fastdistill.methods": 5,
    "fastdistill.engine": 6,
    "fastdistill.student": 7,
    "fastdistill.projection": 7,
    "fastdistill.reports": 7,
    "fastdistill.evaluation": 7,
    "fastdistill.evaluation_t2i": 7,
    "fastdistill.export": 7,
    "fastdistill.cli": 8,
}
# The top-level __init__ re-exports the public API, so it may import from any layer.
LAYER_EXEMPT_IMPORTERS = {"fastdistill"}

# graph[importer][imported] = ["path/to/file.py:line", ...]
Graph = dict[str, dict[str, list[str]]]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool,
                     modules: set[str]) -> list[str]:
    """The in-tree modules one import statement names (a package is its __init__)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in modules]
    if node.level:
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        if node.level - 1 >= len(package):
            return []  # climbs out of the tree
        base = package[:len(package) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    targets = []
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        if submodule in modules:
            targets.append(submodule)
        elif source in modules:
            targets.append(source)
    return targets


def build_import_graph(root: Path, package: str = PACKAGE) -> Graph:
    """Every module of `package` under `root`, with its edges to other modules of the tree."""
    files = {module_name(path, root): path for path in sorted((root / package).rglob("*.py"))}
    modules = set(files)
    graph: Graph = {name: {} for name in files}
    for importer, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
        for node in sorted(imports, key=lambda node: node.lineno):
            where = f"{path.relative_to(root).as_posix()}:{node.lineno}"
            for target in imported_modules(node, importer, path.name == "__init__.py", modules):
                if target == importer:
                    continue  # `from . import x` inside a package's __init__ where x is no module
                places = graph[importer].setdefault(target, [])
                if where not in places:
                    places.append(where)
    return graph


def strongly_connected_components(graph: Graph) -> list[list[str]]:
    """Tarjan's algorithm; returns only the components with more than one module."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                lowlink[node] = min(lowlink[node], lowlink[successor])
            elif successor in on_stack:
                lowlink[node] = min(lowlink[node], index[successor])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def shortest_cycle_through(start: str, component: list[str], graph: Graph) -> list[str]:
    """A shortest path start -> ... -> start inside the component (breadth-first)."""
    members = set(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for successor in sorted(graph[node]):
            if successor not in members:
                continue
            if successor == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return path[::-1] + [start]
            if successor not in came_from:
                came_from[successor] = node
                queue.append(successor)
    raise AssertionError(f"{start} is not on a cycle inside {component}")


def describe_cycles(graph: Graph) -> list[str]:
    reports = []
    for component in strongly_connected_components(graph):
        cycle = shortest_cycle_through(component[0], component, graph)
        lines = [f"circle among {len(component)} modules: {', '.join(component)}",
                 f"  e.g. {' -> '.join(cycle)}"]
        for importer, imported in zip(cycle, cycle[1:]):
            lines.append(f"    {importer} -> {imported}  at {', '.join(graph[importer][imported])}")
        reports.append("\n".join(lines))
    return reports


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        prefix = ".".join(parts[:length])
        if prefix in LAYERS and (prefix != PACKAGE or module == PACKAGE):
            return LAYERS[prefix]
    return None


def describe_layer_violations(graph: Graph) -> list[str]:
    violations = []
    for importer in sorted(set(graph) - LAYER_EXEMPT_IMPORTERS):
        for imported, places in sorted(graph[importer].items()):
            low, high = layer_of(importer), layer_of(imported)
            if low is not None and high is not None and low < high:
                violations.append(f"{importer} (layer {low}) imports {imported} (layer {high})"
                                  f"  at {', '.join(places)}")
    return violations


# --- the real tree ------------------------------------------------------------------------


def test_every_module_has_a_layer():
    unplaced = sorted(module for module in build_import_graph(REPO_ROOT) if layer_of(module) is None)
    assert not unplaced, "add it to the layer table (LAYERS): " + ", ".join(unplaced)


def test_no_import_cycles():
    cycles = describe_cycles(build_import_graph(REPO_ROOT))
    assert not cycles, f"{len(cycles)} import circle(s):\n" + "\n".join(cycles)


def test_imports_only_point_down_the_layers():
    violations = describe_layer_violations(build_import_graph(REPO_ROOT))
    assert not violations, f"{len(violations)} upward import(s):\n" + "\n".join(violations)


# --- the checker itself, on synthetic packages ----------------------------------------------


def write_package(root: Path, files: dict[str, str]) -> None:
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")


def test_builder_finds_a_circle_through_a_function_level_relative_import(tmp_path):
    write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import helper\n",
        "pkg/b.py": "def helper():\n    from . import a\n    return a\n",
    })
    graph = build_import_graph(tmp_path, "pkg")
    assert graph["pkg.b"] == {"pkg.a": ["pkg/b.py:2"]}
    assert strongly_connected_components(graph) == [["pkg.a", "pkg.b"]]
    [report] = describe_cycles(graph)
    assert "pkg.a -> pkg.b -> pkg.a" in report and "pkg/b.py:2" in report


def test_package_init_importing_its_submodule_is_not_a_circle(tmp_path):
    write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "from .core import run\n",
        "pkg/sub/core.py": "import os\nfrom ..sub import extra\n\ndef run():\n    return extra\n",
        "pkg/sub/extra.py": "import typing\nif typing.TYPE_CHECKING:\n    import pkg.sub.other\n",
        "pkg/sub/other.py": "",
    })
    graph = build_import_graph(tmp_path, "pkg")
    assert graph == {
        "pkg": {},
        "pkg.sub": {"pkg.sub.core": ["pkg/sub/__init__.py:1"]},
        "pkg.sub.core": {"pkg.sub.extra": ["pkg/sub/core.py:2"]},
        "pkg.sub.extra": {"pkg.sub.other": ["pkg/sub/extra.py:3"]},
        "pkg.sub.other": {},
    }
    assert strongly_connected_components(graph) == []
