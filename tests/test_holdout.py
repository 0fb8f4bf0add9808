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


def test_ease_steps_aside_above_ease_max_items_and_says_so(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """The window's items are the truth's columns (training items and hold-out-only ones): one
    more than RECSYS_EASE_MAX_ITEMS and EASE is not fit, its metrics say why; at the limit it fits."""
    import logging

    import scipy.sparse as sp

    from recsys.config import Settings
    from recsys.core.grid import make_candidate
    from recsys.core.holdout import Holdout, score_candidate
    from recsys.core.lists import ItemFilters
    from tests.support import END, build_pair_events, weighted_events

    events = build_pair_events(weighted_events(), [END])[0]  # 2 users x 2 training items
    data = Holdout(events=events, rows=np.array([0, 1]), truth=sp.csr_matrix(np.array([[0, 0, 1], [1, 0, 0]])),
                   seen=sp.csr_matrix(np.array([[1, 1], [0, 1]], dtype=np.float32)),
                   filters=ItemFilters(np.array([], dtype=np.int32), np.full(2, -1, dtype=np.int32)),
                   popularity=np.zeros(2, dtype=np.float32), cold_users=0, warm_users=2)
    env = {"RECSYS_HOME": str(tmp_path), "RECSYS_EVENT_WEIGHTS": "view=1,buy=10"}
    small = Settings.from_env({**env, "RECSYS_EASE_MAX_ITEMS": "2"})
    ease = make_candidate(small, {"model": "ease", "ease_lambda": 1.0})
    with caplog.at_level(logging.WARNING, logger="recsys.core.holdout"):
        skipped = score_candidate(small, data, ease)
    assert "RECSYS_EASE_MAX_ITEMS=2" in skipped["skipped"] and "3 items" in skipped["skipped"]
    assert skipped["ndcg_at_k"] == 0.0 and "RECSYS_EASE_MAX_ITEMS" in caplog.text
    fits = score_candidate(Settings.from_env({**env, "RECSYS_EASE_MAX_ITEMS": "3"}), data, ease)
    assert "skipped" not in fits and fits["users_evaluated"] == 2
    als = make_candidate(small, {"model": "als", "factors": 2})
    assert "skipped" not in score_candidate(small, data, als)  # only EASE holds items x items
