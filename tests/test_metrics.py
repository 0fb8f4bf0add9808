"""Ranking metrics on tiny lists with answers worked out by hand, then against a per-user loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.core.metrics import (
    catalog_coverage,
    evaluate_lists,
    hit_matrix,
    intra_list_diversity_at_k,
    jaccard_at_k,
    map_at_k,
    ndcg_at_k,
    novelty_at_k,
    precision_at_k,
    recall_at_k,
)

INV_LOG2_3 = 1 / math.log2(3)  # discount of rank 2


def relevance(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    """A binary users × items CSR matrix from each user's relevant items."""
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.array([i for r in rows for i in r], dtype=np.int32)
    return sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(rows), n_items))


# 3 users, 6 items, lists of width 4, evaluated at k=3.
#   user 0: relevant {0, 2, 5}; list [0, 1, 2, 5] -> top 3 hits [1, 0, 1]  (item 5 is 4th: beyond k)
#   user 1: relevant {4};       list [3, 4, -1, -1] -> hits [0, 1, 0]     (a short list)
#   user 2: relevant {};        list [1, 2, 3, 4]   -> ignored by every ranking metric
RECOMMENDED = np.array([[0, 1, 2, 5], [3, 4, -1, -1], [1, 2, 3, 4]], dtype=np.int32)
RELEVANT = relevance([[0, 2, 5], [4], []], n_items=6)


def test_hit_matrix_marks_relevant_positions_and_stops_at_k() -> None:
    assert hit_matrix(RECOMMENDED, RELEVANT, 3).tolist() == [
        [True, False, True],
        [False, True, False],
        [False, False, False],
    ]
    assert hit_matrix(RECOMMENDED, RELEVANT, 4)[0].tolist() == [True, False, True, True]


def test_hand_worked_example_at_k3() -> None:
    # precision: u0 2/3, u1 1/3                                   -> (2/3 + 1/3) / 2 = 1/2
    assert precision_at_k(RECOMMENDED, RELEVANT, 3) == pytest.approx(1 / 2)
    # recall: u0 2/3 (item 5 is 4th), u1 1/1                      -> (2/3 + 1) / 2 = 5/6
    assert recall_at_k(RECOMMENDED, RELEVANT, 3) == pytest.approx(5 / 6)
    # AP: u0 hits at ranks 1 and 3: (1/1 + 2/3) / min(3, 3) = 5/9
    #     u1 hit at rank 2:          (1/2) / min(3, 1)       = 1/2  -> (5/9 + 1/2) / 2 = 19/36
    assert map_at_k(RECOMMENDED, RELEVANT, 3) == pytest.approx(19 / 36)
    # NDCG: u0 DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG (3 ideal hits) = 1 + 1/log2(3) + 1/2
    #       u1 DCG = 1/log2(3);                  IDCG (1 ideal hit)  = 1
    ndcg_u0 = 1.5 / (1.5 + INV_LOG2_3)
    assert ndcg_at_k(RECOMMENDED, RELEVANT, 3) == pytest.approx((ndcg_u0 + INV_LOG2_3) / 2)  # 0.667424


def test_full_width_counts_the_fourth_position() -> None:
    # At k=4, u0 also hits item 5 at rank 4: hits [1, 0, 1, 1]; u1 still [0, 1, 0, 0].
    # precision: (3/4 + 1/4) / 2 = 1/2; recall: (3/3 + 1/1) / 2 = 1
    assert precision_at_k(RECOMMENDED, RELEVANT, 4) == pytest.approx(1 / 2)
    assert recall_at_k(RECOMMENDED, RELEVANT, 4) == pytest.approx(1.0)
    # AP u0: (1/1 + 2/3 + 3/4) / min(4, 3) = (29/12) / 3 = 29/36; u1: (1/2) / 1 -> (29/36 + 18/36) / 2
    assert map_at_k(RECOMMENDED, RELEVANT, 4) == pytest.approx(47 / 72)
    # NDCG u0: DCG = 1 + 1/2 + 1/log2(5); IDCG = 1 + 1/log2(3) + 1/2 (still 3 ideal hits)
    ndcg_u0 = (1.5 + 1 / math.log2(5)) / (1.5 + INV_LOG2_3)
    assert ndcg_at_k(RECOMMENDED, RELEVANT, 4) == pytest.approx((ndcg_u0 + INV_LOG2_3) / 2)


def test_evaluate_lists_matches_the_single_metrics() -> None:
    result = evaluate_lists(RECOMMENDED, RELEVANT, 3, n_items=6)
    assert result == pytest.approx(
        {
            "map_at_k": 19 / 36,
            "ndcg_at_k": (1.5 / (1.5 + INV_LOG2_3) + INV_LOG2_3) / 2,
            "precision_at_k": 1 / 2,
            "recall_at_k": 5 / 6,
            # first 3 positions hold {0, 1, 2} ∪ {3, 4} ∪ {1, 2, 3} = 5 of the 6 items
            "catalog_coverage": 5 / 6,
            "users_evaluated": 2,
        }
    )
    assert type(result["users_evaluated"]) is int
    assert all(type(v) is float for name, v in result.items() if name != "users_evaluated")


def test_perfect_lists_score_one() -> None:
    # u0: 3 relevant, list of 3 all relevant, in any order -> every metric 1
    # u1: 4 relevant, 3 of them listed -> precision, AP (÷ min(3, 4)) and NDCG 1; recall 3/4
    recommended = np.array([[2, 0, 1], [5, 4, 3]])
    relevant = relevance([[0, 1, 2], [3, 4, 5, 6]], n_items=7)
    assert precision_at_k(recommended, relevant, 3) == pytest.approx(1.0)
    assert map_at_k(recommended, relevant, 3) == pytest.approx(1.0)
    assert ndcg_at_k(recommended, relevant, 3) == pytest.approx(1.0)
    assert recall_at_k(recommended, relevant, 3) == pytest.approx((1 + 3 / 4) / 2)


def test_no_hits_score_zero() -> None:
    recommended = np.array([[3, 4, 5], [0, 1, 2]])
    relevant = relevance([[0, 1], [5]], n_items=6)
    result = evaluate_lists(recommended, relevant, 3, n_items=6)
    assert result["map_at_k"] == result["ndcg_at_k"] == result["precision_at_k"] == result["recall_at_k"] == 0.0
    assert result["users_evaluated"] == 2 and result["catalog_coverage"] == 1.0


def test_padded_short_list() -> None:
    # u0 gets one item, relevant, then two empty positions: hits [1, 0, 0]
    #   precision 1/3 (empty positions are misses), recall 1/1, AP (1/1) / min(3, 1) = 1,
    #   NDCG 1 / 1 = 1
    # u1 gets nothing at all: every metric 0, but the user still counts
    recommended = np.array([[2, -1, -1], [-1, -1, -1]])
    relevant = relevance([[2], [0]], n_items=3)
    assert precision_at_k(recommended, relevant, 3) == pytest.approx((1 / 3 + 0) / 2)
    assert recall_at_k(recommended, relevant, 3) == pytest.approx((1 + 0) / 2)
    assert map_at_k(recommended, relevant, 3) == pytest.approx((1 + 0) / 2)
    assert ndcg_at_k(recommended, relevant, 3) == pytest.approx((1 + 0) / 2)


def test_empty_position_is_not_the_last_item() -> None:
    # -1 must not wrap around to the last column (item 3), which is relevant here.
    recommended = np.array([[0, -1]])
    relevant = relevance([[3]], n_items=4)
    assert hit_matrix(recommended, relevant, 2).tolist() == [[False, False]]
    assert recall_at_k(recommended, relevant, 2) == 0.0


def test_users_without_relevant_items_are_ignored() -> None:
    base = evaluate_lists(RECOMMENDED[:2], RELEVANT[:2], 3, n_items=6)
    # Adding users with no relevant items (one of them with a perfect-looking list) changes nothing
    # but coverage; the extra rows do not dilute the means.
    more = np.vstack([RECOMMENDED[:2], [[0, 2, 5, 1], [-1, -1, -1, -1]]])
    relevant = sp.vstack([RELEVANT[:2], sp.csr_matrix((2, 6))]).tocsr()
    result = evaluate_lists(more, relevant, 3, n_items=6)
    for name in ("map_at_k", "ndcg_at_k", "precision_at_k", "recall_at_k"):
        assert result[name] == pytest.approx(base[name])
        assert result[name] > 0
    assert result["users_evaluated"] == base["users_evaluated"] == 2


def test_no_user_with_relevant_items_gives_zero() -> None:
    result = evaluate_lists(RECOMMENDED, sp.csr_matrix((3, 6)), 3, n_items=6)
    assert result["map_at_k"] == result["ndcg_at_k"] == result["precision_at_k"] == result["recall_at_k"] == 0.0
    assert result["users_evaluated"] == 0


def test_no_users_at_all() -> None:
    result = evaluate_lists(np.zeros((0, 3), dtype=np.int32), sp.csr_matrix((0, 5)), 3, n_items=5)
    assert result == {
        "map_at_k": 0.0, "ndcg_at_k": 0.0, "precision_at_k": 0.0, "recall_at_k": 0.0,
        "catalog_coverage": 0.0, "users_evaluated": 0,
    }


def test_stored_zeros_and_duplicate_entries_in_relevant() -> None:
    # row 0 stores item 1 with value 0 (not relevant) and item 2 twice (one relevant item);
    # so n_relevant = 1 and the list [2, 1] has one hit at rank 1: recall 1, AP 1.
    relevant = sp.csr_matrix((np.array([0.0, 1.0, 1.0]), np.array([1, 2, 2]), np.array([0, 3])), shape=(1, 3))
    recommended = np.array([[2, 1]])
    assert hit_matrix(recommended, relevant, 2).tolist() == [[True, False]]
    assert recall_at_k(recommended, relevant, 2) == 1.0
    assert map_at_k(recommended, relevant, 2) == 1.0


def test_sparse_array_input_is_accepted() -> None:
    assert map_at_k(RECOMMENDED, sp.csr_array(RELEVANT), 3) == pytest.approx(19 / 36)


def test_catalog_coverage() -> None:
    # {0, 1, 2, 5} ∪ {3, 4} ∪ {1, 2, 3, 4} = all 6 items; -1 is not an item
    assert catalog_coverage(RECOMMENDED, 6) == 1.0
    # out of a catalogue of 10: 6 / 10
    assert catalog_coverage(RECOMMENDED, 10) == pytest.approx(0.6)
    # the denominator may be the eligible items only; ids need not be below it: {0, 9} of 4
    assert catalog_coverage(np.array([[0, 9], [9, -1]]), 4) == pytest.approx(0.5)
    assert catalog_coverage(np.full((2, 3), -1), 5) == 0.0


@pytest.mark.parametrize(
    ("recommended", "relevant", "k", "message"),
    [
        (RECOMMENDED[:2], RELEVANT, 3, "2 rows but relevant has 3"),
        (RECOMMENDED, RELEVANT, 0, "k must be between 1 and the list width 4, got 0"),
        (RECOMMENDED, RELEVANT, 5, "k must be between 1 and the list width 4, got 5"),
        (RECOMMENDED[0], RELEVANT, 3, "2-D int array"),
        (RECOMMENDED.astype(float), RELEVANT, 3, "2-D int array"),
        (np.array([[0, 6, 1, 2]] * 3), RELEVANT, 3, "3 ids >= 6, the number of columns"),
        (np.array([[0, -2, 1, 2]] * 3), RELEVANT, 3, "below -1"),
        (np.array([[0, 1, 0, -1], [0, 1, -1, -1], [2, 3, 4, 2]]), RELEVANT, 3, "2 lists repeat an item .first: row 0"),
        (RECOMMENDED, RELEVANT.toarray(), 3, "scipy sparse"),
    ],
)
def test_bad_inputs_say_what_was_expected(
    recommended: np.ndarray, relevant: sp.csr_matrix, k: int, message: str
) -> None:
    for metric in (hit_matrix, precision_at_k, recall_at_k, map_at_k, ndcg_at_k):
        with pytest.raises(ValueError, match=message):
            metric(recommended, relevant, k)
    with pytest.raises(ValueError, match=message):
        evaluate_lists(recommended, relevant, k, 6)


def test_bad_catalogue_size() -> None:
    with pytest.raises(ValueError, match="n_items must be the catalogue size"):
        catalog_coverage(RECOMMENDED, 0)
    with pytest.raises(ValueError, match="hold 6 distinct items but n_items is 5"):
        catalog_coverage(RECOMMENDED, 5)


# -- against a straightforward loop per user -----------------------------------------------


def reference_metrics(lists: list[list[int]], truth: list[set[int]], k: int) -> dict[str, float]:
    """The textbook definitions, one user at a time."""
    sums = {"map_at_k": 0.0, "ndcg_at_k": 0.0, "precision_at_k": 0.0, "recall_at_k": 0.0}
    users = 0
    for items, rel in zip(lists, truth):
        if not rel:
            continue
        users += 1
        hits = 0
        ap = dcg = 0.0
        for rank, item in enumerate(items[:k], start=1):
            if item != -1 and item in rel:
                hits += 1
                ap += hits / rank
                dcg += 1 / math.log2(rank + 1)
        ideal = sum(1 / math.log2(rank + 1) for rank in range(1, min(k, len(rel)) + 1))
        sums["precision_at_k"] += hits / k
        sums["recall_at_k"] += hits / len(rel)
        sums["map_at_k"] += ap / min(k, len(rel))
        sums["ndcg_at_k"] += dcg / ideal
    return {name: total / users for name, total in sums.items()}


def random_case(seed: int) -> tuple[np.ndarray, sp.csr_matrix, list[list[int]], list[set[int]]]:
    """50 users, 30 items, lists of width 8 with random lengths; some users have no relevant item."""
    rng = np.random.default_rng(seed)
    n_users, n_items, width = 50, 30, 8
    lists = [list(rng.choice(n_items, size=rng.integers(0, width + 1), replace=False)) for _ in range(n_users)]
    truth = [set(rng.choice(n_items, size=rng.integers(0, 12), replace=False).tolist()) for _ in range(n_users)]
    recommended = np.array([items + [-1] * (width - len(items)) for items in lists], dtype=np.int64)
    relevant = relevance([sorted(r) for r in truth], n_items)
    return recommended, relevant, [[int(i) for i in items] for items in lists], truth


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 5, 8])
def test_matches_per_user_loop_on_random_lists(seed: int, k: int) -> None:
    recommended, relevant, lists, truth = random_case(seed)
    expected = reference_metrics(lists, truth, k)
    result = evaluate_lists(recommended, relevant, k, n_items=30)
    assert {name: result[name] for name in expected} == pytest.approx(expected)
    assert result["users_evaluated"] == sum(1 for r in truth if r)
    assert result["catalog_coverage"] == pytest.approx(len({i for items in lists for i in items[:k]}) / 30)
    assert map_at_k(recommended, relevant, k) == pytest.approx(expected["map_at_k"])
    assert ndcg_at_k(recommended, relevant, k) == pytest.approx(expected["ndcg_at_k"])
    assert precision_at_k(recommended, relevant, k) == pytest.approx(expected["precision_at_k"])
    assert recall_at_k(recommended, relevant, k) == pytest.approx(expected["recall_at_k"])


class _FixedLists:
    """Stands in for an implicit model whose recommend() returns given lists."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = ids

    def recommend(
        self, userid: np.ndarray, user_items: sp.csr_matrix, N: int = 10, **_: object
    ) -> tuple[np.ndarray, np.ndarray]:
        ids = self.ids[np.asarray(userid), :N]
        return ids, np.where(ids >= 0, 1.0, -np.inf).astype(np.float32)


@pytest.mark.parametrize("k", [3, 8])
def test_map_and_ndcg_agree_with_implicit(k: int) -> None:
    """MAP and NDCG use implicit's definitions (its precision is a different one: ÷ min(k, n_rel))."""
    from implicit.evaluation import ranking_metrics_at_k

    recommended, relevant, _, _ = random_case(seed=7)
    theirs = ranking_metrics_at_k(
        _FixedLists(recommended.astype(np.int32)), sp.csr_matrix(relevant.shape), relevant, K=k, show_progress=False
    )
    assert map_at_k(recommended, relevant, k) == pytest.approx(theirs["map"])
    assert ndcg_at_k(recommended, relevant, k) == pytest.approx(theirs["ndcg"])


# -- beyond accuracy ---------------------------------------------------------------------


def test_novelty_at_k_is_the_mean_self_information_per_list() -> None:
    # shares of 8 users: 1, 1/2, 1/4, 1/8, and an item nobody touched counts as one user's: 1/8
    item_users = np.array([8, 4, 2, 1, 0])
    lists = np.array([[0, 1, -1], [2, 3, 4], [-1, -1, -1]])
    # list 0: (0 + 1) / 2; list 1: (2 + 3 + 3) / 3; the empty list is left out
    assert novelty_at_k(lists, item_users, 8, 3) == pytest.approx((0.5 + 8 / 3) / 2)
    assert novelty_at_k(lists, item_users, 8, 2) == pytest.approx((0.5 + 2.5) / 2)
    assert novelty_at_k(np.full((2, 3), -1), item_users, 8, 3) == 0.0
    with pytest.raises(ValueError, match="ids >= 5"):
        novelty_at_k(np.array([[5]]), item_users, 8, 1)
    with pytest.raises(ValueError, match="n_users"):
        novelty_at_k(lists, item_users, 0, 3)


def test_intra_list_diversity_at_k_is_the_share_of_distinct_categories() -> None:
    categories = np.array([0, 0, 1, -1, -1])  # items 3 and 4 have no category: one each
    lists = np.array([[0, 1, 2], [3, 4, -1], [0, 1, -1], [-1, -1, -1]])
    # 2 of 3, 2 of 2, 1 of 2; the empty list is left out
    assert intra_list_diversity_at_k(lists, categories, 3) == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert intra_list_diversity_at_k(lists, categories, 1) == 1.0
    assert intra_list_diversity_at_k(np.array([[0, 1]]), categories, 2) == 0.5


def test_jaccard_at_k_compares_each_users_lists_as_sets() -> None:
    now = np.array([[0, 1, 2], [3, 4, -1], [5, -1, -1], [-1, -1, -1]])
    before = np.array([[2, 1, 7], [4, 3, -1], [-1, -1, -1], [1, -1, -1]])
    # {0,1,2} vs {1,2,7}: 2 / 4; {3,4} vs {3,4}: 1; users 2 and 3 lack a list one night
    assert jaccard_at_k(now, before, 3) == pytest.approx(0.75)
    assert jaccard_at_k(now, before, 1) == 0.0  # {0} vs {2}, {3} vs {4}: the order matters only through k
    assert jaccard_at_k(now[:1], now[:1], 3) == 1.0
    assert jaccard_at_k(now[2:], before[2:], 3) == 0.0
    with pytest.raises(ValueError, match="rows"):
        jaccard_at_k(now, before[:2], 3)
