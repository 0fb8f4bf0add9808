"""
### recsys_nightly

Turns one day of storefront events into a fresh top-20 list for every user in DynamoDB.

`wait_for_data` (waits, in the triggerer and without a worker slot, until the run date has fully
landed in the source: an event at or after `RECSYS_COMPLETE_AFTER` (23:00 UTC) of that day or a
later one, or the exporter's `RECSYS_DONE_MARKER`; checks every `RECSYS_WAIT_POKE_SECONDS`, fails
after `RECSYS_WAIT_TIMEOUT`, 6 h; a complete day goes straight on) →
`extract` → `validate` (Great Expectations) → `aggregate` (DuckDB, `sql/*.sql`) →
`index_events` (the window's events indexed by user and item, built once for every model task) →
`screen` (one mapped task per candidate — a model family and its parameters, event weights,
recency half-life — fit and scored cheaply on a sample of the users) → `promote` (successive
halving: the best few that fit `RECSYS_TUNE_BUDGET_SECONDS`) → `tune` (one mapped task per
promoted candidate, scored on the held-out newest days) →
`train` (the best candidate, gated against popularity, retrained on the whole window) → `recommend` →
`plan_publish` (skips backfill runs and dates older than the one served, unless the
`force_publish` Param is set; else splits the users into `publish_shards` ranges) →
`publish_shard` (one mapped task per shard, in the Airflow pool `recsys_dynamodb` or
`RECSYS_PUBLISH_POOL`, which bounds how many write to DynamoDB at once) →
`finish_publish` (marks the run served in `__meta__` once every shard succeeded; updates the Asset
`dynamodb://<region>/<table>` with the run date and model version in the event's extra) → `verify`.
`recommend` updates the Asset of the lake's `recommendations` dataset the same way.

Each task reads and writes only its own lake partition `dt=<run date>`, so a rerun of a
date replaces that date and nothing else. The run date is the data interval start; a manual
run without a logical date, or a run scheduled on `RECSYS_SOURCE_ASSET` (the exporter's Asset,
instead of 00:00 UTC), processes the day before it was triggered, or the `run_date` Param.
Settings come from `RECSYS_*` variables; the Params below override them for one run.

A task that fails for good, and a quality gate that refuses tonight's model, send an alert
(the log, and e-mail, Slack or a webhook as configured: `RECSYS_ALERT_*`); with
`RECSYS_PUBLISH_DEADLINE` set, so does a run whose lists are not published by then (UTC).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, task
from airflow.sdk.definitions.callback import SyncCallback
from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

from recsys.alerts import FailureAlert, notify_missed_deadline
from recsys.config import (
    asset_uris_from_env,
    dag_params,
    publish_deadline_from_env,
    publish_pool_from_env,
    run_limits_from_env,
    source_asset_from_env,
)
from recsys.stages.wait_for_data import WaitForData

TASK_TIMEOUT_MINUTES, RUN_TIMEOUT_HOURS = run_limits_from_env()
SOURCE_ASSET = source_asset_from_env()
# What downstream DAGs can be scheduled on: the serving table, updated by finish_publish once a
# run's lists are served, and the lake's recommendations, a partition of which recommend writes.
SERVING_TABLE_URI, RECOMMENDATIONS_URI = asset_uris_from_env()
SERVING_TABLE, RECOMMENDATIONS = Asset(SERVING_TABLE_URI), Asset(RECOMMENDATIONS_URI)
# RECSYS_PUBLISH_DEADLINE (HH:MM UTC): an alert when the lists of run date D are not served by
# then on D+1 (the logical date is D 00:00); a run that succeeds in time clears its deadline. A
# run scheduled on RECSYS_SOURCE_ASSET has no logical date, so no deadline applies to it.
PUBLISH_DEADLINE = publish_deadline_from_env()
DEADLINE = (
    DeadlineAlert(reference=DeadlineReference.DAGRUN_LOGICAL_DATE, interval=PUBLISH_DEADLINE,
                  callback=SyncCallback(notify_missed_deadline), name="lists published")
    if PUBLISH_DEADLINE is not None
    else None
)
DEFAULT_ARGS = {
    "owner": "recsys",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=2),
    "retry_exponential_backoff": True,
    # A hung call fails its task (and is retried) instead of holding the night; a task that
    # fails for good is alerted (recsys.alerts: log, e-mail, Slack, webhook).
    "execution_timeout": dt.timedelta(minutes=TASK_TIMEOUT_MINUTES),
    "on_failure_callback": FailureAlert(),
}


@dag(
    dag_id="recsys_nightly",
    # Nightly at 00:00 UTC, for the day that just ended: the data interval [D, D+1) makes the
    # logical date D (a plain cron string would give a zero-length interval at D+1 00:00).
    # Or on the exporter's Asset: such a run has no logical date and processes the day before it.
    schedule=Asset(SOURCE_ASSET) if SOURCE_ASSET else CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),  # any store's history: backfills and recsys run of old days
    catchup=False,
    max_active_runs=1,
    # One run at a time: a run that hangs must end before the next night's is due.
    dagrun_timeout=dt.timedelta(hours=RUN_TIMEOUT_HOURS),
    deadline=DEADLINE,
    default_args=DEFAULT_ARGS,
    tags=["recsys", "recommendations", "dynamodb"],
    doc_md=__doc__,
    # One declaration: the Settings fields (recsys/config.py) that a run may override, and run_date, force_publish.
    params={name: Param(**kwargs) for name, kwargs in dag_params().items()},
)
def recsys_nightly() -> None:
    # Each task is one call of the function of the same name in recsys/stages/<module>.py,
    # imported inside the task so that parsing this file loads none of the pipeline.
    @task
    def extract() -> dict[str, Any]:
        from recsys.runtime import run_stage
        from recsys.stages.extract import extract as stage

        return run_stage(stage)

    @task
    def validate(extracted: dict[str, Any]) -> dict[str, Any]:
        from recsys.runtime import run_stage
        from recsys.stages.validate import validate as stage

        return run_stage(stage, extracted["days"])

    @task
    def aggregate(validated: dict[str, Any]) -> dict[str, Any]:
        from recsys.runtime import run_stage
        from recsys.stages.aggregate import aggregate as stage

        return run_stage(stage)

    @task
    def index_events(aggregated: dict[str, Any]) -> dict[str, Any]:
        from recsys.runtime import run_stage
        from recsys.stages.index_events import index_events as stage

        return run_stage(stage)

    @task
    def candidates(indexed: dict[str, Any]) -> list[dict[str, Any]]:
        from recsys.runtime import run_stage
        from recsys.stages.tune import candidates as stage

        return run_stage(stage)

    @task
    def screen(candidate: dict[str, Any]) -> dict[str, Any]:
        from recsys.runtime import run_stage
        from recsys.stages.tune import screen as stage

        return run_stage(stage, candidate)

    @task
    def promote(screened: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from recsys.runtime import mapped_results, run_stage
        from recsys.stages.tune import promote as stage

        return run_stage(stage, mapped_results(screened))

    @task
    def tune(candidate: dict[str, Any]) -> dict[str, Any]:
        from recsys.runtime import run_stage
        from recsys.stages.tune import tune as stage

        return run_stage(stage, candidate)

    @task
    def train(results: list[dict[str, Any]]) -> dict[str, Any]:
        from recsys.runtime import mapped_results, run_stage
        from recsys.stages.train import train as stage

        return run_stage(stage, mapped_results(results))

    @task(outlets=[RECOMMENDATIONS])
    def recommend(trained: dict[str, Any]) -> dict[str, Any]:
        from recsys.runtime import record_asset_event, run_stage
        from recsys.stages.recommend import recommend as stage

        recommended = run_stage(stage)
        record_asset_event(RECOMMENDATIONS, recommended, ("run_date", "model_version", "partition"))
        return recommended

    @task
    def plan_publish(recommended: dict[str, Any]) -> list[dict[str, Any]]:
        from recsys.runtime import run_stage
        from recsys.stages.publish import plan_publish as stage

        return run_stage(stage)

    @task(pool=publish_pool_from_env())
    def publish_shard(shard: dict[str, Any]) -> dict[str, Any]:
        from recsys.runtime import run_stage
        from recsys.stages.publish import publish_shard as stage

        return run_stage(stage, shard)

    @task(outlets=[SERVING_TABLE])
    def finish_publish(shards: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
        from recsys.runtime import mapped_results, record_asset_event, run_stage
        from recsys.stages.publish import finish_publish as stage

        published = run_stage(stage, list(shards), mapped_results(results))
        record_asset_event(SERVING_TABLE, published, ("run_date", "model_version"))
        return published

    @task
    def verify(published: dict[str, Any]) -> dict[str, Any]:
        from recsys.runtime import run_stage
        from recsys.stages.verify import verify as stage

        return run_stage(stage, published)

    # Airflow types a task call as taking its function's parameters, not the XComArgs that
    # stand for them at DAG-parse time: the ignores below are that gap, not a real mismatch.
    extracted = extract()
    # The sensor defers to a trigger while it waits; its class lives in recsys/stages/wait_for_data.py.
    WaitForData(task_id="wait_for_data") >> extracted
    indexed = index_events(aggregate(validate(extracted)))  # type: ignore[arg-type]
    screened = screen.expand(candidate=candidates(indexed))  # type: ignore[arg-type]
    results = tune.expand(candidate=promote(screened))  # type: ignore[arg-type]
    shards = plan_publish(recommend(train(results)))  # type: ignore[arg-type]
    verify(finish_publish(shards, publish_shard.expand(shard=shards)))  # type: ignore[arg-type]


recsys_nightly()
