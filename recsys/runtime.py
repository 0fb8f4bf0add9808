"""What a task needs to know about its run: the run date, the settings with Params applied,
and whether the run is a backfill. The one place that reads the Airflow context."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Mapping

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
)


def resolve_run_date(context: Mapping[str, Any]) -> dt.date:
    """The date D whose events a run processes (its data interval is [D, D+1)).

    In order: the ``run_date`` Param; the data interval start / logical date (scheduled runs
    and backfills); for a manual or API run without a logical date, the day before it was
    triggered (the latest complete day).
    """
    params = context.get("params") or {}
    if params.get("run_date"):
        return dt.date.fromisoformat(str(params["run_date"]))
    for key in ("data_interval_start", "logical_date"):
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
