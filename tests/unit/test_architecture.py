"""The shape of the code, read from its imports with ``ast`` (module-level and inside functions alike):
layers that only point down, and no module that imports itself round a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("anomaly_ae", "flows")
# The command line and the steps sit above the library: only they, and the flows, may call the steps.
STEP_CALLERS = ("anomaly_ae.steps", "anomaly_ae.cli", "flows")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """{module: the project modules it imports}, for every module of anomaly_ae and flows."""
    graph = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name, targets = _module_name(path), set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    targets |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    for alias in node.names:
                        sub = f"{node.module}.{alias.name}"
                        targets.add(sub if _is_module(sub) else node.module)
            graph[name] = {t for t in targets if t.split(".")[0] in PACKAGES and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (the modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_is_read_from_the_code():
    graph = import_graph()
    assert "anomaly_ae.steps.runs" in graph["anomaly_ae.steps"]
    assert "anomaly_ae.checkpoint" in graph["anomaly_ae.detector"]  # imported inside a method
    assert "flows.entry" in graph["flows.cli"]


def test_no_import_cycle():
    cycle = _cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_never_imports_the_flows():
    wrong = sorted(f"{m} -> {t}" for m, ts in import_graph().items() if m.startswith("anomaly_ae")
                   for t in ts if t.startswith("flows"))
    assert not wrong


def test_only_the_command_line_and_the_flows_call_the_steps():
    def calls_steps(module: str) -> bool:
        return any(module == c or module.startswith(c + ".") for c in STEP_CALLERS)

    wrong = sorted(f"{m} -> {t}" for m, ts in import_graph().items() if not calls_steps(m)
                   for t in ts if t == "anomaly_ae.steps" or t.startswith("anomaly_ae.steps."))
    assert not wrong


def test_flows_reach_the_library_only_through_steps_pipeline_and_errors():
    allowed = ("anomaly_ae.steps", "anomaly_ae.pipeline", "anomaly_ae.errors", "anomaly_ae.runid",
               "anomaly_ae.facts", "anomaly_ae.cli", "anomaly_ae.console")
    wrong = sorted(f"{m} -> {t}" for m, ts in import_graph().items() if m.startswith("flows")
                   for t in ts if t.startswith("anomaly_ae") and not any(t == a or t.startswith(a + ".")
                                                                         for a in allowed))
    assert not wrong
