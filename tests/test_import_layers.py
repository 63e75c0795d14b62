"""The package's imports flow one way: foundation -> config -> runtime -> data -> models ->
weights -> objective -> train -> inference -> eval -> study -> cli, with no circle and no import hidden in a function
(except of optional third-party packages). docs/architecture.md draws the same layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dinossl"

# Lowest first. A module may import modules of its own layer or of lower layers only.
LAYERS: list[tuple[str, ...]] = [
    ("dinossl", "dinossl.errors", "dinossl.safe_files", "dinossl.outputs", "dinossl.optional"),
    ("dinossl.config",),
    ("dinossl.runtime",),
    ("dinossl.data",),
    ("dinossl.models",),
    ("dinossl.weights", "dinossl.hub"),
    ("dinossl.objective",),
    ("dinossl.train",),
    ("dinossl.inference",),
    ("dinossl.eval",),
    ("dinossl.study",),
    ("dinossl.cli", "dinossl.__main__"),
]
EVAL_FAMILIES = ("classification", "attention", "video", "retrieval")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    base = PACKAGE / relative
    return name == "dinossl" or base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imported(node: ast.AST) -> list[str]:
    """dinossl modules an import statement names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "dinossl"]
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dinossl":
        names = [f"{node.module}.{alias.name}" for alias in node.names]
        return [name if _is_module(name) else node.module for name in names]
    return []


def _imports() -> dict[str, list[tuple[str, bool]]]:
    """module -> [(imported dinossl module, imported inside a function)]."""
    graph: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
        found = []
        for node in ast.walk(tree):
            found += [(name, id(node) in local) for name in _imported(node)]
        graph[_module_name(path)] = found
    return graph


def _layer(module: str) -> int:
    best, index = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), i
    assert index >= 0, f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md"
    return index


GRAPH = _imports()


def test_every_module_is_in_a_layer():
    for module in GRAPH:
        _layer(module)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down_the_layers(module):
    upward = [name for name, _ in GRAPH[module] if _layer(name) > _layer(module)]
    assert not upward, f"{module} (layer {_layer(module)}) imports higher layers: {upward}"


def test_evaluation_families_do_not_import_each_other():
    for module, imports in GRAPH.items():
        parts = module.split(".")
        if len(parts) < 3 or parts[1] != "eval" or parts[2] not in EVAL_FAMILIES:
            continue
        for name, _ in imports:
            other = name.split(".")
            if len(other) > 2 and other[1] == "eval" and other[2] in EVAL_FAMILIES and other[2] != parts[2]:
                pytest.fail(f"{module} imports {name}: share it through a module at the top of dinossl.eval")


def test_no_import_is_hidden_in_a_function():
    hidden = [(module, name) for module, imports in GRAPH.items() for name, local in imports if local]
    assert not hidden, f"function-local imports of dinossl modules: {hidden}"


def test_no_import_circle():
    edges = {module: sorted({name for name, _ in imports if name in GRAPH and name != module})
             for module, imports in GRAPH.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in edges[module]:
            if state.get(target) == 1:
                circle = path[path.index(target):] + [target]
                pytest.fail("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
