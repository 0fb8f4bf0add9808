"""The time ranges of one run, derived from the run date and the settings."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from recsys.config import Settings


@dataclass(frozen=True)
class Window:
    """The time ranges of one run: training days, hold-out days, and the run date itself."""

    day: dt.date
    start: dt.datetime  # first instant of the window
    split: dt.datetime  # first instant of the hold-out days
    end: dt.datetime  # first instant after the run date

    @classmethod
    def of(cls, settings: Settings, day: dt.date) -> Window:
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        return cls(
            day=day,
            start=end - dt.timedelta(days=settings.window_days),
            split=end - dt.timedelta(days=settings.holdout_days),
            end=end,
        )

    @property
    def days(self) -> list[dt.date]:
        return days_between(self.start.date(), self.day)

    def sql_params(self, settings: Settings) -> dict[str, Any]:
        return {
            "start": self.start,
            "split": self.split,
            "end": self.end,
            "half_life_days": float(settings.recency_half_life_days),
        }


def days_between(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every date from ``start`` to ``end``, both included."""
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
