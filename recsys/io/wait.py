"""Waiting for the run date's events to land, in Airflow's triggerer.

:class:`DayLandedTrigger` checks the source every ``RECSYS_WAIT_POKE_SECONDS`` with
:func:`recsys.io.source.check_day` (the one rule of a complete day) until the day is complete or
its deadline passes, so a night whose export lands late waits for it without holding a worker
slot. The sensor that defers to it is ``recsys.stages.wait_for_data.WaitForData``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from recsys.config import Settings
from recsys.io.source import DayStatus, check_day, describe_rule, describe_source
from recsys.io.sources.files import SourceError

# What the triggerer needs to re-open the source: the settings that name and read it, and the rule.
SOURCE_FIELDS = (
    "source", "source_columns", "source_table", "source_query", "event_weights", "complete_after", "done_marker",
)
COMPLETE, TIMED_OUT, UNREADABLE = "complete", "timed_out", "unreadable"


def format_duration(seconds: float) -> str:
    """``21600`` -> ``6h00m``; under a minute, ``42s``."""
    minutes = int(seconds // 60)
    return f"{seconds:.0f}s" if minutes == 0 else f"{minutes // 60}h{minutes % 60:02d}m"


def not_landed_message(settings: Settings, status: DayStatus, waited: float, timeout: float) -> str:
    """Why the run stops at wait_for_data: which source, which day, the newest event, the rule, the fix."""
    return (
        f"{describe_source(settings)}: the run date {status.day} has not fully landed after waiting "
        f"{format_duration(waited)} (RECSYS_WAIT_TIMEOUT={format_duration(timeout)}): "
        f"{status.describe()}, and {describe_rule(settings, status.day)}. Check that the day's export or "
        "replication has run; set RECSYS_WAIT_TIMEOUT to wait longer or RECSYS_COMPLETE_AFTER to accept an "
        "earlier last event (00:00 takes the day as it is), or mark wait_for_data successful to run it as it is"
    )


class DayLandedTrigger(BaseTrigger):
    """Fires once the day is complete, once the deadline passes, or once the source cannot be read.

    The event's payload is ``{"status": complete | timed_out | unreadable, "message": str,
    "waited_seconds": float}``; the check, blocking I/O (DuckDB over files, a PostgreSQL query),
    runs in a thread so the triggerer's loop never waits on it.
    """

    def __init__(
        self, source_settings: dict[str, Any], day: str, poke_seconds: float, deadline: str, started: str
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Airflow's BaseTrigger is not annotated
        self.source_settings = source_settings
        self.day = day
        self.poke_seconds = poke_seconds
        self.deadline = deadline
        self.started = started

    @classmethod
    def for_day(cls, settings: Settings, day: dt.date, now: dt.datetime) -> DayLandedTrigger:
        """The trigger that waits for ``day`` from ``now`` until ``now`` + RECSYS_WAIT_TIMEOUT."""
        return cls(
            source_settings=settings.model_dump(include=set(SOURCE_FIELDS), mode="json"),
            day=day.isoformat(),
            poke_seconds=float(settings.wait_poke_seconds),
            deadline=(now + dt.timedelta(seconds=settings.wait_timeout)).isoformat(),
            started=now.isoformat(),
        )

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "source_settings": self.source_settings,
                "day": self.day,
                "poke_seconds": self.poke_seconds,
                "deadline": self.deadline,
                "started": self.started,
            },
        )

    def settings(self) -> Settings:
        """The worker's source settings over defaults (not the triggerer's own RECSYS_* variables)."""
        return Settings.from_env({}).with_overrides(self.source_settings)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        settings = self.settings()
        day = dt.date.fromisoformat(self.day)
        started, deadline = dt.datetime.fromisoformat(self.started), dt.datetime.fromisoformat(self.deadline)
        checks = 0
        while True:
            try:
                status = await asyncio.to_thread(check_day, settings, day)
            except SourceError as exc:
                yield self._event(UNREADABLE, str(exc), started)
                return
            checks += 1
            now = dt.datetime.now(dt.UTC)
            if status.complete:
                yield self._event(COMPLETE, f"{day} has landed: {status.describe()}", started)
                return
            left = (deadline - now).total_seconds()
            if left <= 0:
                waited, timeout = (now - started).total_seconds(), (deadline - started).total_seconds()
                yield self._event(TIMED_OUT, not_landed_message(settings, status, waited, timeout), started)
                return
            self.log.info(
                "waiting for %s in %s (check %d): %s, not yet complete; next check in %s, %s left",
                day, describe_source(settings), checks, status.describe(),
                format_duration(min(self.poke_seconds, left)), format_duration(left),
            )
            await asyncio.sleep(min(self.poke_seconds, left))

    def _event(self, status: str, message: str, started: dt.datetime) -> TriggerEvent:
        waited = (dt.datetime.now(dt.UTC) - started).total_seconds()
        payload = {"status": status, "message": message, "waited_seconds": round(waited, 1)}
        return TriggerEvent(payload)  # type: ignore[no-untyped-call]  # Airflow's TriggerEvent is not annotated
