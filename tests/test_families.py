"""recsys.core.families: EASE and RP3beta on tiny matrices with known answers, and every item
family (EASE, RP3beta, item-kNN) scoring users from their history rows (fold-in)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.core.families import ItemModel, fit_ease, fit_rp3beta
from recsys.core.model import ModelParams, recommend_users, similar_items, train_model

ITEM_PARAMS = [
    ModelParams(model="ease", ease_lambda=3.0),
    ModelParams(model="rp3beta", rp3_alpha=0.8, rp3_beta=0.3, neighbours=5),
    ModelParams(model="itemknn", similarity="cosine", neighbours=5),
    ModelParams(model="itemknn", similarity="bm25", neighbours=5),
    ModelParams(model="itemknn", similarity="tfidf", neighbours=5),
]


def random_history(users: int = 30, items: int = 9, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((users, items)) < 0.35) * rng.integers(1, 20, size=(users, items))
    return sp.csr_matrix(dense.astype(np.float32))


def test_ease_equals_the_closed_form_solved_densely() -> None:
    """B = I - P diag(1/diag P), P = (X'X + λI)^-1 on the binary matrix; the weights are ignored."""
    matrix = random_history()
    x = (matrix.toarray() > 0).astype(np.float64)
    p = np.linalg.inv(x.T @ x + 3.0 * np.eye(9))
    expected = np.eye(9) - p / np.diag(p)[None, :]
    got = fit_ease(matrix, 3.0)
    assert got.dtype == np.float32 and got.shape == (9, 9)
    assert np.allclose(got, expected, atol=1e-5) and not np.diag(got).any()
    assert not np.allclose(fit_ease(matrix, 30.0), expected, atol=1e-3)  # λ matters
    with pytest.raises(ValueError, match="ease_lambda must be more than 0"):
        fit_ease(matrix, 0.0)


def test_ease_builds_and_inverts_by_blocks_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    import recsys.core.families as families

    matrix = random_history(seed=4)
    whole = fit_ease(matrix, 2.0)
    monkeypatch.setattr(families, "BLOCK_ENTRIES", 20)  # two rows a block
    assert np.allclose(fit_ease(matrix, 2.0), whole, atol=1e-6)


def test_rp3beta_on_a_hand_worked_graph() -> None:
    """Users u0 {i0, i1}, u1 {i1, i2}, u2 {i0, i2, i3}. With alpha 1, the walk i -> u -> j is
    sum over u of 1/deg(i) * 1/deg(u); beta 1 divides column j by deg(j) = (2, 2, 2, 1):
    row i0 = (., 1/4, 1/6, 1/6) / deg = (., 1/8, 1/12, 1/6); row i1 = (1/8, ., 1/8, 0);
    row i2 = (1/12, 1/8, ., 1/6); row i3 = (1/6, 0, 1/6, .). Two neighbours a row keep
    the largest: i0 loses i2 and i2 loses i0."""
    x = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1]], dtype=np.float32))
    w = fit_rp3beta(x, 1.0, 1.0, 2).toarray()
    assert w == pytest.approx(np.array(
        [[0, 1 / 8, 0, 1 / 6], [1 / 8, 0, 1 / 8, 0], [0, 1 / 8, 0, 1 / 6], [1 / 6, 0, 1 / 6, 0]]), abs=1e-7)
    full = fit_rp3beta(x, 1.0, 1.0, 10).toarray()
    assert full[0, 2] == pytest.approx(1 / 12) and full[2, 0] == pytest.approx(1 / 12)
    # beta 0, alpha 2: each transition squared. i3 -> u2 (1) -> i0 (1/9); i0 -> u0 (1/4) -> i1 (1/4): 1/16.
    squared = fit_rp3beta(x, 2.0, 0.0, 10).toarray()
    assert squared[3, 0] == pytest.approx(1 / 9) and squared[0, 1] == pytest.approx(1 / 16)
    assert squared[0, 3] == pytest.approx(1 / 4 * 1 / 9)
    # u0 = {i0, i1} scores (row i0 + row i1) = (1/8, 1/8, 1/8, 1/6): i3, then i2.
    ids, scores = recommend_users(ItemModel(sp.csr_matrix(w), "rp3beta"), np.array([0]), x, x[[0]], 2, None)
    assert ids.tolist() == [[3, 2]] and scores[0] == pytest.approx([1 / 6, 1 / 8])


@pytest.mark.parametrize("params", ITEM_PARAMS, ids=lambda p: f"{p.model}-{p.similarity}")
def test_scoring_history_rows_equals_the_training_rows_scores(params: ModelParams) -> None:
    """Fold-in: a block of users scored from their history rows, in any order and with or
    without the rest of the matrix, gets the scores the model gives them as training rows
    (x @ item_matrix over the binary matrix it was fit on)."""
    matrix = random_history(seed=2)
    model = train_model(matrix, params)
    assert isinstance(model, ItemModel) and model.model == params.model
    binary = (matrix.toarray() > 0).astype(np.float64)
    item_matrix = model.item_matrix if isinstance(model.item_matrix, np.ndarray) else model.item_matrix.toarray()
    training = binary @ item_matrix
    rows = np.array([7, 0, 21, 3])
    assert np.allclose(model.score(matrix[rows]), training[rows], atol=1e-5)
    # A user the model never saw: the history alone decides.
    stranger = sp.csr_matrix(binary[[5]] * 3)
    assert np.allclose(model.score(stranger), training[[5]], atol=1e-5)
    if params.model == "ease":
        p = np.linalg.inv(binary.T @ binary + 3.0 * np.eye(9))
        assert np.allclose(model.score(matrix), binary @ (np.eye(9) - p / np.diag(p)[None, :]), atol=1e-4)


@pytest.mark.parametrize("params", ITEM_PARAMS, ids=lambda p: f"{p.model}-{p.similarity}")
def test_similar_items_of_an_item_model_are_its_neighbour_rows(params: ModelParams) -> None:
    """item# lists: EASE's columns of B, kNN's and RP3beta's rows of W; never the item itself
    nor an excluded item; a neighbourhood model lists only the items a row links."""
    model = train_model(random_history(seed=3), params)
    assert isinstance(model, ItemModel)
    ids, scores = similar_items(model, 3, np.array([4]))
    neighbours = model.item_matrix.T if params.model == "ease" else model.item_matrix
    dense = neighbours if isinstance(neighbours, np.ndarray) else neighbours.toarray()
    for item in range(9):
        listed = ids[item][ids[item] >= 0]
        assert item not in listed and 4 not in listed
        candidates = [j for j in range(9) if j not in (item, 4) and (params.model == "ease" or dense[item, j] != 0)]
        best = sorted(candidates, key=lambda j: (-dense[item, j], j))[:3]
        assert listed.tolist() == best
        assert scores[item, : len(best)] == pytest.approx(dense[item, best], abs=1e-6)


def test_sparse_top_k_lists_each_rows_best_stored_entries() -> None:
    """The item# lists of a neighbourhood model come from its stored entries alone: per row the
    k best, ties by the lower item (also at the k-th place, where the dense top-k's partition
    may take either), never the row's own item nor an excluded one; a short row is padded."""
    import scipy.sparse as sp

    from recsys.core.families import sparse_top_k

    rng = np.random.default_rng(4)
    dense = np.where(rng.random((60, 60)) < 0.15, rng.integers(-3, 4, (60, 60)).astype(np.float32), 0.0)
    dense[5] = 0.0  # a row that links nothing: all padding
    matrix = sp.csr_matrix(dense)
    for k, exclude in ((4, [1, 7]), (80, [])):
        ids, scores = sparse_top_k(matrix, k, np.array(exclude, dtype=np.int64))
        for i in range(60):
            linked = [j for j in range(60) if dense[i, j] != 0 and j != i and j not in exclude]
            best = sorted(linked, key=lambda j: (-dense[i, j], j))[:k]
            assert ids[i].tolist() == best + [-1] * (k - len(best))
            assert scores[i, : len(best)].tolist() == [dense[i, j] for j in best]
            assert np.isneginf(scores[i, len(best):]).all()
    assert (sparse_top_k(matrix, 4, None)[0][5] == -1).all()


def test_a_sparse_item_model_ranks_only_the_items_a_users_history_links_to() -> None:
    """RP3beta and item-kNN lists come from the sparse product of the history row and W: the
    linked items, best first (ties: the lower item), never a seen or excluded one; a user
    whose history links to fewer than k such items gets the rest from the most touched items
    (score 0), unseen and not excluded, while there are any."""
    import scipy.sparse as sp

    from recsys.core.families import binary

    history = random_history(seed=5)
    model = train_model(history, ModelParams(model="rp3beta", rp3_alpha=0.8, rp3_beta=0.3, neighbours=2))
    assert isinstance(model, ItemModel) and sp.issparse(model.item_matrix)
    rows = np.arange(history.shape[0])
    seen = history[rows]
    product = (binary(history) @ model.item_matrix).toarray()
    for k in (2, 8):
        ids, scores = recommend_users(model, rows, history, seen, k, np.array([4]))
        touched = np.bincount(history.indices, minlength=9)
        filled = 0
        for user in rows:
            linked = [j for j in range(9) if product[user, j] > 0 and seen[user, j] == 0 and j != 4]
            best = sorted(linked, key=lambda j: (-product[user, j], j))[:k]
            rest = sorted((j for j in range(9) if j not in best and seen[user, j] == 0 and j != 4),
                          key=lambda j: (-touched[j], j))[: k - len(best)]
            filled += len(rest)
            assert ids[user].tolist() == best + rest + [-1] * (k - len(best) - len(rest))
            assert scores[user, : len(best)] == pytest.approx(product[user, best], rel=1e-5)
            assert (scores[user, len(best) : len(best) + len(rest)] == 0).all()
        assert filled > 0 or k == 2  # with two neighbours a row, some histories link to fewer than 8 new items
