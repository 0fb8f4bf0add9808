"""recsys.core.checks: the pure part of validate (statistics, chunk plans)."""

from __future__ import annotations

import pyarrow as pa

from recsys.core.checks import (
    plan_chunks,
    trailing_mean,
    user_share_of_day,
)
from tests.support import day


def test_trailing_mean_uses_days_with_rows_and_needs_enough_of_them() -> None:
    counts = {day(1): 100, day(2): 0, day(3): 200, day(4): 300, day(6): 50}
    assert trailing_mean(counts, day(7), history_days=14, lookback=28) == (4, 162.5)
    assert trailing_mean(counts, day(7), history_days=2, lookback=28) == (2, None)  # fewer than 3 days: no judgement
    assert trailing_mean(counts, day(7), history_days=14, lookback=2) == (1, None)
    assert trailing_mean({day(1): 5, day(2): 5, day(3): 5}, day(4), 14, 28) == (3, None)  # 5 rows/day: too few to judge


def test_user_share_of_day_counts_placed_rows_on_big_days_only() -> None:
    rows = pa.table(
        {
            "user_id": ["a", "a", "a", "b", "a", "c", None],
            "dt": pa.array([day(1)] * 4 + [day(2)] * 3, pa.date32()),
            "placed": [True, True, True, True, True, True, False],
        }
    )
    assert user_share_of_day(rows, min_day_rows=2).tolist() == [0.75, 0.75, 0.75, 0.25, 0.5, 0.5, 0.0]
    assert user_share_of_day(rows, min_day_rows=3).tolist() == [0.75, 0.75, 0.75, 0.25, 0.0, 0.0, 0.0]


def test_plan_chunks_groups_consecutive_days_up_to_the_budget() -> None:
    rows = {day(3): 40, day(1): 30, day(2): 50, day(4): 250, day(5): 0, day(6): 60, day(8): 100}
    # 30+50 fit; 40 would make 120; 250 alone is above the budget; an empty day joins the next.
    assert plan_chunks(rows, 100) == [[day(1), day(2)], [day(3)], [day(4)], [day(5), day(6)], [day(8)]]
    assert plan_chunks(rows, 10_000) == [sorted(rows)]
    assert plan_chunks(rows, 1) == [[d] for d in sorted(rows)]  # every day above the budget: one each
    assert plan_chunks({}, 100) == []
