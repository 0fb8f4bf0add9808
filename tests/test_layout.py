"""The tree tells the flow: each task's function lives in recsys/stages/<module>.py and the DAG
imports it; no import cycles; pure logic does not reach for I/O; workers never import tooling."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "recsys"
# Task ids whose module is not named after them: the tasks that share a stage module.
SHARED_MODULES = {
    "candidates": "tune",
    "screen": "tune",
    "promote": "tune",
    "plan_publish": "publish",
    "publish_shard": "publish",
    "finish_publish": "publish",
    "collect_events": "refresh",
    "score_active": "refresh",
    "publish_refresh": "refresh",
}
# Tasks that are operators rather than TaskFlow functions (a deferrable sensor): task id -> its
# class, which lives in the stage module named after the task id.
OPERATOR_TASKS = {"wait_for_data": "recsys.stages.wait_for_data.WaitForData"}
NIGHTLY_TASKS = {
    "extract", "validate", "aggregate", "index_events", "candidates", "screen", "promote", "tune", "train",
    "recommend", "plan_publish", "publish_shard", "finish_publish", "verify",
}
REFRESH_TASKS = {"collect_events", "score_active", "publish_refresh"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """Every recsys module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("recsys")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recsys"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists() or (
                    PACKAGE.parent / candidate.replace(".", "/") / "__init__.py").exists()
                found.add(candidate if is_module else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): project_imports(p) for p in PACKAGE.rglob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt in graph and not state.get(nxt):
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node):
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("recsys.core", ("recsys.io", "recsys.stages", "recsys.serving", "recsys.dev", "recsys.runtime")),
        ("recsys.io", ("recsys.stages", "recsys.serving", "recsys.dev", "recsys.runtime")),
        ("recsys.stages", ("recsys.serving", "recsys.dev")),
        ("recsys.serving", ("recsys.stages", "recsys.dev")),
    ],
)
def test_layers_only_import_downwards(layer: str, forbidden: tuple[str, ...]) -> None:
    wrong = {
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if module.startswith(layer)
        for target in targets
        if target.startswith(forbidden)
    }
    assert not wrong


def dag_tasks(dag_id: str = "recsys_nightly") -> dict[str, str]:
    """task id -> the stage function its body calls (``from recsys.stages.M import F as stage``)."""
    tree = ast.parse((REPO / "dags" / f"{dag_id}.py").read_text())
    tasks: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
            "task" in ast.unparse(d) for d in node.decorator_list
        ):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("recsys.stages."):
                    tasks[node.name] = f"{inner.module}.{inner.names[0].name}"
    return tasks


@pytest.mark.parametrize(("dag_id", "expected"), [("recsys_nightly", NIGHTLY_TASKS),
                                                 ("recsys_refresh", REFRESH_TASKS)])
def test_every_task_calls_the_function_of_its_name_in_the_stage_module_named_after_it(
    dag_id: str, expected: set[str]
) -> None:
    tasks = dag_tasks(dag_id)
    assert set(tasks) == expected
    for task_id, target in tasks.items():
        module, function = target.rsplit(".", 1)
        assert function == task_id
        assert module == f"recsys.stages.{SHARED_MODULES.get(task_id, task_id)}"
        assert callable(getattr(importlib.import_module(module), function))


def test_the_dag_builds_its_tasks_from_the_stage_modules(airflow_env: Path) -> None:
    """The Airflow DAG that is parsed has exactly the tasks whose functions the test above found."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors
    for dag_id in ("recsys_nightly", "recsys_refresh"):
        # Operators (the nightly's sensor) are not TaskFlow functions: their classes are checked below.
        operators = set(OPERATOR_TASKS) if dag_id == "recsys_nightly" else set()
        assert set(bag.get_dag(dag_id).task_ids) == set(dag_tasks(dag_id)) | operators
    dag = bag.get_dag("recsys_nightly")
    for task_id, target in OPERATOR_TASKS.items():
        module, name = target.rsplit(".", 1)
        assert module == f"recsys.stages.{task_id}"
        assert isinstance(dag.get_task(task_id), getattr(importlib.import_module(module), name))
