"""The wait_for_data task: the run date's events must have fully landed before extract reads them.

:class:`WaitForData` checks the source once on the worker (:func:`recsys.io.source.check_day`).
A complete day, as every backfilled or past day is, goes straight on: nothing is deferred.
Otherwise it defers to :class:`recsys.io.wait.DayLandedTrigger`, which re-checks in the triggerer
every ``RECSYS_WAIT_POKE_SECONDS`` (no worker slot held) until the day is complete or
``RECSYS_WAIT_TIMEOUT`` passes; then the task fails without retries (AirflowSensorTimeout) with a
message naming the source, the day, the newest event and the rule, and the DAG's failure alert fires.

A source that cannot be read is not a late source: the run goes on to extract, which fails
naming the broken file or connection.

Imported when the DAG file is parsed: only Airflow's SDK here, the rest inside the task.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import BaseSensorOperator


class WaitForData(BaseSensorOperator):
    """Succeeds once the run date is complete in the source; returns {"day", "deferred",
    "waited_seconds", "evidence"}. Raises AirflowSensorTimeout past RECSYS_WAIT_TIMEOUT."""

    ui_color = "#e8f0f7"

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSensorTimeout

        from recsys.io.source import check_day, describe_source
        from recsys.io.sources.files import SourceError
        from recsys.io.wait import DayLandedTrigger, format_duration, not_landed_message
        from recsys.runtime import resolve_run_date, settings_for

        settings, day = settings_for(context), resolve_run_date(context)
        try:
            status = check_day(settings, day)
        except SourceError as exc:
            self.log.warning("cannot tell whether %s has landed (%s); extract will report it", day, exc)
            return self._result(day, deferred=False, waited=0.0, evidence=f"unreadable: {exc}")
        if status.complete:
            self.log.info("%s has landed in %s: %s; no wait", day, describe_source(settings), status.describe())
            return self._result(day, deferred=False, waited=0.0, evidence=status.describe())
        if settings.wait_timeout <= 0:
            raise AirflowSensorTimeout(not_landed_message(settings, status, 0.0, 0.0))
        self.log.info(
            "%s has not fully landed in %s (%s): waiting up to %s, checking every %ds in the triggerer",
            day, describe_source(settings), status.describe(), format_duration(settings.wait_timeout),
            settings.wait_poke_seconds,
        )
        self.defer(
            trigger=DayLandedTrigger.for_day(settings, day, dt.datetime.now(dt.UTC)),
            method_name="execute_complete",
            # The trigger ends itself at its deadline; this only bounds a trigger that hangs.
            timeout=dt.timedelta(seconds=settings.wait_timeout + 2 * settings.wait_poke_seconds + 600),
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Resumed by the trigger's event: returns the result, or raises AirflowSensorTimeout past the deadline."""
        from airflow.sdk.exceptions import AirflowSensorTimeout

        from recsys.io.wait import TIMED_OUT, UNREADABLE
        from recsys.runtime import resolve_run_date

        day = resolve_run_date(context)
        if event["status"] == TIMED_OUT:
            raise AirflowSensorTimeout(event["message"])
        if event["status"] == UNREADABLE:
            self.log.warning("cannot tell whether %s has landed (%s); extract will report it", day, event["message"])
        else:
            self.log.info("%s after %.0f s", event["message"], event["waited_seconds"])
        return self._result(day, deferred=True, waited=event["waited_seconds"], evidence=event["message"])

    @staticmethod
    def _result(day: dt.date, deferred: bool, waited: float, evidence: str) -> dict[str, Any]:
        return {"day": day.isoformat(), "deferred": deferred, "waited_seconds": waited, "evidence": evidence}
