"""Running the nightly DAG from a terminal or a test: Airflow pointed at the project, the
metadata DB migrated, the publish pool made, then ``dag.test()``; and the per-stage times
of a finished run.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from recsys.config import Settings, dags_folder_from_env

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]

DAGS_FOLDER = dags_folder_from_env()

DAG_ID = "recsys_nightly"


def configure_airflow(settings: Settings) -> dict[str, str]:
    """Point Airflow at the project's DAGs and a metadata DB under RECSYS_HOME (unless set)."""
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    values = {
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
    for key, value in values.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in values}


def migrate_airflow_db(settings: Settings) -> None:
    """Create or upgrade the Airflow metadata database (idempotent)."""
    env = {**os.environ, **configure_airflow(settings)}
    airflow = Path(sys.executable).with_name("airflow")
    started = time.perf_counter()
    done = subprocess.run(
        [str(airflow), "db", "migrate"], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"'airflow db migrate' failed ({done.returncode}):\n{done.stderr[-2000:]}")
    log.info(
        "Airflow metadata database ready in %.1f s (AIRFLOW_HOME=%s)",
        time.perf_counter() - started,
        env["AIRFLOW_HOME"],
    )


def ensure_publish_pool(settings: Settings) -> str:
    """Create the Airflow pool the publish shards run in, with ``publish_pool_slots`` slots,
    unless it exists (its slots are then left as an operator set them). Returns what was done.

    A scheduler never starts a task whose pool is missing (it only logs a warning), so every
    Airflow metadata database recsys runs against needs the pool: ``recsys run`` and
    ``recsys demo`` call this; a deployment runs ``recsys pool`` once (docker-compose's
    airflow-init does). ``dag.test()`` itself ignores pools.
    """
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    with create_session() as session:
        pool = Pool.get_pool(settings.publish_pool, session=session)
        if pool is not None:
            line = f"Airflow pool {settings.publish_pool} exists with {pool.slots} slot(s)"
            if pool.slots != settings.publish_pool_slots:
                line += (f" (RECSYS_PUBLISH_POOL_SLOTS={settings.publish_pool_slots} only sizes a new pool; "
                         f"resize with 'airflow pools set {settings.publish_pool} N \"...\"')")
        else:
            Pool.create_or_update_pool(
                settings.publish_pool,
                settings.publish_pool_slots,
                "recsys: publish shards writing to DynamoDB at once (RECSYS_PUBLISH_POOL_SLOTS)",
                False,
                session=session,
            )
            line = f"Airflow pool {settings.publish_pool} created with {settings.publish_pool_slots} slot(s)"
    log.info("%s", line)
    return line


def load_dag() -> Any:
    """Import the DAG file the scheduler would parse; raises when it has import errors."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(DAG_ID)
    if dag is None:
        raise RuntimeError(f"DAG {DAG_ID!r} not found in {DAGS_FOLDER}")
    return dag


def run_dag(settings: Settings, day: dt.date, conf: dict[str, Any] | None = None) -> Any:
    """Run the nightly DAG for ``day`` with Airflow's ``dag.test()``; returns the DagRun."""
    configure_airflow(settings)
    migrate_airflow_db(settings)
    ensure_publish_pool(settings)
    dag = load_dag()
    logical = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    log.info("running %s for %s (lake %s, table %s)", DAG_ID, day, settings.lake, settings.table)
    return dag.test(logical_date=logical, run_conf=conf or {})

PUBLISH_TASKS = ("plan_publish", "publish_shard", "finish_publish")


def stage_times(dag_run: Any) -> str:
    """A table of the run's tasks: state, seconds of work and wall seconds.

    Mapped tasks are one row with their count: ``seconds`` sums the instances, ``wall`` runs
    from the first start to the last end (under a scheduler shards overlap, so wall < seconds;
    ``dag.test()`` runs them one after another). A last row ``publish (all)`` spans the three
    publish tasks, so the table still shows what publishing cost in all.
    """
    rows: dict[str, dict[str, Any]] = {}
    for ti in sorted(dag_run.get_task_instances(), key=lambda t: (t.start_date or dag_run.start_date, t.map_index)):
        row = rows.setdefault(ti.task_id, {"seconds": 0.0, "count": 0, "starts": [], "ends": [], "states": set()})
        if ti.start_date and ti.end_date:
            row["seconds"] += (ti.end_date - ti.start_date).total_seconds()
            row["starts"].append(ti.start_date)
            row["ends"].append(ti.end_date)
        row["count"] += 1
        row["states"].add(str(ti.state).rsplit(".", 1)[-1].lower())
    publish = [rows[t] for t in PUBLISH_TASKS if t in rows]
    if publish:
        rows["publish (all)"] = {
            "seconds": sum(r["seconds"] for r in publish),
            "count": 1,
            "starts": [s for r in publish for s in r["starts"]],
            "ends": [e for r in publish for e in r["ends"]],
            "states": {s for r in publish for s in r["states"]},
        }
    lines = [f"    {'task':<20} {'state':<15} {'seconds':>8} {'wall':>8}"]
    for task_id, row in rows.items():
        name = f"{task_id} x{row['count']}" if row["count"] > 1 else task_id
        wall = (max(row["ends"]) - min(row["starts"])).total_seconds() if row["starts"] else 0.0
        state = "/".join(sorted(row["states"]))
        lines.append(f"    {name:<20} {state:<15} {row['seconds']:>8.1f} {wall:>8.1f}")
    return "\n".join(lines)


def failed_tasks(dag_run: Any) -> list[str]:
    """Task ids of the run that did not succeed (for the exit message)."""
    return [
        ti.task_id
        for ti in dag_run.get_task_instances()
        if str(ti.state) not in ("success", "TaskInstanceState.SUCCESS")
    ]
