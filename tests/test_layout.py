"""The house rules a newcomer relies on, checked: no import circle among the project's modules (imports inside
functions count), and no module of the package or the recipes over MAX_LINES."""
import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("framework", "experiments")
MAX_LINES = 300


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph() -> nx.DiGraph:
    known = modules()
    graph = nx.DiGraph()
    for name, path in known.items():
        graph.add_node(name)
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from package import module` imports the module
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                           for a in node.names]
            for target in targets:
                if target in known and target != name:
                    graph.add_edge(name, target)
    return graph


def test_no_import_circle():
    graph = import_graph()
    # a package's __init__ that imports its own modules (experiments registers the recipes) is no circle
    for package in PACKAGES:
        for child in list(graph.successors(package)):
            if child.startswith(package + "."):
                graph.remove_edge(package, child)
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"import circles: {cycles[:5]}"


def test_the_import_checker_sees_a_circle(tmp_path):
    """The check above can fail: two modules importing each other make a cycle in the graph it builds."""
    graph = nx.DiGraph([("framework.a", "framework.b"), ("framework.b", "framework.a")])
    assert list(nx.simple_cycles(graph))
    assert import_graph().number_of_edges() > 50  # it reads the project's imports, not an empty graph


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_long(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines (at most {MAX_LINES}: split it by idea)"
