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
    assert set(dagbag.dag_ids) == {"recsys_nightly", "recsys_on_published", "recsys_refresh"}


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
    order = ["wait_for_data", "extract", "validate", "aggregate", "index_events", "candidates", "screen", "promote",
             "tune", "train", "recommend", "plan_publish", "publish_shard"]
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


def test_the_refresh_publish_takes_as_many_slots_as_the_settings_give_the_pool(
    airflow_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the defaults: the pool and its slots come from RECSYS_PUBLISH_POOL(_SLOTS) when the
    files are parsed, in what the dag-processor stores too (the scheduler reads that)."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    monkeypatch.setenv("RECSYS_PUBLISH_POOL", "recsys_writes")
    monkeypatch.setenv("RECSYS_PUBLISH_POOL_SLOTS", "7")
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    for dag_id, task_id, slots in (("recsys_refresh", "publish_refresh", 7), ("recsys_nightly", "publish_shard", 1)):
        stored = DagSerialization.from_dict(DagSerialization.to_dict(bag.get_dag(dag_id))).get_task(task_id)
        assert (stored.pool, stored.pool_slots) == ("recsys_writes", slots), f"{dag_id}.{task_id}"


def test_the_nightly_updates_the_serving_table_and_recommendations_assets(dagbag) -> None:  # type: ignore[no-untyped-def]
    from recsys.config import asset_uris_from_env

    table, recommendations = asset_uris_from_env()
    assert table == "dynamodb://us-east-1/recsys_user_recommendations"
    dag = dagbag.get_dag("recsys_nightly")
    outlets = {t.task_id: [a.uri for a in t.outlets] for t in dag.tasks if t.outlets}
    assert outlets == {"finish_publish": [table], "recommend": [recommendations]}
    # The example downstream DAG runs when the table's Asset is updated, and only then.
    downstream = dagbag.get_dag("recsys_on_published")
    assert [a.uri for a in downstream.timetable.asset_condition.objects] == [table]


def test_the_publish_deadline_is_a_deadline_alert_only_when_set(dagbag, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.deadline import DeadlineReference
    from airflow.serialization.serialized_objects import DagSerialization

    assert not dagbag.get_dag("recsys_nightly").deadline  # unset: no deadline
    monkeypatch.setenv("RECSYS_PUBLISH_DEADLINE", "06:30")
    dag = DagBag(dag_folder=str(DAGS / "recsys_nightly.py")).get_dag("recsys_nightly")
    [alert] = dag.deadline
    # The lists of run date D (logical date D 00:00 UTC) are due at 06:30 UTC on D+1.
    assert alert.reference == DeadlineReference.DAGRUN_LOGICAL_DATE
    assert alert.interval == dt.timedelta(days=1, hours=6, minutes=30)
    assert alert.callback.path == "recsys.alerts.notify_missed_deadline"
    assert DagSerialization.to_dict(dag)  # what the dag-processor stores: the alert serializes


# Run in a fresh interpreter: records who first imports each heavy module. Airflow's own provider
# discovery, which the first Asset of a process triggers (the amazon provider's S3 asset handler
# imports boto3), is Airflow's cost, paid once per process whatever the DAG; recsys' is not allowed.
PARSE_PROBE = """
import runpy, sys, traceback
HEAVY = set(sys.argv[2].split(","))
first = {}
class Probe:
    def find_spec(self, name, path=None, target=None):
        if name in HEAVY and name not in first:
            first[name] = [f.filename for f in traceback.extract_stack()]
        return None
sys.meta_path.insert(0, Probe())
runpy.run_path(sys.argv[1])
ours = [m for m, files in first.items() if not any(f.endswith("providers_manager_runtime.py") for f in files)]
print(",".join(sorted(ours)))
"""


@pytest.mark.parametrize("dag_file", ["recsys_nightly.py", "recsys_on_published.py", "recsys_refresh.py"])
def test_parsing_imports_nothing_heavy(dag_file: str) -> None:
    """Parsing a DAG file must not import the heavy libraries (they load inside tasks)."""
    out = subprocess.run(
        [sys.executable, "-c", PARSE_PROBE, str(DAGS / dag_file), ",".join(HEAVY)],
        capture_output=True, text=True, check=True,
    ).stdout.split("\n")
    assert out[0] == "", f"heavy modules imported at parse time: {out[0]}"


def test_the_nightly_is_scheduled_on_the_source_asset_when_one_is_set(
    airflow_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RECSYS_SOURCE_ASSET swaps the 00:00 UTC cron for the exporter's Asset; wait_for_data still runs first."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("RECSYS_SOURCE_ASSET", "s3://store-exports/events")
    dag = DagBag(dag_folder=str(DAGS)).get_dag("recsys_nightly")
    assert type(dag.timetable).__name__ == "AssetTriggeredTimetable"
    assert dag.timetable.asset_condition.uri == "s3://store-exports/events"
    assert dag.get_task("extract").upstream_task_ids == {"wait_for_data"}


def test_the_parse_probe_sees_a_heavy_import(tmp_path: Path) -> None:
    dag_file = tmp_path / "heavy.py"
    dag_file.write_text("import duckdb\n")
    out = subprocess.run([sys.executable, "-c", PARSE_PROBE, str(dag_file), ",".join(HEAVY)],
                         capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[0] == "duckdb"
