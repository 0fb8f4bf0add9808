"""
### recsys_nightly

Turns one day of storefront events into a fresh top-20 list for every user in DynamoDB.

`extract` → `validate` (Great Expectations) → `aggregate` (DuckDB, `sql/*.sql`) →
`train` (hold-out evaluation against popularity, quality gate, final ALS) → `recommend` →
`publish` (DynamoDB; skipped for backfill runs) → `verify`.

Each task reads and writes only its own lake partition `dt=<run date>`, so a rerun of a
date replaces that date and nothing else. The run date is the data interval start; a manual
run without a logical date processes the day before it was triggered, or the `run_date` Param.
Settings come from `RECSYS_*` variables; the Params below override them for one run.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, get_current_context, task

DEFAULT_ARGS = {
    "owner": "recsys",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=2),
    "retry_exponential_backoff": True,
}


def _ctx():  # type: ignore[no-untyped-def]
    from recsys import runtime

    context = get_current_context()
    return runtime.settings_for(context), runtime.resolve_run_date(context), context


@dag(
    dag_id="recsys_nightly",
    schedule="@daily",
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
    },
)
def recsys_nightly() -> None:
    @task
    def extract() -> dict:
        from recsys import pipeline

        settings, day, _ = _ctx()
        return pipeline.extract(settings, day)

    @task
    def validate(extracted: dict) -> dict:
        from recsys import pipeline

        settings, day, _ = _ctx()
        return pipeline.validate(settings, day, extracted["days"])

    @task
    def aggregate(validated: dict) -> dict:
        from recsys import pipeline

        settings, day, _ = _ctx()
        return pipeline.aggregate(settings, day)

    @task
    def train(aggregated: dict) -> dict:
        from recsys import pipeline

        settings, day, _ = _ctx()
        return pipeline.train(settings, day)

    @task
    def recommend(trained: dict) -> dict:
        from recsys import pipeline

        settings, day, _ = _ctx()
        return pipeline.recommend(settings, day)

    @task
    def publish(recommended: dict) -> dict:
        from recsys import pipeline, runtime

        settings, day, context = _ctx()
        return pipeline.publish(settings, day, is_backfill=runtime.is_backfill(context))

    @task
    def verify(published: dict) -> dict:
        from recsys import pipeline

        settings, day, _ = _ctx()
        return pipeline.verify(settings, day, published)

    verify(publish(recommend(train(aggregate(validate(extract()))))))


recsys_nightly()
