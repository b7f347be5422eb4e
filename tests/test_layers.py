"""The package's layers: no import cycle between modules, storage below PCA, permutations embeddable alone."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parents[1] / "dwf_jax"


def _module_of(path: pathlib.Path) -> str:
    """`dwf_jax.<top-level module or subpackage>` that a file belongs to."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:2]).removesuffix(".__init__")


def _absolute(path: pathlib.Path, node: ast.ImportFrom) -> str:
    """The module a `from ... import` names, relative ones (`from . import x`, `from .x import y`) resolved."""
    if not node.level:
        return node.module or ""
    package = path.relative_to(PACKAGE.parent).parent.parts
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported_names(path: pathlib.Path, node: ast.AST) -> list[str]:
    """The dwf_jax modules (or names inside them) that one import statement of the file at `path` imports."""
    if isinstance(node, ast.ImportFrom):
        module = _absolute(path, node)
        if module == "dwf_jax" or (node.level and not node.module):
            return [f"{module}.{alias.name}" for alias in node.names]
        return [module] if module.startswith("dwf_jax") else []
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.startswith("dwf_jax")]
    return []


def import_graph() -> dict[str, set[str]]:
    """Top-level dwf_jax module -> the other top-level dwf_jax modules it imports."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = _module_of(path)
        for node in ast.walk(ast.parse(path.read_text())):
            targets = {".".join(name.split(".")[:2]) for name in imported_names(path, node)}
            graph.setdefault(module, set()).update(targets - {module, "dwf_jax"})
    return graph


def test_no_module_imports_one_of_its_callers():
    graph = import_graph()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            node == goal or (node not in seen and reaches(node, goal, seen | {node})) for node in graph.get(start, ())
        )

    cycles = sorted(module for module in graph if reaches(module, module, set()))
    assert not cycles, f"modules in an import cycle: {cycles}"


def test_storage_and_permutations_stand_alone():
    graph = import_graph()
    assert graph["dwf_jax.durable"] == set()
    assert graph["dwf_jax.zoo_store"] == {"dwf_jax.durable"}
    assert graph["dwf_jax.permutations"] == set()
    assert graph["dwf_jax.pca"] == {"dwf_jax.zoo_store"}


@pytest.mark.parametrize(
    "file, statement, imported",
    [
        ("durable.py", "from . import zoo_store", "dwf_jax.zoo_store"),
        ("durable.py", "from .zoo_store import Flattener", "dwf_jax.zoo_store"),
        ("flow/source.py", "from . import sampling", "dwf_jax.flow.sampling"),
        ("flow/source.py", "from ..pca import fit", "dwf_jax.pca"),
        ("flow/__init__.py", "from .source import draw", "dwf_jax.flow.source"),
    ],
)
def test_relative_imports_resolve_to_the_module_they_name(file, statement, imported):
    [name] = imported_names(PACKAGE / file, ast.parse(statement).body[0])
    assert name == imported
