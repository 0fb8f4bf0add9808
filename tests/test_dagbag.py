"""Every DAG imports cleanly, cheaply, and follows the project's policy."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[1] / "dags"
HEAVY = ("implicit", "duckdb", "great_expectations", "boto3", "scipy", "pandas")


@pytest.fixture(scope="module")
def dagbag(airflow_env):  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors_and_both_dags_are_there(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"recsys_nightly", "recsys_refresh"}


def test_policy_for_every_dag(dagbag) -> None:  # type: ignore[no-untyped-def]
    for dag_id, dag in dagbag.dags.items():
        assert Path(dag.fileloc).stem == dag_id, "the DAG id equals its file name"
        assert dag.doc_md and len(dag.doc_md) > 200
        assert dag.tags and "recsys" in dag.tags
        assert dag.catchup is False
        assert dag.dagrun_timeout is not None and dag.dagrun_timeout < dt.timedelta(days=1), dag_id
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"
            assert task.owner == "recsys"
            assert task.execution_timeout is not None, f"{dag_id}.{task.task_id} has no execution_timeout"
            assert task.on_failure_callback, f"{dag_id}.{task.task_id} alerts nobody when it fails"


def test_nightly_dag_shape(dagbag) -> None:  # type: ignore[no-untyped-def]
    dag = dagbag.get_dag("recsys_nightly")
    order = ["extract", "validate", "aggregate", "index_events", "candidates", "screen", "promote", "tune", "train",
             "recommend", "plan_publish", "publish_shard"]
    for upstream, downstream in zip(order, order[1:]):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    # __meta__ is written only after the plan and every shard; verify reads what that reports.
    assert dag.get_task("finish_publish").upstream_task_ids == {"plan_publish", "publish_shard"}
    assert dag.get_task("verify").upstream_task_ids == {"finish_publish"}
    assert {"window_days", "factors", "run_date", "force_publish", "publish_shards"} <= set(dag.params.keys())


def test_publish_shards_are_mapped_and_run_in_the_dynamodb_pool(dagbag) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    from recsys.config import Settings

    dag = dagbag.get_dag("recsys_nightly")
    shard = dag.get_task("publish_shard")
    assert isinstance(shard, MappedOperator)
    assert shard.pool == Settings.from_env().publish_pool == "recsys_dynamodb"
    assert all(t.pool != "recsys_dynamodb" for t in dag.tasks if t.task_id != "publish_shard")


def test_refresh_dag_shape_and_its_publish_takes_the_whole_dynamodb_pool(dagbag) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk import CronDataIntervalTimetable

    from recsys.config import Settings

    dag = dagbag.get_dag("recsys_refresh")
    assert dag.get_task("score_active").upstream_task_ids == {"collect_events"}
    assert dag.get_task("publish_refresh").upstream_task_ids == {"score_active"}
    assert dag.max_active_runs == 1 and "until" in dag.params
    assert isinstance(dag.timetable, CronDataIntervalTimetable) and dag.timetable.expression == "0 * * * *"
    settings = Settings.from_env()
    # All the slots of the nightly's publish pool: it never writes while a publish shard does.
    publish = dag.get_task("publish_refresh")
    assert (publish.pool, publish.pool_slots) == (settings.publish_pool, settings.publish_pool_slots)
    assert all(t.pool != settings.publish_pool for t in dag.tasks if t.task_id != "publish_refresh")


@pytest.mark.parametrize("dag_file", ["recsys_nightly.py", "recsys_refresh.py"])
def test_parsing_imports_nothing_heavy(dag_file: str) -> None:
    """Parsing a DAG file must not import the heavy libraries (they load inside tasks)."""
    code = (
        "import sys, runpy; runpy.run_path(sys.argv[1]); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(DAGS / dag_file)], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "", f"heavy modules imported at parse time: {out[0]}"
