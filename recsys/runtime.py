"""What a task needs to know about its run: the run date, the settings with Params applied,
and whether the run is a backfill. The one place that reads the Airflow context."""

from __future__ import annotations

import datetime as dt
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from recsys.config import PARAM_FIELDS, Settings
from recsys.core.gate import QualityGateError

T = TypeVar("T")

log = logging.getLogger(__name__)


def resolve_run_date(context: Mapping[str, Any]) -> dt.date:
    """The date D whose events a run processes (its data interval is [D, D+1)).

    In order: the ``run_date`` Param; the logical date (scheduled runs and backfills, whose
    data interval starts there, and manual runs given one); for a manual or API run without a
    logical date, the data interval Airflow inferred (the day before it was triggered), or
    failing that the day before it was triggered (the latest complete day): so too a run
    scheduled on ``RECSYS_SOURCE_ASSET``, whose export lands after the day it holds has ended.
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
    run_after = getattr(dag_run, "run_after", None) or dt.datetime.now(dt.UTC)
    return (run_after - dt.timedelta(days=1)).date()


def utc_instant(value: str | dt.datetime) -> dt.datetime:
    """An ISO-8601 instant (``Z``, an offset, or none: UTC) or a datetime, in UTC, to the whole
    second (event ages count whole seconds). Raises ValueError naming the expected form."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO-8601 instant; expected e.g. 2026-06-01T12:00:00Z") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(int(value.timestamp()), dt.UTC)


def refresh_until(context: Mapping[str, Any] | None = None) -> dt.datetime:
    """The instant a ``recsys_refresh`` run reads events up to (UTC, whole seconds): the
    ``until`` Param (``recsys refresh --until``), else the run's data interval end (an hourly
    run of [11:00, 12:00) reads up to 12:00), else now. ``context``: the current task's."""
    if context is None:
        from airflow.sdk import get_current_context

        context = get_current_context()
    params = context.get("params") or {}
    return utc_instant(params.get("until") or context.get("data_interval_end") or dt.datetime.now(dt.UTC))


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


def run_stage(stage: Callable[..., T], *args: Any) -> T:
    """Run ``stage(settings, run_date, *args)`` for the current task's run.

    A stage that takes ``is_backfill`` or ``force`` (publishing) gets them from the run: a
    backfill run, the ``force_publish`` Param.

    Bad input, a failed quality gate or a missing partition cannot be fixed by retrying:
    those fail the task at once (AirflowFailException) with the stage's own message, so
    the run stops without burning its retries; anything else (a network fault, a full
    disk) is left to Airflow's retries.
    """
    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException

    context = get_current_context()
    settings, day = settings_for(context), resolve_run_date(context)
    name = stage.__name__
    log.info("stage %s for run date %s", name, day)
    wanted = inspect.signature(stage).parameters
    flags: dict[str, Callable[[], bool]] = {
        "is_backfill": lambda: is_backfill(context),
        "force": lambda: bool((context.get("params") or {}).get("force_publish")),
    }
    try:
        return stage(settings, day, *args, **{flag: read() for flag, read in flags.items() if flag in wanted})
    except (ValueError, LookupError, FileNotFoundError, QualityGateError) as exc:
        raise AirflowFailException(f"{name} failed for {day}: {type(exc).__name__}: {exc}") from exc


def record_asset_event(asset: Any, result: Mapping[str, Any], keys: Sequence[str]) -> None:
    """Put ``keys`` of a stage's ``result`` into the ``extra`` of the event the current task
    emits for its outlet ``asset`` (Airflow records the event when the task succeeds)."""
    from airflow.sdk import get_current_context

    get_current_context()["outlet_events"][asset].extra = {key: result[key] for key in keys}


def triggering_extras() -> list[dict[str, Any]]:
    """The ``extra`` of every asset event that triggered the current run (for a DAG scheduled on
    an Asset: the serving table's carries the run date and model version), each logged, with the
    asset's URI and the DAG that emitted it."""
    from airflow.sdk import get_current_context

    found: list[dict[str, Any]] = []
    for asset, events in (get_current_context().get("triggering_asset_events") or {}).items():
        for event in events:
            extra = dict(event.extra or {})
            log.info("asset %s updated by %s at %s: %s", getattr(asset, "uri", asset), event.source_dag_id,
                     event.timestamp, extra)
            found.append({"uri": getattr(asset, "uri", str(asset)), "source_dag_id": event.source_dag_id, **extra})
    return found
