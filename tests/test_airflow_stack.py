"""A real Airflow 3 (scheduler, dag-processor, triggerer, api-server) on PostgreSQL metadata:
a backfill through the REST API, and tasks on two Celery workers over Redis.

Each test starts its own stack on a free port with a private metadata database, and stops it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recsys.config import Settings, serving_table_uri
from recsys.dev.airflow_stack import (
    ApiClient,
    StackConfig,
    down,
    login_password,
    running,
    stack_env,
    up,
)
from recsys.dev.dynamodb_local import free_port
from recsys.io import lake
from tests.services import create_database, drop_database, redis_url
from tests.support import ONE_MODEL, SENSOR_DAG, scan
from tests.support import STORE_END as END

pytestmark = pytest.mark.slow
DAG_ID = "recsys_nightly"
TERMINAL = {"success", "failed"}


@contextlib.contextmanager
def airflow_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> Iterator[tuple[StackConfig, ApiClient]]:
    """Start the stack (private database, free port), yield it with a logged-in API client, stop it."""
    db = create_database("recsys_airflow_test")
    config = StackConfig(
        home=tmp_path / "airflow",
        db_url=db.replace("postgresql://", "postgresql+psycopg2://"),
        port=free_port(),
        password="test-password",
        **extra,
    )
    try:
        up(config, timeout=240)
        yield config, ApiClient(config.base_url, config.user, login_password(config))
    finally:
        stopped = down(config)
        assert not running(config), f"still running after down: {running(config)} (stopped {stopped})"
        drop_database(db)


def wait_for(what: str, check: Any, timeout: float, every: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def dag_runs(api: ApiClient, dag_id: str) -> list[dict[str, Any]]:
    return list(api.get(f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"])


def test_backfill_through_the_rest_api_rebuilds_the_lake_and_leaves_the_served_table_alone(
    recsys_env: Settings, dynamodb_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One model per run: the stack is under test here, not the tuning.
    for key, value in {**ONE_MODEL, "RECSYS_VERIFY_SAMPLE": "100"}.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    # No scheduled runs: only what the test asks for runs (the DAG's own schedule is 'nightly').
    extra_env = {"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False", "AIRFLOW__CORE__PARALLELISM": "4"}
    with airflow_stack(tmp_path, monkeypatch, extra_env=extra_env) as (config, api):
        dag = wait_for("the dag-processor to parse the DAG", lambda: _get_or_none(api, f"/api/v2/dags/{DAG_ID}"), 180)
        assert dag["timetable_summary"] and not dag["has_import_errors"]
        api.patch(f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        # The publish shards' pool exists, or the scheduler would never start them.
        assert api.get(f"/api/v2/pools/{Settings.from_env().publish_pool}")["slots"] >= 1

        # What the storefront is served: the run for END, through the real scheduler.
        api.post(f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": f"{END.isoformat()}T00:00:00Z"})
        first = wait_for("the run for END", lambda: _finished(api, "manual"), 600)
        assert [r["state"] for r in first] == ["success"], _failures(config, api, first)
        served = scan(dynamodb_client, settings.table, with_meta=True)
        assert served["__meta__"]["run_date"]["S"] == END.isoformat()
        # finish_publish announced it on the table's Asset (run date and model version in its extra).
        # (USE_JOB_SCHEDULE=False also keeps the scheduler from starting Asset-scheduled DAGs.)
        published = {"run_date": END.isoformat(), "model_version": served["__meta__"]["model_version"]["S"]}
        assert [e["extra"] for e in _table_events(api, settings)] == [published]

        days = [END - dt.timedelta(days=n) for n in (3, 2, 1)]
        backfill = api.post("/api/v2/backfills", {
            "dag_id": DAG_ID,
            "from_date": f"{days[0].isoformat()}T00:00:00Z",
            "to_date": f"{days[-1].isoformat()}T00:00:00Z",
            "max_active_runs": 2,
        })
        assert backfill["max_active_runs"] == 2 and backfill["dag_id"] == DAG_ID
        runs = wait_for("the three backfill runs", lambda: _finished(api, "backfill", count=3), 900)
        assert sorted(r["logical_date"][:10] for r in runs) == [d.isoformat() for d in days]
        assert {r["state"] for r in runs} == {"success"}, _failures(config, api, runs)
        for day in days:
            for dataset in ("interactions", "confidence", "recommendations"):
                assert lake.partition_exists(settings.lake, dataset, day), (dataset, day)
            assert (lake.partition_dir(settings.lake, "models", day) / "metrics.json").exists()
        # plan_publish ran and declined (no shards), so nothing after it ran: a backfill never
        # touches the served table.
        for run_id, states in _task_states(api, runs).items():
            assert states["plan_publish"] == "success", (run_id, states)
            assert {states[t] for t in ("publish_shard", "finish_publish", "verify")} == {"skipped"}, (run_id, states)
            xcom = api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/plan_publish/xcomEntries/return_value")
            assert xcom["value"] in ([], "[]"), xcom
            logs = "".join(p.read_text(errors="replace") for p in
                           (config.home / "logs").glob(f"dag_id={DAG_ID}/run_id={run_id}/task_id=plan_publish/**/*.log"))
            assert "is a backfill run; lake partitions rebuilt, nothing published" in logs
            # Past days have landed: wait_for_data checked once and did not defer.
            waited = _returned(api, f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/wait_for_data")
            assert waited["deferred"] is False, waited
        assert scan(dynamodb_client, settings.table, with_meta=True) == served  # nothing served changed
        # ... nor announced anything: the table's Asset still has the one event of the run for END.
        assert [e["extra"] for e in _table_events(api, settings)] == [published]
        wait_for("the backfill to complete", lambda: api.get(f"/api/v2/backfills/{backfill['id']}")["completed_at"], 60)


def test_the_triggerer_waits_for_a_day_that_lands_late_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sensor defers to the real triggerer (the trigger serialized through the metadata DB),
    which sees the day land and hands the task back to a worker."""
    day = dt.date(2026, 6, 1)
    dags, source = tmp_path / "dags", tmp_path / "landing"
    dags.mkdir()
    source.mkdir()
    (dags / "wait_for_data_test.py").write_text(SENSOR_DAG)
    header = "user_id,item_id,event_type,event_ts\n"
    (source / "events-1.csv").write_text(header + "u1,i1,View,2026-05-31T23:40:00Z\nu2,i2,View,2026-06-01T21:14:00Z\n")
    for key, value in {"RECSYS_HOME": str(tmp_path / "home"), "RECSYS_SOURCE": str(source),
                       "RECSYS_WAIT_POKE_SECONDS": "2", "RECSYS_WAIT_TIMEOUT": "10m"}.items():
        monkeypatch.setenv(key, value)
    extra_env = {"AIRFLOW__CORE__DAGS_FOLDER": str(dags), "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"}
    with airflow_stack(tmp_path, monkeypatch, extra_env=extra_env) as (config, api):
        dag_id = "wait_for_data_test"
        wait_for("the dag-processor to parse the DAG", lambda: _get_or_none(api, f"/api/v2/dags/{dag_id}"), 180)
        api.patch(f"/api/v2/dags/{dag_id}", {"is_paused": False})
        run_id = api.post(f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": f"{day.isoformat()}T00:00:00Z"})["dag_run_id"]
        task = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/wait_for_data"
        wait_for("the sensor to defer", lambda: api.get(task)["state"] == "deferred", 240, every=1)
        # The worker that deferred must be gone before the trigger fires: when it fires first, the
        # executor's late "success" for that first workload races the resumed task and Airflow marks
        # it failed (seen on a loaded machine, where the worker took 12 s to exit). At night the
        # trigger checks every 300 s, far after the worker's exit.
        scheduler_log = config.stack_dir / "scheduler.log"
        wait_for("the deferring worker to exit", lambda: "final_state=deferred" in scheduler_log.read_text(
            errors="replace"), 120, every=1)
        time.sleep(3)  # a poke or two in the triggerer finds the day incomplete
        assert api.get(task)["state"] == "deferred"
        (source / "events-2.csv").write_text(header + "u3,i3,View,2026-06-01T23:55:00Z\n")
        wait_for("the run to finish", lambda: api.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"] in TERMINAL, 120)
        assert api.get(task)["state"] == "success"
        value = _returned(api, task)
        assert value["deferred"] is True and "2026-06-01T23:55:00+00:00" in value["evidence"], value
        logs = "".join(p.read_text(errors="replace") for p in (config.home / "logs").rglob("*.log"))
        assert "the newest event is at 2026-06-01T21:14:00+00:00, not yet complete" in logs


def _returned(api: ApiClient, task: str) -> Any:
    """What the task instance at ``task`` (its API path) returned: its return_value XCom, decoded."""
    value = api.get(f"{task}/xcomEntries/return_value")["value"]
    return json.loads(value) if isinstance(value, str) else value


def _get_or_none(api: ApiClient, path: str) -> Any:
    try:
        return api.get(path)
    except RuntimeError:
        return None


def _table_events(api: ApiClient, settings: Settings) -> list[dict[str, Any]]:
    """The events of the serving table's Asset, oldest first."""
    events = api.get(f"/api/v2/assets/events?source_dag_id={DAG_ID}&order_by=timestamp&limit=100")["asset_events"]
    return [e for e in events if e["uri"] == serving_table_uri(settings)]


def _finished(api: ApiClient, run_type: str, count: int = 1) -> list[dict[str, Any]] | None:
    runs = [r for r in dag_runs(api, DAG_ID) if r["run_type"] == run_type]
    if len(runs) == count and all(r["state"] in TERMINAL for r in runs):
        return runs
    return None


def _failures(config: StackConfig, api: ApiClient, runs: list[dict[str, Any]]) -> str:
    """The failed tasks of the runs with the end of their logs, for an assertion message."""
    lines = []
    for run_id, states in _task_states(api, runs).items():
        for task_id, state in states.items():
            if state not in ("success", "skipped"):
                lines.append(f"{run_id} {task_id}: {state}")
                for log_file in sorted((config.home / "logs").glob(f"dag_id={DAG_ID}/run_id={run_id}/task_id={task_id}/**/*.log")):
                    lines.append(log_file.read_text(errors="replace")[-1500:])
    return "\n".join(lines)


def _task_states(api: ApiClient, runs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {
        r["dag_run_id"]: {
            t["task_id"]: t["state"]
            for t in api.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{r['dag_run_id']}/taskInstances")["task_instances"]
        }
        for r in runs
    }


PROBE_DAG = '''
import datetime as dt

from airflow.sdk import dag, task


@dag(dag_id="recsys_celery_probe", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
def recsys_celery_probe():
    @task
    def where(i: int) -> dict:
        import os
        import time

        time.sleep(3)  # long enough that four tasks need both workers' slots
        return {"i": i, "pid": os.getpid()}

    where.expand(i=[0, 1, 2, 3, 4, 5])


recsys_celery_probe()
'''


def test_tasks_run_on_two_celery_workers_over_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "recsys_celery_probe.py").write_text(PROBE_DAG)
    queue = f"recsys_test_{uuid.uuid4().hex[:8]}"  # a queue of our own on the shared Redis
    extra_env = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
    }
    with airflow_stack(tmp_path, monkeypatch, executor="CeleryExecutor", broker_url=redis_url(), workers=2, worker_concurrency=2,
                       extra_env=extra_env) as (config, api):
        assert {"celery-worker-1", "celery-worker-2"} <= set(running(config))
        wait_for("the probe DAG", lambda: _get_or_none(api, "/api/v2/dags/recsys_celery_probe"), 180)
        run = api.post("/api/v2/dags/recsys_celery_probe/dagRuns", {"logical_date": None})
        path = f"/api/v2/dags/recsys_celery_probe/dagRuns/{run['dag_run_id']}"
        state = wait_for("the probe run", lambda: api.get(path)["state"] in TERMINAL and api.get(path)["state"], 300)
        tis = api.get(f"{path}/taskInstances")["task_instances"]
        assert state == "success" and len(tis) == 6 and {t["state"] for t in tis} == {"success"}
        assert {t["queue"] for t in tis} == {queue}

        # Ask the workers themselves (Celery's remote control over Redis) what they ran.
        probe = (
            "import json; from airflow.providers.celery.executors.celery_executor import app; "
            "print(json.dumps(app.control.inspect(timeout=10).stats()))"
        )
        done = subprocess.run([sys.executable, "-c", probe], env=stack_env(config), capture_output=True, text=True,
                              timeout=120, check=True)
        stats = json.loads(done.stdout.strip().splitlines()[-1])
        ours = {name: s for name, s in stats.items() if name.startswith("recsys-worker-")}
        assert len(ours) == 2, stats.keys()
        assert all(s["pool"]["max-concurrency"] == 2 for s in ours.values())
        ran = {name: sum(s.get("total", {}).values()) for name, s in ours.items()}
        assert sum(ran.values()) == 6 and all(n > 0 for n in ran.values()), ran  # both workers took tasks
