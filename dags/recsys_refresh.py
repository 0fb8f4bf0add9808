"""
### recsys_refresh

Fresh lists within the hour for shoppers active since the served night, with the nightly's model.

`collect_events` (the source's events from the midnight after the served night up to the run's
end, through the nightly's row checks: bad rows quarantined with their reason under
`refresh/quarantine/dt=<day>`, too many of them fail the run) → `score_active` (every user with a
new event, including users the night never saw, scored by the **served** model, the one
`models/champion.json` names, from the night's window events plus the new ones: fold-in, then
the nightly's serve path with its seen, inactive and category-cap filters) → `publish_refresh`
(only those users' items, marked with the night's `model_version`, `refreshed_at` and
`refreshed_until`, each with a conditional write that never replaces a list of a newer nightly;
`__popular__`, `item#…` and `__meta__` are never touched; in the Airflow pool of the nightly's
publish shards, taking all of its slots, so it never writes while a shard does).

Runs on `RECSYS_REFRESH_SCHEDULE` (default hourly), one at a time; a run reads up to its data
interval end, or the `until` Param (`recsys refresh --until`, the "Trigger DAG" form). Every run
reads all the events since the night again, so a rerun gives the same lists.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from recsys.alerts import FailureAlert
from recsys.config import (
    publish_pool_from_env,
    publish_pool_slots_from_env,
    refresh_schedule_from_env,
    run_limits_from_env,
)

TASK_TIMEOUT_MINUTES, _ = run_limits_from_env()
DEFAULT_ARGS = {
    "owner": "recsys",
    "retries": 1,
    "retry_delay": dt.timedelta(minutes=1),
    # An hourly run must not hold the next one: a task gets at most its settings' timeout.
    "execution_timeout": dt.timedelta(minutes=min(TASK_TIMEOUT_MINUTES, 50)),
    "on_failure_callback": FailureAlert(),
}


@dag(
    dag_id="recsys_refresh",
    schedule=CronDataIntervalTimetable(refresh_schedule_from_env(), timezone="UTC"),
    start_date=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),  # any store's history: backfills and recsys run of old days
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(minutes=55),
    default_args=DEFAULT_ARGS,
    tags=["recsys", "recommendations", "dynamodb", "refresh"],
    doc_md=__doc__,
    params={"until": Param(None, type=["null", "string"],
                           description="Read the events up to this ISO-8601 instant (UTC) instead of the data "
                                       "interval end")},
)
def recsys_refresh() -> None:
    # Each task is one call of the function of the same name in recsys/stages/refresh.py.
    @task
    def collect_events() -> dict[str, Any]:
        from recsys.runtime import refresh_until, run_stage
        from recsys.stages.refresh import collect_events as stage

        return run_stage(stage, refresh_until())

    @task
    def score_active(collected: dict[str, Any]) -> dict[str, Any]:
        from recsys.runtime import run_stage
        from recsys.stages.refresh import score_active as stage

        return run_stage(stage, collected)

    @task(pool=publish_pool_from_env(), pool_slots=publish_pool_slots_from_env())
    def publish_refresh(scored: dict[str, Any]) -> dict[str, Any]:
        from recsys.runtime import run_stage
        from recsys.stages.refresh import publish_refresh as stage

        return run_stage(stage, scored)

    # The ignores: Airflow types a task call by its function's parameters, not the XComArgs (see recsys_nightly).
    publish_refresh(score_active(collect_events()))  # type: ignore[arg-type]


recsys_refresh()
