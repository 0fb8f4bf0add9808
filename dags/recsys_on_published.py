"""
### recsys_on_published

An example of a DAG downstream of recsys, and the pattern to copy for one: it is scheduled on
the serving table's Asset, `dynamodb://<region>/<table>` (`RECSYS_AWS_REGION`, `RECSYS_TABLE`),
so Airflow starts it each time `recsys_nightly`'s `finish_publish` has marked a night's lists
served. Its one task logs what the triggering event carries in its extra: the run date and the
model version now in the table. A real one would warm a cache, notify the storefront or start
an A/B analysis from there. Backfills and runs that do not publish emit no event and so start
nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Asset, dag, task

from recsys.alerts import FailureAlert
from recsys.config import asset_uris_from_env, run_limits_from_env

TASK_TIMEOUT_MINUTES = run_limits_from_env()[0]
SERVING_TABLE_URI = asset_uris_from_env()[0]


@dag(
    dag_id="recsys_on_published",
    schedule=[Asset(SERVING_TABLE_URI)],
    start_date=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),  # any store's history: backfills and recsys run of old days
    catchup=False,
    dagrun_timeout=dt.timedelta(hours=1),
    default_args={
        "owner": "recsys",
        "retries": 1,
        "execution_timeout": dt.timedelta(minutes=TASK_TIMEOUT_MINUTES),
        "on_failure_callback": FailureAlert(),
    },
    tags=["recsys", "example", "assets"],
    doc_md=__doc__,
)
def recsys_on_published() -> None:
    @task
    def log_published() -> list[dict[str, Any]]:
        from recsys.runtime import triggering_extras

        return triggering_extras()

    log_published()


recsys_on_published()
