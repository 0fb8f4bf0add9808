"""The implicit wrapper on tiny matrices with known answers."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from recsys.core.model import (
    ModelParams,
    build_user_item_matrix,
    recommend_factors,
    top_k_items,
    train_model,
)
from tests.support import END, build_pair_events, recommend_popular, weighted_events


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
    model = train_model(matrix, ModelParams(factors=2, regularization=0.1, alpha=5.0, iterations=20))
    ids, _ = recommend_factors(model.user_factors, model.item_factors, matrix, 2, None)
    for u in range(40):
        block = range(5) if u < 20 else range(5, 10)
        assert set(ids[u].tolist()) <= set(block), (u, ids[u])
        assert not set(ids[u].tolist()) & set(np.flatnonzero(dense[u]).tolist())


def test_confidence_matrix_sums_weights_times_decayed_events() -> None:
    from recsys.core.model import confidence_matrix

    events = build_pair_events(weighted_events(), [END])[0]
    assert events.user_ids.to_pylist() == ["u1", "u2"] and events.item_ids.to_pylist() == ["a", "b"]
    assert events.event_types == ["buy", "view"] and len(events.indices) == 3  # pairs (u1,a), (u1,b), (u2,b)
    assert events.ages.tolist() == [0.5, 7.0, 14.0, 21.0, 7.0]  # by pair, then type, then age
    assert events.counts.tolist() == [1, 2, 1, 1] and events.pair.tolist() == [0, 0, 1, 2]
    assert events.indptr.tolist() == [0, 2, 3] and events.indices.tolist() == [0, 1, 1]
    plain = confidence_matrix(events, {"view": 1.0, "buy": 10.0}, 0.0)
    assert plain.matrix.toarray().tolist() == [[12.0, 1.0], [0.0, 10.0]]
    decayed = confidence_matrix(events, {"view": 1.0, "buy": 10.0}, 7.0).matrix.toarray()
    # u1,a: 10 * 0.5^(0.5/7) + 1 * (0.5^1 + 0.5^2); u1,b: 0.5^3; u2,b: 10 * 0.5^1
    assert decayed[0] == pytest.approx([10 * 0.5 ** (0.5 / 7) + 0.75, 0.125])
    assert decayed[1].tolist() == [0.0, 5.0]
    # A weight of 0 (or a type left out) drops the pairs it alone made: u1 never bought b.
    bought = confidence_matrix(events, {"buy": 2.0}, 0.0).matrix
    assert bought.toarray().tolist() == [[2.0, 0.0], [0.0, 2.0]] and bought.nnz == 2


def test_pair_events_of_the_training_days_are_aged_at_their_own_end() -> None:
    """The same events cut at an earlier end: only what happened before it, aged at it, with
    rows and columns of the ids that remain."""

    split = END - dt.timedelta(days=7)
    train = build_pair_events(weighted_events(), [split])[0]
    assert train.user_ids.to_pylist() == ["u1"] and train.item_ids.to_pylist() == ["a", "b"]
    assert train.ages.tolist() == [7.0, 14.0] and train.counts.tolist() == [1, 1]  # the two at the split are out
    assert train.indptr.tolist() == [0, 2]
    empty = build_pair_events(weighted_events(), [END - dt.timedelta(days=30)])[0]
    assert empty.shape == (0, 0) and len(empty.ages) == 0 and empty.indptr.tolist() == [0]


def test_several_ends_at_once_equal_each_end_alone() -> None:

    ends = [END, END - dt.timedelta(days=7), END - dt.timedelta(days=10)]
    together = build_pair_events(weighted_events(), ends)
    for end, events in zip(ends, together):
        alone = build_pair_events(weighted_events(), [end])[0]
        assert events.user_ids.equals(alone.user_ids) and events.item_ids.equals(alone.item_ids)
        assert events.event_types == alone.event_types
        assert all(np.array_equal(events.arrays()[k], alone.arrays()[k]) for k in events.ARRAYS)


def test_take_users_keeps_their_pairs_entries_and_ages_with_rows_renumbered() -> None:
    from recsys.core.model import confidence_matrix, take_users

    table = pa.concat_tables([weighted_events(), pa.table({
        "user_id": ["u0", "u0"], "item_id": ["c", "a"], "event_type": ["view", "buy"],
        "event_us": [int((END - dt.timedelta(days=d)).timestamp() * 1_000_000) for d in (2, 3)]})])
    events = build_pair_events(table, [END])[0]  # users u0, u1, u2; items a, b, c
    weights = {"view": 1.0, "buy": 10.0}
    full = confidence_matrix(events, weights, 7.0).matrix.toarray()
    some = take_users(events, np.array([0, 2]))
    assert some.user_ids.to_pylist() == ["u0", "u2"] and some.item_ids.equals(events.item_ids)
    assert np.array_equal(confidence_matrix(some, weights, 7.0).matrix.toarray(), full[[0, 2]])
    assert some.ages.tolist() == [3.0, 2.0, 7.0] and some.counts.tolist() == [1, 1, 1]
    middle = take_users(events, np.array([1]))
    assert np.array_equal(confidence_matrix(middle, weights, 7.0).matrix.toarray(), full[[1]])


def test_rows_in_any_order_give_the_same_pair_events() -> None:

    table = weighted_events()
    one = build_pair_events(table, [END])[0].arrays()
    other = build_pair_events(table.take(pa.array([5, 3, 1, 4, 0, 2])), [END])[0].arrays()
    assert all(np.array_equal(one[k], other[k]) for k in one)


    # Teleport has no weight and the 40-day-old view is outside the window: neither is kept.


def test_bpr_through_the_wrapper_learns_two_blocks_and_saves() -> None:
    """The same contract as ALS: Factors whose dot product ranks the unseen items of the user's block."""

    rng = np.random.default_rng(0)
    dense = np.zeros((60, 10), dtype=np.float32)
    for u in range(60):
        block = 0 if u < 30 else 5
        dense[u, block + rng.choice(5, size=3, replace=False)] = rng.integers(1, 50, size=3)  # values are ignored
    matrix = sp.csr_matrix(dense)
    params = ModelParams(model="bpr", factors=4, regularization=0.01, learning_rate=0.05, iterations=200)
    model = train_model(matrix, params)
    assert model.model == "bpr" and model.item_factors.shape == (10, 5)  # + the item bias column
    assert model.item_embeddings.shape == (10, 4) and np.all(model.user_factors[:, -1] == 1.0)
    ids, _ = recommend_factors(model.user_factors, model.item_factors, matrix, 2, None)
    blocks = [set(range(5) if u < 30 else range(5, 10)) for u in range(60)]
    assert all(ids[u, 0] in blocks[u] for u in range(60))  # every user's best item is of their block
    assert sum(set(ids[u].tolist()) <= blocks[u] for u in range(60)) >= 40  # by chance: ~3 of 60
    assert not any(set(ids[u].tolist()) & set(np.flatnonzero(dense[u]).tolist()) for u in range(60))
    again = train_model(matrix, params)
    assert np.array_equal(again.item_factors, model.item_factors)  # one thread: reruns give the same lists
    assert "learning_rate" in params.as_dict() and "alpha" not in params.as_dict()
    assert "alpha" in ModelParams().as_dict() and "learning_rate" not in ModelParams().as_dict()
    with pytest.raises(ValueError, match="unknown model family"):
        train_model(matrix, ModelParams(model="svd"))


def test_cap_per_category_keeps_the_best_of_each_category_in_order() -> None:
    from recsys.core.model import cap_per_category

    categories = np.array([0, 0, 0, 1, 1, -1])  # item 5 has no category: never capped
    ids = np.array([[0, 1, 2, 3, 5, 4], [2, 0, -1, -1, -1, -1]], dtype=np.int32)
    scores = np.array([[6, 5, 4, 3, 2, 1], [2, 1, -np.inf, -np.inf, -np.inf, -np.inf]], dtype=np.float32)
    capped, capped_scores = cap_per_category(ids, scores, categories, cap=2, k=4)
    assert capped.tolist() == [[0, 1, 3, 5], [2, 0, -1, -1]]
    assert capped_scores[0].tolist() == [6, 5, 3, 2] and np.isneginf(capped_scores[1, 2:]).all()


def test_similar_items_are_nearest_by_cosine_and_never_the_item_itself() -> None:
    from recsys.core.model import Factors, similar_items

    factors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], dtype=np.float32)
    ids, scores = similar_items(Factors(np.zeros((0, 2), np.float32), factors), 2, np.array([4]))
    assert ids[:4, 0].tolist() == [1, 0, 3, 2]
    assert all(i not in row for i, row in enumerate(ids.tolist()))
    assert 4 not in ids  # excluded (inactive) items are never similar items
    assert scores[0, 0] == pytest.approx(0.9 / np.hypot(0.9, 0.1), rel=1e-5)


def test_bm25_weighting_damps_common_items_and_long_histories() -> None:
    from recsys.core.model import BM25_FLOOR, scale_confidence

    dense = np.zeros((12, 10), dtype=np.float32)
    dense[:6, 0] = 1  # item 0: half the users
    dense[0, 1] = dense[1, 5] = dense[1, 6] = dense[1, 7] = dense[3, 2] = 1  # rare items: one user each
    weighted = scale_confidence(sp.csr_matrix(dense), 1.0, "bm25").toarray()
    assert weighted.shape == dense.shape and ((weighted > 0) == (dense > 0)).all()
    assert weighted[1, 0] < weighted[1, 5] / 2  # same user: the common item weighs far less than the rare one
    assert weighted[2, 0] > weighted[1, 0]  # a user with one item keeps more weight on it than one with four
    assert weighted[0, 1] > weighted[1, 5]  # the same rare item weighs more in the shorter history
    # An item every user touched has idf log(N) - log1p(N) < 0 in implicit's BM25: it keeps a
    # small positive weight, not a negative one (ALS would read that as a dislike).
    everyone = np.ones((3, 2), dtype=np.float32)
    assert np.allclose(scale_confidence(sp.csr_matrix(everyone), 2.0, "bm25").toarray(), 2 * BM25_FLOOR)
    assert scale_confidence(sp.csr_matrix(dense), 2.0, "log").toarray()[0, 0] == pytest.approx(2 * np.log(2))
    with pytest.raises(ValueError, match="unknown weighting"):
        scale_confidence(sp.csr_matrix(dense), 1.0, "tfidf")


def test_bm25_damps_a_popular_item_by_its_idf_not_in_proportion_to_its_popularity() -> None:
    # Users as documents: an item half the users touched keeps about a fifth of a rare item's
    # weight (idf log(40) - log1p(20) against log(40) - log1p(1)). Items as documents damped it
    # in proportion to its popularity (a fifteenth here), which at scale 10 left popular items
    # almost no weight and the BM25 candidates at NDCG@20 0.0109.
    from recsys.core.model import scale_confidence

    dense = np.zeros((40, 41), dtype=np.float32)
    dense[:20, 0] = 1  # item 0: half the users
    dense[np.arange(40), 1 + np.arange(40)] = 1  # and one rare item each
    weighted = scale_confidence(sp.csr_matrix(dense), 1.0, "bm25").toarray()
    assert 0.15 < weighted[0, 0] / weighted[0, 1] < 0.3


@pytest.mark.parametrize("key_offset", [0, 1 << 50])  # packed into one int64 / too wide: lexsort
def test_events_sort_by_key_then_newest_first_on_both_paths(key_offset: int) -> None:
    from recsys.core.model import _sort_by_key_newest_first

    rng = np.random.default_rng(3)
    key = rng.integers(0, 50, size=5_000) + key_offset
    seconds = rng.integers(1_700_000_000, 1_700_000_000 + 86_400 * 70, size=5_000)
    got_key, got_seconds = _sort_by_key_newest_first(key.copy(), seconds.copy())
    order = np.lexsort((-seconds, key))
    assert np.array_equal(got_key, key[order]) and np.array_equal(got_seconds, seconds[order])


def test_pair_events_refuse_an_end_inside_a_second() -> None:

    with pytest.raises(ValueError, match="not a whole second"):
        build_pair_events(weighted_events(), [END - dt.timedelta(microseconds=500)])


@pytest.mark.parametrize("similarity", ["cosine", "bm25", "tfidf"])
def test_itemknn_scores_and_lists_equal_implicits_own_recommend(similarity: str) -> None:
    """The item-kNN family is implicit's item-item recommender, served by the project's top-k:
    the same scores, and the same lists wherever implicit's order is not a tie."""
    from implicit import nearest_neighbours

    from recsys.core.families import ItemModel
    from recsys.core.model import recommend_users

    rng = np.random.default_rng(1)
    matrix = sp.csr_matrix(((rng.random((40, 15)) < 0.3) * rng.integers(1, 9, size=(40, 15))).astype(np.float32))
    binary = matrix.copy()
    binary.data[:] = 1.0
    model = train_model(matrix, ModelParams(model="itemknn", similarity=similarity, neighbours=6))
    assert isinstance(model, ItemModel) and model.item_matrix.shape == (15, 15)
    kind = {"cosine": nearest_neighbours.CosineRecommender, "bm25": nearest_neighbours.BM25Recommender,
            "tfidf": nearest_neighbours.TFIDFRecommender}[similarity]
    theirs = kind(K=6)
    theirs.fit(binary, show_progress=False)
    users = np.arange(40)
    their_ids, their_scores = theirs.recommend(users, binary, N=6, filter_already_liked_items=True)
    ids, scores = recommend_users(model, users, matrix, matrix, 4, None)
    compared = 0
    for u in users:
        theirs_u = their_scores[u]
        for rank in range(4):
            if theirs_u[rank] <= 0:  # implicit fills up with unlinked items at score 0, in its own order
                break
            assert scores[u, rank] == pytest.approx(theirs_u[rank], rel=1e-5)
            if (rank == 0 or theirs_u[rank - 1] - theirs_u[rank] > 1e-6) and theirs_u[rank] - theirs_u[rank + 1] > 1e-6:
                assert ids[u, rank] == their_ids[u, rank], (u, rank)
                compared += 1
    assert compared > 80


def _two_block_history(users: int, seed: int) -> sp.csr_matrix:
    """Users 0..users/2-1 touch 3 of items 0-4, the others 3 of items 5-9 (weights 1-5)."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((users, 10), dtype=np.float32)
    for u in range(users):
        block = 0 if u < users // 2 else 5
        dense[u, block + rng.choice(5, size=3, replace=False)] = rng.integers(1, 6, size=3)
    return sp.csr_matrix(dense)


def test_als_fold_in_of_its_training_rows_is_its_own_user_step() -> None:
    """Fold-in solves each history row against the fixed item factors: for the training rows
    that is the fit's user step, so the vectors are close to the fit's own (the fit moved its
    item factors once more after its last user step) and rank the same items first."""
    from recsys.core.model import fold_in, top_k_items

    matrix = _two_block_history(60, seed=4)
    params = ModelParams(factors=2, regularization=0.1, alpha=5.0, iterations=30)
    model = train_model(matrix, params)
    folded = fold_in(model, params, matrix)
    assert folded.item_factors is model.item_factors and folded.user_factors.shape == model.user_factors.shape
    fitted = model.user_factors @ model.item_factors.T
    solved = folded.user_factors @ model.item_factors.T
    assert np.corrcoef(fitted.ravel(), solved.ravel())[0, 1] > 0.99
    own, _ = top_k_items(model.item_factors, model.user_factors, matrix, 2, None)
    ids, _ = top_k_items(model.item_factors, folded.user_factors, matrix, 2, None)
    assert (ids == own).mean() > 0.9


def test_fold_in_scores_users_no_fit_has_seen() -> None:
    """New shoppers, given only their histories, get unseen items of their block first from
    every family; the item families score them exactly as training rows would be scored."""
    from recsys.core.families import ItemModel
    from recsys.core.model import fold_in, recommend_users

    matrix = _two_block_history(60, seed=5)
    strangers = sp.csr_matrix(np.array([[2, 3, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 4, 1, 0]],
                                       dtype=np.float32))
    families = [ModelParams(factors=2, regularization=0.1, alpha=5.0, iterations=30),
                ModelParams(model="bpr", factors=4, regularization=0.01, learning_rate=0.05, iterations=200),
                ModelParams(model="ease", ease_lambda=5.0), ModelParams(model="rp3beta", neighbours=5),
                ModelParams(model="itemknn", similarity="cosine", neighbours=5)]
    for params in families:
        model = train_model(matrix, params)
        folded = fold_in(model, params, strangers)
        ids, _ = recommend_users(folded, np.arange(2), strangers, strangers, 2, None)
        assert set(ids[0].tolist()) <= {2, 3, 4} and set(ids[1].tolist()) <= {5, 6, 9}, (params.model, ids)
        if isinstance(model, ItemModel):
            assert folded is model
    with pytest.raises(ValueError, match="9 item columns, the als model 10"):
        fold_in(train_model(matrix, families[0]), families[0], strangers[:, :9])


def test_a_blend_ranks_by_the_weighted_standardised_scores_of_its_parts() -> None:
    """Scores a thousand times apart in scale count by their standardised values: the blend's
    lists are the top-k of w * z(first) + (1 - w) * z(second), computed here by hand."""
    from recsys.core.model import Blend, Factors, needs_history, recommend_users, standardise_rows

    rng = np.random.default_rng(3)
    users, items = 5, 8
    first = Factors(rng.standard_normal((users, 3)).astype(np.float32), rng.standard_normal((items, 3)).astype(np.float32))
    second = Factors(1000 * rng.standard_normal((users, 2)).astype(np.float32),
                     rng.standard_normal((items, 2)).astype(np.float32))
    none = sp.csr_matrix((users, items), dtype=np.float32)
    for weight in (0.2, 0.5, 0.9):
        blend = Blend(first, second, weight, ModelParams(), ModelParams())
        ids, scores = recommend_users(blend, np.arange(users), None, none, 3, None)
        z = lambda s: (s - s.mean(axis=1, keepdims=True)) / s.std(axis=1, keepdims=True)  # noqa: E731
        expected = weight * z(first.user_factors @ first.item_factors.T) + (1 - weight) * z(
            second.user_factors @ second.item_factors.T)
        assert ids.tolist() == np.argsort(-expected, axis=1, kind="stable")[:, :3].tolist()
        assert np.allclose(scores, np.sort(expected, axis=1)[:, ::-1][:, :3], atol=1e-5)
    assert not needs_history(blend)
    flat = standardise_rows(np.ones((2, 4), dtype=np.float32))
    assert np.array_equal(flat, np.zeros((2, 4)))  # a constant row has no spread: all 0, never NaN


def test_a_blend_trains_saves_folds_in_and_lists_similar_items_of_its_first_part(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from recsys.core.families import ItemModel
    from recsys.core.model import Blend, fold_in, needs_history, recommend_users, reindex_items, similar_items
    from recsys.io.artifacts import load_model, save_model

    matrix = _two_block_history(60, seed=6)
    parts = (ModelParams(model="rp3beta", neighbours=5).as_dict(),
             ModelParams(factors=2, regularization=0.1, alpha=5.0, iterations=30).as_dict())
    params = ModelParams(model="blend", blend_weight=0.6, parts=parts)
    blend = train_model(matrix, params)
    assert isinstance(blend, Blend) and isinstance(blend.first, ItemModel) and blend.second.model == "als"
    assert needs_history(blend) and blend.weight == 0.6
    save_model(blend, tmp_path / "model.npz")
    again = load_model(tmp_path / "model.npz")
    assert isinstance(again, Blend) and again.first_params == blend.first_params and again.weight == 0.6
    rows = np.arange(60)
    assert np.array_equal(recommend_users(again, rows, matrix, matrix, 3, None)[0],
                          recommend_users(blend, rows, matrix, matrix, 3, None)[0])
    assert np.array_equal(similar_items(blend, 3, None)[0], similar_items(blend.first, 3, None)[0])
    strangers = sp.csr_matrix(np.array([[2, 3, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=np.float32))
    folded = fold_in(blend, params, strangers)
    ids, _ = recommend_users(folded, np.arange(1), strangers, strangers, 2, None)
    assert set(ids[0].tolist()) <= {2, 3, 4}
    moved = reindex_items(blend, np.array([1, 0]), np.array([0, 1]), 2)
    assert isinstance(moved, Blend) and moved.second.item_factors.shape == (2, 2)
    with pytest.raises(ValueError, match="a blend has two parts"):
        train_model(matrix, ModelParams(model="blend", parts=parts[:1]))
