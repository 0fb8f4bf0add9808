"""The implicit wrapper on tiny matrices with known answers."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from recsys.model import ALSParams, build_user_item_matrix, recommend_als, recommend_popular, top_k_items, train_als
from recsys.ingest import _chunks
from recsys.pipeline import _lists_table
from recsys.runtime import is_backfill, resolve_run_date


def test_build_user_item_matrix_sorts_ids_and_drops_unknown_rows() -> None:
    table = pa.table({"user_id": ["b", "a", "b", "zz"], "item_id": ["y", "x", "x", "x"], "confidence": [2.0, 1.0, 3.0, 9.0]})
    m = build_user_item_matrix(table)
    assert m.user_ids.to_pylist() == ["a", "b", "zz"] and m.item_ids.to_pylist() == ["x", "y"]
    assert m.matrix.toarray().tolist() == [[1.0, 0.0], [3.0, 2.0], [9.0, 0.0]]
    fixed = build_user_item_matrix(table, user_ids=pa.array(["b", "a"]), item_ids=pa.array(["x", "y"]))
    assert fixed.matrix.toarray().tolist() == [[3.0, 2.0], [1.0, 0.0]]  # "zz" is not a known user


def test_top_k_filters_seen_and_excluded_and_pads_short_lists() -> None:
    items = np.array([[5.0], [4.0], [3.0], [2.0], [1.0]], dtype=np.float32)
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=np.float32))
    ids, scores = top_k_items(items, np.ones((2, 1), dtype=np.float32), seen, 3, np.array([2]))
    assert ids.tolist() == [[1, 3, 4], [4, -1, -1]]
    assert scores[0].tolist() == [4.0, 2.0, 1.0] and np.isneginf(scores[1, 1:]).all()


def test_popularity_baseline_ranks_by_popularity_without_seen_items() -> None:
    seen = sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 0]], dtype=np.float32))
    ids, _ = recommend_popular(np.array([1.0, 3.0, 2.0]), seen, 2, None)
    assert ids.tolist() == [[2, 0], [1, 2]]


def test_als_learns_two_blocks() -> None:
    """Users who like items 0-4 get the unseen items of that block, not of the other one."""
    rng = np.random.default_rng(0)
    dense = np.zeros((40, 10), dtype=np.float32)
    for u in range(40):
        block = 0 if u < 20 else 5
        dense[u, block + rng.choice(5, size=3, replace=False)] = 1.0
    matrix = sp.csr_matrix(dense)
    model = train_als(matrix, ALSParams(factors=2, regularization=0.1, alpha=5.0, iterations=20))
    ids, _ = recommend_als(model.user_factors, model.item_factors, matrix, 2, None)
    for u in range(40):
        block = range(0, 5) if u < 20 else range(5, 10)
        assert set(ids[u].tolist()) <= set(block), (u, ids[u])
        assert not set(ids[u].tolist()) & set(np.flatnonzero(dense[u]).tolist())


def test_lists_table_is_long_and_skips_padding() -> None:
    ids = np.array([[1, 0], [1, -1]], dtype=np.int32)
    scores = np.array([[0.9, 0.5], [0.7, -np.inf]], dtype=np.float32)
    table = _lists_table(pa.array(["u1", "u2"]), pa.array(["a", "b"]), ids, scores)
    assert table.to_pylist() == [
        {"user_id": "u1", "rank": 1, "item_id": "b", "score": np.float32(0.9)},
        {"user_id": "u1", "rank": 2, "item_id": "a", "score": 0.5},
        {"user_id": "u2", "rank": 1, "item_id": "b", "score": np.float32(0.7)},
    ]


def test_chunks_split_on_gaps_and_length() -> None:
    d = [dt.date(2026, 1, i) for i in (1, 2, 3, 5, 6)]
    assert _chunks(d, max_days=2) == [[d[0], d[1]], [d[2]], [d[3], d[4]]]


class _Run:
    def __init__(self, run_type: str, run_after: dt.datetime) -> None:
        self.run_type = run_type
        self.run_after = run_after


def test_resolve_run_date_in_every_kind_of_run() -> None:
    midnight = dt.datetime(2026, 3, 4, tzinfo=dt.timezone.utc)
    assert resolve_run_date({"data_interval_start": midnight, "logical_date": midnight}) == dt.date(2026, 3, 4)
    manual = _Run("manual", dt.datetime(2026, 3, 9, 15, tzinfo=dt.timezone.utc))
    assert resolve_run_date({"logical_date": None, "data_interval_start": None, "dag_run": manual}) == dt.date(2026, 3, 8)
    assert resolve_run_date({"params": {"run_date": "2026-01-02"}, "logical_date": midnight}) == dt.date(2026, 1, 2)
    assert is_backfill({"dag_run": _Run("backfill", midnight)})
    assert not is_backfill({"dag_run": manual})


def test_tuning_candidates_are_the_grid_product_over_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from recsys.config import ConfigError, Settings
    from recsys.pipeline import tuning_candidates

    s = Settings.from_env({"RECSYS_HOME": str(tmp_path), "RECSYS_TUNING_GRID": "factors=8,16;alpha=1.5", "RECSYS_ITERATIONS": "3"})
    assert tuning_candidates(s) == [
        {"factors": 8, "regularization": 0.05, "alpha": 1.5, "iterations": 3, "random_state": 42},
        {"factors": 16, "regularization": 0.05, "alpha": 1.5, "iterations": 3, "random_state": 42},
    ]
    none = Settings.from_env({"RECSYS_HOME": str(tmp_path), "RECSYS_TUNING_GRID": "", "RECSYS_FACTORS": "12"})
    assert [c["factors"] for c in tuning_candidates(none)] == [12]
    with pytest.raises(ConfigError, match="names among"):
        Settings.from_env({"RECSYS_TUNING_GRID": "depth=3"})
    with pytest.raises(ConfigError, match="must be numbers"):
        Settings.from_env({"RECSYS_TUNING_GRID": "factors=lots"})
