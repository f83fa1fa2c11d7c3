"""The package layering: no import cycles between thinksafe's packages, and the bottom imports nothing above it.

Read from the source with ``ast`` (every ``import`` statement, inside functions too: a deferred import is
still a dependency), so the test needs no heavy import and sees imports that only run on some paths.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "thinksafe"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The thinksafe modules ``path`` imports (relative imports resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from thinksafe import rows`` names a module, not a package attribute
            found.update(
                f"{target}.{alias.name}"
                for alias in node.names
                if (PACKAGE.parent / f"{target}.{alias.name}".replace(".", "/")).with_suffix(".py").is_file()
            )
    return {name for name in found if name == "thinksafe" or name.startswith("thinksafe.")}


def _unit(module: str) -> str:
    """A package of thinksafe (``thinksafe.data``) or a top-level module (``thinksafe.rows``)."""
    return ".".join(module.split(".")[:2])


def _graph() -> dict[str, dict[str, set[tuple[str, str]]]]:
    """unit -> imported unit -> the (module, imported module) pairs behind that edge."""
    graph: dict[str, dict[str, set[tuple[str, str]]]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        graph.setdefault(_unit(module), {})
        for target in _imports(path):
            if _unit(target) not in (_unit(module), "thinksafe"):
                graph[_unit(module)].setdefault(_unit(target), set()).add((module, target))
    return graph


def _reach(graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), {}):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _cycle(graph) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _explain(graph, units: list[str]) -> str:
    return "; ".join(
        f"{a} -> {b} ({', '.join(sorted(f'{m} imports {t}' for m, t in graph[a][b]))})"
        for a, b in zip(units, units[1:])
    )


def test_the_graph_sees_known_imports():
    graph = _graph()
    assert {"thinksafe.data", "thinksafe.model", "thinksafe.sampling", "thinksafe.rows", "thinksafe.metrics"} <= set(
        graph
    )
    assert "thinksafe.rows" in graph["thinksafe.data"]  # datamodule encodes with the row core


def test_no_import_cycle_between_packages():
    graph = _graph()
    cycle = _cycle(graph)
    assert cycle is None, f"import cycle {' -> '.join(cycle)}: {_explain(graph, cycle)}"


@pytest.mark.parametrize(
    ("unit", "allowed"),
    [
        # the row core: what a row, a label and a batch are; everything else builds on it
        ("thinksafe.rows", {"thinksafe.errors"}),
        # atomic writes and the disk errors a user fixes: every layer writes through them
        ("thinksafe.files", {"thinksafe.errors"}),
        # what every rank of a multi-process run needs (the process group's end, shard splits): imports nothing
        ("thinksafe.distributed", set()),
        # the model (LightningModule, loading, losses) is trained on rows; it does not know where they come from
        ("thinksafe.model", {"thinksafe.errors", "thinksafe.rows", "thinksafe.files", "thinksafe.distributed"}),
        # samplers load models (thinksafe.model.loading) and never see data sets, guards, metrics or evaluation
        (
            "thinksafe.sampling",
            {"thinksafe.errors", "thinksafe.rows", "thinksafe.files", "thinksafe.distributed", "thinksafe.model"},
        ),
    ],
)
def test_the_bottom_imports_nothing_above_it(unit, allowed):
    graph = _graph()
    above = _reach(graph, unit) - allowed
    assert not above, f"{unit} reaches {sorted(above)}: " + "; ".join(
        _explain(graph, [a, b]) for a in [unit, *sorted(_reach(graph, unit))] for b in graph.get(a, {}) if b in above
    )
