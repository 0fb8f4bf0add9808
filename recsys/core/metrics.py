"""Ranking metrics for top-k lists, vectorised over users (no Python loop per user).

Every metric takes the same two inputs:

- ``recommended``: int array (n_users, K) of item column indices, best first; ``-1`` marks an
  empty position (a list shorter than K). A list holds each item at most once.
- ``relevant``: a scipy CSR matrix (n_users, n_items), non-zero where the item is relevant to
  the user; row i is the truth for ``recommended[i]``. Stored zeros are not relevant.

Ranking metrics are means over the users with at least one relevant item; users with none are
left out (they would score 0 whatever the model did). If no user has a relevant item the
metric is 0.0. Relevance is binary. With ``hits[u, j]`` = "position j (0-based) of user u's
list is relevant", ``n_rel[u]`` = relevant items of u, and ``m = min(k, n_rel[u])``:

- precision@k = sum_j hits / k (empty positions count as misses)
- recall@k    = sum_j hits / n_rel
- AP@k        = sum_j hits[j] * (hits in positions 0..j) / (j + 1), divided by m — the
  normalisation of implicit's ``mean_average_precision_at_k`` and recommenders' ``map_at_k``
- NDCG@k      = DCG / IDCG, DCG = sum_j hits[j] / log2(j + 2) (rank r = j + 1 discounted by
  log2(r + 1)), IDCG = the DCG of m hits in the first m positions.

Beyond accuracy, the lists alone (no truth) are described by catalog coverage, novelty
(:func:`novelty_at_k`), intra-list diversity (:func:`intra_list_diversity_at_k`) and, against
the previous night's lists, :func:`jaccard_at_k`; these are means over the non-empty lists.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

IntArray: TypeAlias = npt.NDArray[np.integer[Any]]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
FloatArray: TypeAlias = npt.NDArray[np.float64]
Relevance: TypeAlias = "sp.csr_matrix | sp.csr_array"

EMPTY = -1  # the id that pads a short list


def hit_matrix(recommended: IntArray, relevant: Relevance, k: int) -> BoolArray:
    """Whether position j of user i's list is relevant, for the first k positions.

    Returns a bool array (n_users, k); empty (``-1``) positions are False.
    Raises ValueError if the inputs do not match (see :func:`evaluate_lists`).
    """
    recommended, rel = _checked_inputs(recommended, relevant, k)
    return _hits(recommended, rel, k)


def precision_at_k(recommended: IntArray, relevant: Relevance, k: int) -> float:
    """Mean over users with a relevant item of (relevant items in the top k) / k.

    A list shorter than k is not rewarded: its empty positions count as misses.
    Raises ValueError if the inputs do not match (see :func:`evaluate_lists`).
    """
    hits, n_rel = _evaluated_hits(recommended, relevant, k)
    return _mean(_precision(hits, n_rel))


def recall_at_k(recommended: IntArray, relevant: Relevance, k: int) -> float:
    """Mean over users with a relevant item of (relevant items in the top k) / (relevant items).

    The standard definition: a user with more than k relevant items cannot reach 1.
    Raises ValueError if the inputs do not match (see :func:`evaluate_lists`).
    """
    hits, n_rel = _evaluated_hits(recommended, relevant, k)
    return _mean(_recall(hits, n_rel))


def map_at_k(recommended: IntArray, relevant: Relevance, k: int) -> float:
    """Mean average precision at k over users with a relevant item.

    AP@k = sum over hit positions r (1-based) of precision@r, divided by min(k, n_relevant):
    implicit's ``mean_average_precision_at_k`` and recommenders' ``map_at_k``, so a list that
    fills all its k positions (or all n_relevant < k) with relevant items scores 1.
    Raises ValueError if the inputs do not match (see :func:`evaluate_lists`).
    """
    hits, n_rel = _evaluated_hits(recommended, relevant, k)
    return _mean(_average_precision(hits, n_rel))


def ndcg_at_k(recommended: IntArray, relevant: Relevance, k: int) -> float:
    """Mean normalised discounted cumulative gain at k over users with a relevant item.

    Binary gain; rank r (1-based) is discounted by log2(r + 1); the ideal list has
    min(k, n_relevant) hits at the top.
    Raises ValueError if the inputs do not match (see :func:`evaluate_lists`).
    """
    hits, n_rel = _evaluated_hits(recommended, relevant, k)
    return _mean(_ndcg(hits, n_rel))


def catalog_coverage(recommended: IntArray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one list: distinct ids (not -1) / n_items.

    ``n_items`` is the size of the catalogue the lists could draw from — all items, or only the
    eligible ones; ids are not required to be below it. Raises ValueError if ``n_items`` < 1,
    ``recommended`` is not a 2-D int array, holds ids below -1, or has more distinct ids than
    ``n_items`` (then the denominator is the wrong catalogue).
    """
    recommended = _checked_lists(recommended)
    if n_items < 1:
        raise ValueError(f"n_items must be the catalogue size (>= 1), got {n_items}")
    ids = recommended[recommended != EMPTY]
    if ids.size == 0:
        return 0.0
    present = np.zeros(int(ids.max()) + 1, dtype=bool)
    present[ids] = True
    distinct = int(np.count_nonzero(present))
    if distinct > n_items:
        raise ValueError(
            f"the lists hold {distinct} distinct items but n_items is {n_items}; "
            "pass the size of the catalogue the lists were drawn from"
        )
    return distinct / n_items


def novelty_at_k(recommended: IntArray, item_users: IntArray, n_users: int, k: int) -> float:
    """Mean self-information of the recommended items: per list, the mean over its first k
    items of ``-log2(item_users[i] / n_users)`` (the share of users who touched the item;
    an item nobody touched counts as touched by one user), averaged over lists with at least
    one item; 0.0 when there is none. Higher means less popular items.

    Raises ValueError when ``n_users`` < 1, an id is not an index of ``item_users``, or k is
    outside 1..recommended.shape[1].
    """
    top, filled = _first_k(recommended, k, len(item_users))
    if n_users < 1:
        raise ValueError(f"n_users must be the number of users the popularity counts (>= 1), got {n_users}")
    share = np.maximum(np.asarray(item_users, dtype=np.float64), 1.0) / n_users
    information = np.where(filled, -np.log2(share[np.maximum(top, 0)]), 0.0)
    return _mean_of_lists(information.sum(axis=1), filled.sum(axis=1))


def intra_list_diversity_at_k(recommended: IntArray, categories: IntArray, k: int) -> float:
    """Share of distinct categories in a list: per list, the distinct categories among its
    first k items divided by its items (an item without a category, code -1, counts as a
    category of its own), averaged over lists with at least one item; 0.0 when there is none.
    1 means every item of a list is from another category.

    Raises ValueError when an id is not an index of ``categories`` or k is outside
    1..recommended.shape[1].
    """
    top, filled = _first_k(recommended, k, len(categories))
    codes = np.asarray(categories, dtype=np.int64)[np.maximum(top, 0)]
    unknown = (codes < 0) & filled
    codes = np.where(unknown, -2 - top, codes)  # a code of its own per uncategorised item
    codes = np.where(filled, codes, np.iinfo(np.int64).min)
    ordered = np.sort(codes, axis=1)
    first = np.ones_like(ordered, dtype=bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    distinct = (first & (ordered != np.iinfo(np.int64).min)).sum(axis=1)
    return _mean_of_lists(distinct.astype(np.float64), filled.sum(axis=1))


def jaccard_at_k(recommended: IntArray, previous: IntArray, k: int) -> float:
    """Night-to-night stability: per user (row i of both), |A ∩ B| / |A ∪ B| of the sets of
    the first k items of ``recommended`` and of ``previous`` (the same user's earlier list),
    averaged over the users with a non-empty list in both; 0.0 when there is none. 1 means
    the list kept its items (in any order); churn is 1 minus it.

    Raises ValueError when the arrays have different numbers of rows or k is outside
    1..the width of either.
    """
    now, now_filled = _first_k(recommended, k, None)
    before, before_filled = _first_k(previous, k, None)
    if now.shape[0] != before.shape[0]:
        raise ValueError(f"recommended has {now.shape[0]} rows but previous has {before.shape[0]}; "
                         "expected one row per user in both, in the same order")
    both = now_filled.any(axis=1) & before_filled.any(axis=1)
    if not both.any():
        return 0.0
    now, before = now[both], before[both]
    now_filled, before_filled = now_filled[both], before_filled[both]
    # each list holds an item at most once, so the intersection counts positions of one in the other
    common = ((now[:, :, None] == before[:, None, :]) & now_filled[:, :, None] & before_filled[:, None, :]).sum(
        axis=(1, 2))
    union = now_filled.sum(axis=1) + before_filled.sum(axis=1) - common
    return float((common / union).mean())


def _first_k(recommended: IntArray, k: int, n_items: int | None) -> tuple[IntArray, BoolArray]:
    """The first k positions of the checked lists and which of them hold an item."""
    recommended = _checked_lists(recommended)
    if not 1 <= k <= recommended.shape[1]:
        raise ValueError(f"k must be between 1 and the list width {recommended.shape[1]}, got {k}")
    top = recommended[:, :k]
    if n_items is not None:
        beyond = np.count_nonzero(top >= n_items)
        if beyond:
            raise ValueError(f"recommended has {beyond} ids >= {n_items}, the number of items described")
    filled: BoolArray = top != EMPTY
    return top, filled


def _mean_of_lists(totals: FloatArray, counts: IntArray) -> float:
    """Mean over lists with at least one item of total / items."""
    some = counts > 0
    return float((totals[some] / counts[some]).mean()) if some.any() else 0.0


def evaluate_lists(recommended: IntArray, relevant: Relevance, k: int, n_items: int) -> dict[str, float]:
    """All metrics of the first k positions of the lists, computing the hits once.

    Returns {"map_at_k", "ndcg_at_k", "precision_at_k", "recall_at_k", "catalog_coverage",
    "users_evaluated"}: floats, except users_evaluated, the int number of users with at least
    one relevant item. Coverage is of the first k positions, out of ``n_items``.

    Raises ValueError when ``recommended`` is not a 2-D int array, ``relevant`` has a different
    number of rows, k is outside 1..recommended.shape[1], an id is below -1 or not a column of
    ``relevant``, a list repeats an item, or ``n_items`` < 1.
    """
    recommended, rel = _checked_inputs(recommended, relevant, k)
    hits = _hits(recommended, rel, k)
    n_rel = _n_relevant(rel)
    evaluated = n_rel > 0
    hits, n_rel = hits[evaluated], n_rel[evaluated]
    return {
        "map_at_k": _mean(_average_precision(hits, n_rel)),
        "ndcg_at_k": _mean(_ndcg(hits, n_rel)),
        "precision_at_k": _mean(_precision(hits, n_rel)),
        "recall_at_k": _mean(_recall(hits, n_rel)),
        "catalog_coverage": catalog_coverage(recommended[:, :k], n_items),
        "users_evaluated": int(np.count_nonzero(evaluated)),
    }


# -- per-user values, on the rows of users with at least one relevant item ------------------


def _precision(hits: BoolArray, n_rel: IntArray) -> FloatArray:
    per_user: FloatArray = hits.sum(axis=1) / hits.shape[1]
    return per_user


def _recall(hits: BoolArray, n_rel: IntArray) -> FloatArray:
    per_user: FloatArray = hits.sum(axis=1) / n_rel
    return per_user


def _average_precision(hits: BoolArray, n_rel: IntArray) -> FloatArray:
    k = hits.shape[1]
    precision_at_rank = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    per_user: FloatArray = np.where(hits, precision_at_rank, 0.0).sum(axis=1) / np.minimum(n_rel, k)
    return per_user


def _ndcg(hits: BoolArray, n_rel: IntArray) -> FloatArray:
    k = hits.shape[1]
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discount)  # ideal[m - 1] = IDCG with m relevant items
    per_user: FloatArray = (hits @ discount) / ideal[np.minimum(n_rel, k) - 1]
    return per_user


def _mean(per_user: FloatArray) -> float:
    return float(per_user.mean()) if per_user.size else 0.0


# -- inputs ---------------------------------------------------------------------------------


def _evaluated_hits(recommended: IntArray, relevant: Relevance, k: int) -> tuple[BoolArray, IntArray]:
    """Hits and relevant counts of the users with at least one relevant item."""
    recommended, rel = _checked_inputs(recommended, relevant, k)
    hits = _hits(recommended, rel, k)
    n_rel = _n_relevant(rel)
    evaluated = n_rel > 0
    return hits[evaluated], n_rel[evaluated]


def _hits(recommended: IntArray, rel: sp.csr_matrix, k: int) -> BoolArray:
    """Looks up every (user, position) pair on the CSR at once; empty positions are misses."""
    top = recommended[:, :k]
    filled: BoolArray = top != EMPTY
    if top.size == 0:  # scipy's lookup of no pairs returns a 1 × 1 matrix, not an empty one
        return filled
    rows = np.broadcast_to(np.arange(top.shape[0])[:, None], top.shape)
    # scipy reads -1 as the last column; the `filled` mask below turns those lookups into misses.
    values = rel[rows.ravel(), top.ravel()]
    hits: BoolArray = (np.asarray(values).reshape(top.shape) != 0) & filled
    return hits


def _n_relevant(rel: sp.csr_matrix) -> IntArray:
    return np.diff(rel.indptr)


def _checked_lists(recommended: IntArray) -> IntArray:
    recommended = np.asarray(recommended)
    if recommended.ndim != 2 or not np.issubdtype(recommended.dtype, np.integer):
        raise ValueError(
            "recommended must be a 2-D int array (n_users, K) of item indices, "
            f"got shape {recommended.shape} of dtype {recommended.dtype}"
        )
    below = np.count_nonzero(recommended < EMPTY)
    if below:
        raise ValueError(f"recommended has {below} ids below -1; expected item indices or -1 for an empty position")
    return recommended


def _checked_inputs(recommended: IntArray, relevant: Relevance, k: int) -> tuple[IntArray, sp.csr_matrix]:
    """The lists, checked, and ``relevant`` as a canonical CSR copy without stored zeros."""
    recommended = _checked_lists(recommended)
    if not sp.issparse(relevant):
        raise ValueError(f"relevant must be a scipy sparse matrix (n_users, n_items), got {type(relevant).__name__}")
    n_users, width = recommended.shape
    if relevant.shape[0] != n_users:
        raise ValueError(
            f"recommended has {n_users} rows but relevant has {relevant.shape[0]}; "
            "expected one row per user in both, in the same order"
        )
    if not 1 <= k <= width:
        raise ValueError(f"k must be between 1 and the list width {width}, got {k}")
    n_items = relevant.shape[1]
    beyond = np.count_nonzero(recommended >= n_items)
    if beyond:
        raise ValueError(
            f"recommended has {beyond} ids >= {n_items}, the number of columns of relevant; "
            "expected indices into the same item space"
        )
    if width > 1:
        ordered = np.sort(recommended, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != EMPTY)
        if repeated.any():
            users = np.flatnonzero(repeated.any(axis=1))
            raise ValueError(
                f"{users.size} lists repeat an item (first: row {users[0]}); expected each item at most once per list"
            )
    rel = sp.csr_matrix(relevant, copy=True)
    rel.sum_duplicates()
    rel.eliminate_zeros()
    return recommended, rel
