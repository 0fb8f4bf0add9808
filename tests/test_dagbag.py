"""Every DAG imports cleanly, cheaply, and follows the project's policy."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"
HEAVY = ("implicit", "duckdb", "great_expectations", "boto3", "scipy", "pandas")


@pytest.fixture(scope="module")
def dagbag(airflow_env):  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors_and_the_nightly_dag_is_there(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"recsys_nightly"}


def test_policy_for_every_dag(dagbag) -> None:  # type: ignore[no-untyped-def]
    for dag_id, dag in dagbag.dags.items():
        assert Path(dag.fileloc).stem == dag_id, "the DAG id equals its file name"
        assert dag.doc_md and len(dag.doc_md) > 200
        assert dag.tags and "recsys" in dag.tags
        assert dag.catchup is False
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"
            assert task.owner == "recsys"


def test_nightly_dag_shape(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.get_dag("recsys_nightly")
    order = ["extract", "validate", "aggregate", "candidates", "tune", "train", "recommend", "publish", "verify"]
    for upstream, downstream in zip(order, order[1:]):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert {"window_days", "factors", "run_date"} <= set(dag.params.keys())


def test_parsing_imports_nothing_heavy() -> None:
    """Parsing the DAG file must not import the heavy libraries (they load inside tasks)."""
    code = (
        "import sys, runpy, time; t = time.perf_counter(); runpy.run_path(sys.argv[1]); "
        "print(time.perf_counter() - t); print(','.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    )
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code, str(DAGS / "recsys_nightly.py")], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[1] == "", f"heavy modules imported at parse time: {out[1]}"
    assert time.perf_counter() - started < 30
