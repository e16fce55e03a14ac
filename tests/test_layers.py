"""The folders are the layers: every import runs downward, and no modules import each other
in a circle (imports inside functions included, since they run too)."""

from __future__ import annotations

import ast
from pathlib import Path

import ltbm

SOURCE = Path(ltbm.__file__).parent

LAYERS = [
    ("ltbm.core", "ltbm.io"),
    ("ltbm.methods",),
    ("ltbm",),  # the package root: the public API, over core and methods
    ("ltbm.backbones.base", "ltbm.tasks", "ltbm.metrics"),
    ("ltbm.backbones.hf",),
    ("ltbm.backbones.families", "ltbm.backbones.whisper"),
    ("ltbm.backbones.synthetic", "ltbm.backbones.registry"),
    ("ltbm.run",),
    ("ltbm.report", "ltbm.vllm"),
    ("ltbm.demo", "ltbm.cli"),
]
"""Bottom to top. A module may import its own layer and those below it."""


def module_name(path: Path) -> str:
    parts = ["ltbm", *path.relative_to(SOURCE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best, rank = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank is not None, f"{module} belongs to no layer: add it to LAYERS"
    return rank


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The ltbm modules ``path`` imports, anywhere in the file (``from a import b`` counts as
    ``a.b`` when that is a module, else ``a``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("ltbm")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ltbm"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in SOURCE.rglob("*.py")}
    known = set(files)
    return {name: imported_modules(path, known) & known for name, path in files.items()}


def test_every_import_runs_downward():
    upward = [
        f"{source} (layer {layer_of(source)}) imports {target} (layer {layer_of(target)})"
        for source, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(source)
    ]
    assert not upward, "\n".join(upward)


def test_no_circular_imports():
    graph = import_graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, "\n".join(cycles)


def test_the_root_holds_only_the_api_and_the_entry_points():
    modules = sorted(p.name for p in SOURCE.glob("*.py"))
    assert modules == ["__init__.py", "cli.py", "demo.py"]
