"""The package's layers: no import cycle between modules, storage below PCA, permutations embeddable alone."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).parents[1] / "dwf_jax"


def _module_of(path: pathlib.Path) -> str:
    """`dwf_jax.<top-level module or subpackage>` that a file belongs to."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:2]).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Top-level dwf_jax module -> the other top-level dwf_jax modules it imports."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = _module_of(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dwf_jax"):
                names = [node.module] if node.module != "dwf_jax" else [f"dwf_jax.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.startswith("dwf_jax")]
            targets = {".".join(name.split(".")[:2]) for name in names}
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
