"""recsys.core.holdout: the hold-out and the scoring of candidates on it."""

from __future__ import annotations

import numpy as np


def test_sample_rows_is_seeded_sorted_and_keeps_small_sets_whole() -> None:
    from recsys.core.holdout import sample_rows

    rows = np.arange(100, 200)
    assert sample_rows(rows, 0, 1) is rows and sample_rows(rows, 100, 1) is rows
    picked = sample_rows(rows, 30, 7)
    assert len(picked) == 30 and len(set(picked.tolist())) == 30 and set(picked.tolist()) <= set(rows.tolist())
    assert picked.tolist() == sorted(picked.tolist()) and sample_rows(rows, 30, 7).tolist() == picked.tolist()
    assert sample_rows(rows, 30, 8).tolist() != picked.tolist()
