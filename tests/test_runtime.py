"""recsys.runtime: the run date and kind of run a task reads from its Airflow context."""

from __future__ import annotations

import datetime as dt

from recsys.runtime import is_backfill, resolve_run_date


class _Run:
    def __init__(self, run_type: str, run_after: dt.datetime) -> None:
        self.run_type = run_type
        self.run_after = run_after



def test_resolve_run_date_in_every_kind_of_run() -> None:
    midnight = dt.datetime(2026, 3, 4, tzinfo=dt.UTC)
    assert resolve_run_date({"data_interval_start": midnight, "logical_date": midnight}) == dt.date(2026, 3, 4)
    manual = _Run("manual", dt.datetime(2026, 3, 9, 15, tzinfo=dt.UTC))
    assert resolve_run_date({"logical_date": None, "data_interval_start": None, "dag_run": manual}) == dt.date(2026, 3, 8)
    assert resolve_run_date({"params": {"run_date": "2026-01-02"}, "logical_date": midnight}) == dt.date(2026, 1, 2)
    # A manual run for 03-04 under the nightly timetable gets the interval [03-03, 03-04): it asked for 03-04.
    day_before = midnight - dt.timedelta(days=1)
    assert resolve_run_date({"data_interval_start": day_before, "logical_date": midnight}) == dt.date(2026, 3, 4)
    # Without a logical date, the interval Airflow inferred: the day before the trigger.
    assert resolve_run_date({"logical_date": None, "data_interval_start": day_before, "dag_run": manual}) == dt.date(2026, 3, 3)
    # Scheduled on RECSYS_SOURCE_ASSET: no logical date or interval; the export landed at 00:40, for the 3rd.
    landed = _Run("asset_triggered", dt.datetime(2026, 3, 4, 0, 40, tzinfo=dt.UTC))
    assert resolve_run_date({"logical_date": None, "data_interval_start": None, "dag_run": landed}) == dt.date(2026, 3, 3)
    assert is_backfill({"dag_run": _Run("backfill", midnight)})
    assert not is_backfill({"dag_run": manual})
