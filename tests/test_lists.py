"""recsys.core.lists: the served lists (filters, seen items, category cap) and their long tables."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from recsys.core.lists import lists_table
from recsys.core.model import (
    Factors,
    top_k_items,
)
from tests.support import END, build_pair_events, weighted_events


def test_lists_table_is_long_and_skips_padding() -> None:
    ids = np.array([[1, 0], [1, -1]], dtype=np.int32)
    scores = np.array([[0.9, 0.5], [0.7, -np.inf]], dtype=np.float32)
    table = lists_table(pa.array(["u1", "u2"]), pa.array(["a", "b"]), ids, scores)
    assert table.to_pylist() == [
        {"user_id": "u1", "rank": 1, "item_id": "b", "score": np.float32(0.9)},
        {"user_id": "u1", "rank": 2, "item_id": "a", "score": 0.5},
        {"user_id": "u2", "rank": 1, "item_id": "b", "score": np.float32(0.7)},
    ]


def test_seen_matrix_excludes_everything_touched_or_only_purchases(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from recsys.config import Settings
    from recsys.core.lists import seen_matrix

    events = build_pair_events(weighted_events(), [END])[0]  # u1: a (view, buy), b (view); u2: b (buy)
    everything = Settings.from_env({"RECSYS_HOME": str(tmp_path), "RECSYS_EVENT_WEIGHTS": "view=1,buy=10"})
    assert seen_matrix(everything, events).toarray().tolist() == [[1, 1], [0, 1]]
    bought = Settings.from_env({"RECSYS_HOME": str(tmp_path), "RECSYS_EVENT_WEIGHTS": "view=1,buy=10",
                                "RECSYS_EXCLUDE_SEEN": "purchased", "RECSYS_PURCHASE_EVENT_TYPES": "buy"})
    assert seen_matrix(bought, events).toarray().tolist() == [[1, 0], [0, 1]]


def test_batched_lists_equal_one_batch_on_a_tiny_matrix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What recommend does batch by batch (top-k, filters, category cap) gives the lists of one batch."""
    from recsys.config import Settings
    from recsys.core.lists import ItemFilters, serve_lists

    rng = np.random.default_rng(3)
    items = rng.normal(size=(12, 3)).astype(np.float32)
    users = rng.normal(size=(7, 3)).astype(np.float32)
    dense = (rng.random((7, 12)) < 0.4).astype(np.float32)
    dense[6] = 1.0  # a user who has seen everything gets an empty (padded) list
    seen = sp.csr_matrix(dense)
    filters = ItemFilters(exclude=np.array([0, 5], dtype=np.int32), categories=np.arange(12, dtype=np.int32) % 3)
    settings = Settings.from_env({"RECSYS_HOME": str(tmp_path), "RECSYS_K": "4", "RECSYS_MAX_PER_CATEGORY": "2"})
    model = Factors(users, items)
    whole_ids, whole_scores = serve_lists(settings, model, np.arange(7), None, seen, filters)
    for batch in (1, 2, 3):
        parts = [serve_lists(settings, model, np.arange(i, min(i + batch, 7)), None, seen[i : i + batch], filters)
                 for i in range(0, 7, batch)]
        # BLAS may round a dot product differently with another batch shape: ids must match exactly.
        assert np.concatenate([ids for ids, _ in parts]).tolist() == whole_ids.tolist()
        assert np.allclose(np.concatenate([s for _, s in parts]), whole_scores, rtol=1e-5)
    assert whole_ids[6].tolist() == [-1, -1, -1, -1]
    assert top_k_items(items, users, seen, 4, None, batch_users=2)[0].tolist() == top_k_items(items, users, seen, 4, None)[0].tolist()


@pytest.mark.parametrize("family", ["als", "ease", "rp3beta", "itemknn"])
def test_every_family_is_served_with_seen_inactive_and_category_filters(tmp_path, family: str) -> None:  # type: ignore[no-untyped-def]
    """serve_lists through one path for factor and item models: each list is the user's best
    scores with seen and inactive items out and at most two items of a category, best first."""
    from recsys.config import Settings
    from recsys.core.families import ItemModel
    from recsys.core.lists import ItemFilters, serve_lists
    from recsys.core.model import ModelParams, train_model

    rng = np.random.default_rng(5)
    matrix = sp.csr_matrix(((rng.random((50, 16)) < 0.3) * rng.integers(1, 5, size=(50, 16))).astype(np.float32))
    model = train_model(matrix, ModelParams(model=family, factors=4, iterations=5, ease_lambda=2.0, neighbours=8))
    filters = ItemFilters(exclude=np.array([0, 5], dtype=np.int32), categories=np.arange(16, dtype=np.int32) % 3)
    settings = Settings.from_env({"RECSYS_HOME": str(tmp_path), "RECSYS_K": "4", "RECSYS_MAX_PER_CATEGORY": "2"})
    rows = np.array([9, 2, 30, 41])
    seen = matrix[rows]
    ids, scores = serve_lists(settings, model, rows, matrix, seen, filters)
    if isinstance(model, ItemModel):
        dense = model.score(matrix[rows])
    else:
        dense = model.user_factors[rows] @ model.item_factors.T
    for i in range(len(rows)):
        allowed = [j for j in range(16) if j not in (0, 5) and seen[i, j] == 0]
        expected: list[int] = []
        for j in sorted(allowed, key=lambda j: (-dense[i, j], j)):
            if sum(filters.categories[e] == filters.categories[j] for e in expected) < 2:
                expected.append(j)
        assert ids[i].tolist() == expected[:4], (family, i)
        assert scores[i] == pytest.approx(dense[i, expected[:4]], rel=1e-4, abs=1e-6)
