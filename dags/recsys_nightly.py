"""
### recsys_nightly

Turns one day of storefront events into a fresh top-20 list for every user in DynamoDB.

`extract` → `validate` (Great Expectations) → `aggregate` (DuckDB, `sql/*.sql`) →
`index_events` (the window's events indexed by user and item, built once for every model task) →
`tune` (one mapped task per candidate — ALS or BPR, event weights, recency half-life — scored on
the held-out newest days) →
`train` (the best candidate, gated against popularity, retrained on the whole window) → `recommend` →
`plan_publish` (skips backfill runs and dates older than the one served, unless the
`force_publish` Param is set; else splits the users into `publish_shards` ranges) →
`publish_shard` (one mapped task per shard, in the Airflow pool `recsys_dynamodb` or
`RECSYS_PUBLISH_POOL`, which bounds how many write to DynamoDB at once) →
`finish_publish` (marks the run served in `__meta__` once every shard succeeded) → `verify`.

Each task reads and writes only its own lake partition `dt=<run date>`, so a rerun of a
date replaces that date and nothing else. The run date is the data interval start; a manual
run without a logical date processes the day before it was triggered, or the `run_date` Param.
Settings come from `RECSYS_*` variables; the Params below override them for one run.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task

from recsys.config import publish_pool_from_env

DEFAULT_ARGS = {
    "owner": "recsys",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=2),
    "retry_exponential_backoff": True,
}


@dag(
    dag_id="recsys_nightly",
    # Nightly at 00:00 UTC, for the day that just ended: the data interval [D, D+1) makes the
    # logical date D (a plain cron string would give a zero-length interval at D+1 00:00).
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["recsys", "recommendations", "dynamodb"],
    doc_md=__doc__,
    params={
        "run_date": Param(None, type=["null", "string"], format="date", description="Process this date instead of the data interval start"),
        "window_days": Param(None, type=["null", "integer"], minimum=2, description="Days of history (default RECSYS_WINDOW_DAYS)"),
        "holdout_days": Param(None, type=["null", "integer"], minimum=1, description="Newest days held out for evaluation"),
        "k": Param(None, type=["null", "integer"], minimum=1, maximum=100, description="List length"),
        "factors": Param(None, type=["null", "integer"], minimum=1, description="ALS factors"),
        "regularization": Param(None, type=["null", "number"], minimum=0, description="ALS regularization"),
        "alpha": Param(None, type=["null", "number"], minimum=0, description="Confidence scaling: alpha * log1p(weight sum)"),
        "iterations": Param(None, type=["null", "integer"], minimum=1, description="ALS iterations"),
        "recency_half_life_days": Param(None, type=["null", "number"], minimum=0, description="Older events count less (0 = off)"),
        "force_publish": Param(False, type="boolean", description="Publish even if the table serves a newer run date"),
        "tuning_grid": Param(None, type=["null", "string"], description="Candidates tried each night, e.g. factors=32,64;alpha=2,10;half_life=0,14;weights=configured,uniform | model=bpr;factors=64 (empty: no tuning)"),
        "publish_shards": Param(None, type=["null", "integer"], minimum=1, description="Publish tasks the users are split into (default RECSYS_PUBLISH_SHARDS)"),
        "model": Param(None, type=["null", "string"], enum=[None, "als", "bpr"], description="Model family outside the grid (als or bpr)"),
    },
)
def recsys_nightly() -> None:
    # Each task is one call: the stage functions live in recsys.pipeline.
    @task
    def extract() -> dict:
        from recsys.runtime import run_stage

        return run_stage("extract")

    @task
    def validate(extracted: dict) -> dict:
        from recsys.runtime import run_stage

        return run_stage("validate", extracted["days"])

    @task
    def aggregate(validated: dict) -> dict:
        from recsys.runtime import run_stage

        return run_stage("aggregate")

    @task
    def index_events(aggregated: dict) -> dict:
        from recsys.runtime import run_stage

        return run_stage("index_events")

    @task
    def candidates(indexed: dict) -> list[dict]:
        from recsys.runtime import settings_for

        from recsys import pipeline

        return pipeline.tuning_candidates(settings_for(get_current_context()))

    @task
    def tune(candidate: dict) -> dict:
        from recsys.runtime import run_stage

        return run_stage("tune", candidate)

    @task
    def train(results: list[dict]) -> dict:
        from recsys.runtime import mapped_results, run_stage

        return run_stage("train", mapped_results(results))

    @task
    def recommend(trained: dict) -> dict:
        from recsys.runtime import run_stage

        return run_stage("recommend")

    @task
    def plan_publish(recommended: dict) -> list[dict]:
        from recsys.runtime import run_stage

        return run_stage("plan_publish")

    @task(pool=publish_pool_from_env())
    def publish_shard(shard: dict) -> dict:
        from recsys.runtime import run_stage

        return run_stage("publish_shard", shard)

    @task
    def finish_publish(shards: list[dict], results: list[dict]) -> dict:
        from recsys.runtime import mapped_results, run_stage

        return run_stage("finish_publish", list(shards), mapped_results(results))

    @task
    def verify(published: dict) -> dict:
        from recsys.runtime import run_stage

        return run_stage("verify", published)

    indexed = index_events(aggregate(validate(extract())))
    results = tune.expand(candidate=candidates(indexed))
    shards = plan_publish(recommend(train(results)))
    verify(finish_publish(shards, publish_shard.expand(shard=shards)))


recsys_nightly()
