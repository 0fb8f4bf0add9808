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


def test_every_family_saves_and_loads_what_it_scores_with(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """EASE's dense B (float32) and the sparse W of kNN and RP3beta come back as they were."""
    import scipy.sparse as sp

    from recsys.core.families import ItemModel
    from recsys.core.model import ModelParams, train_model
    from recsys.io.artifacts import load_model, save_model

    rng = np.random.default_rng(2)
    matrix = sp.csr_matrix((rng.random((30, 10)) < 0.3).astype(np.float32))
    for params in (ModelParams(model="ease", ease_lambda=5.0), ModelParams(model="rp3beta", neighbours=4),
                   ModelParams(model="itemknn", similarity="cosine", neighbours=4)):
        model = train_model(matrix, params)
        assert isinstance(model, ItemModel)
        path = tmp_path / f"{params.model}.npz"
        save_model(model, path)
        loaded = load_model(path)
        assert isinstance(loaded, ItemModel) and loaded.model == params.model
        if params.model == "ease":
            assert isinstance(loaded.item_matrix, np.ndarray) and loaded.item_matrix.dtype == np.float32
            assert np.array_equal(loaded.item_matrix, model.item_matrix)
        else:
            assert sp.issparse(loaded.item_matrix) and loaded.item_matrix.shape == (10, 10)
            assert (loaded.item_matrix != model.item_matrix).nnz == 0 and loaded.item_matrix.nnz <= 40
        assert np.array_equal(loaded.score(matrix), model.score(matrix))
