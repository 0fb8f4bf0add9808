"""recsys.io.artifacts: what one task leaves for the next (model, pair events, hold-out)."""

from __future__ import annotations

import numpy as np


def test_saved_factors_load_with_their_family(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from recsys.core.model import Factors
    from recsys.io.artifacts import load_model, save_model

    factors = Factors(np.ones((2, 3), np.float32), np.arange(12, dtype=np.float32).reshape(4, 3), "bpr")
    save_model(factors, tmp_path / "model.npz")
    loaded = load_model(tmp_path / "model.npz")
    assert loaded.model == "bpr" and np.array_equal(loaded.item_factors, factors.item_factors)
    assert loaded.item_embeddings.tolist() == [[0, 1], [3, 4], [6, 7], [9, 10]]
