"""What a task needs to know about its run: the run date, the settings with Params applied,
and whether the run is a backfill. The one place that reads the Airflow context."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Mapping, Sequence

from recsys.config import Settings

log = logging.getLogger(__name__)

# DAG Params that override a Settings field of the same name for one run.
PARAM_FIELDS = (
    "window_days",
    "holdout_days",
    "k",
    "factors",
    "regularization",
    "alpha",
    "iterations",
    "recency_half_life_days",
    "tuning_grid",
    "publish_shards",
    "model",
)

# Stages that also need to know what kind of run this is: keyword -> how it is read.
RUN_FLAGS: dict[str, tuple[str, ...]] = {
    "plan_publish": ("is_backfill", "force"),
    "finish_publish": ("force",),
}


def resolve_run_date(context: Mapping[str, Any]) -> dt.date:
    """The date D whose events a run processes (its data interval is [D, D+1)).

    In order: the ``run_date`` Param; the logical date (scheduled runs and backfills, whose
    data interval starts there, and manual runs given one); for a manual or API run without a
    logical date, the data interval Airflow inferred (the day before it was triggered), or
    failing that the day before it was triggered (the latest complete day).
    """
    params = context.get("params") or {}
    if params.get("run_date"):
        return dt.date.fromisoformat(str(params["run_date"]))
    # The logical date first: a manual run for 2026-05-31 gets the data interval that ends
    # there ([05-30, 05-31)) from the nightly timetable, but it asked for 05-31.
    for key in ("logical_date", "data_interval_start"):
        value = context.get(key)
        if value is not None:
            return dt.date(value.year, value.month, value.day)
    dag_run = context.get("dag_run")
    run_after = getattr(dag_run, "run_after", None) or dt.datetime.now(dt.timezone.utc)
    return (run_after - dt.timedelta(days=1)).date()


def settings_for(context: Mapping[str, Any]) -> Settings:
    """Settings from the environment with this run's Params applied."""
    params = context.get("params") or {}
    return Settings.from_env().with_overrides({name: params.get(name) for name in PARAM_FIELDS})


def is_backfill(context: Mapping[str, Any]) -> bool:
    """True for runs created by a backfill (they rebuild the lake but never publish)."""
    dag_run = context.get("dag_run")
    run_type = str(getattr(dag_run, "run_type", "") or "")
    return run_type.lower().endswith("backfill")


def mapped_results(results: Sequence[Any]) -> list[Any]:
    """Every result of a mapped task (tune, publish_shard), in map-index order.

    Airflow hands them over as a lazy sequence. ``list()`` of it reads them one request at a
    time and then once past the end, which the task SDK logs as an error ("XCom not found")
    in every successful run; a slice reads them all in one request and logs nothing.
    """
    return list(results[:])


def run_stage(name: str, *args: Any) -> Any:
    """Run the stage ``<name>(settings, run_date, *args)`` of recsys.ingest or recsys.pipeline.

    Bad input, a failed quality gate or a missing partition cannot be fixed by retrying:
    those fail the task at once (AirflowFailException) with the stage's own message, so
    the run stops without burning its retries; anything else (a network fault, a full
    disk) is left to Airflow's retries.
    """
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException

    from recsys import ingest, pipeline

    context = get_current_context()
    settings, day = settings_for(context), resolve_run_date(context)
    log.info("stage %s for run date %s", name, day)
    stage = getattr(ingest, name, None) or getattr(pipeline, name)
    try:
        flags = {
            "is_backfill": lambda: is_backfill(context),
            "force": lambda: bool((context.get("params") or {}).get("force_publish")),
        }
        return stage(settings, day, *args, **{flag: flags[flag]() for flag in RUN_FLAGS.get(name, ())})
    except (ValueError, LookupError, FileNotFoundError, pipeline.QualityGateError) as exc:
        raise AirflowFailException(f"{name} failed for {day}: {type(exc).__name__}: {exc}") from exc
