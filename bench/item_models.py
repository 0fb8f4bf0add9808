"""Sparse item models (item-kNN, RP3beta) at growing catalogs, two tables (stdout):

1. ``item#`` lists: recsys's top-k over the stored entries of the neighbour matrix against, in
   the same run, implicit's own ``ItemItemRecommender.similar_items`` for every item (the
   library's call) and the dense top-k of the rows (what recsys did before: every row widened
   to all items). The neighbour matrix is an item-kNN fit (implicit, cosine, ``--neighbours``
   a row), so all three list the same neighbours.
2. users' lists: ``recommend_users`` of an RP3beta model (the sparse product of the history
   and W, top-k of the linked items) against implicit's ``recommend`` of the item-kNN model
   for the same users (the library's batch call) and the dense top-k of the same scores
   (every user scored over the whole catalog, as recsys did before).

The store is seeded and random: ``--users`` users with ``--per-user`` items each, by a 1/rank
popularity over ``--items`` items.

    .venv/bin/python bench/item_models.py --items 2465,24650
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp
from _common import setup_logging


def store(users: int, items: int, per_user: int, seed: int) -> sp.csr_matrix:
    """A users x items binary matrix: each user ``per_user`` items by a 1/rank popularity."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1)
    cols = rng.choice(items, size=users * per_user, p=weights / weights.sum())
    rows = np.repeat(np.arange(users), per_user)
    matrix = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(users, items))
    matrix.data[:] = 1.0
    return matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", default="2465,24650", help="catalog sizes, comma-separated")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--per-user", type=int, default=10)
    parser.add_argument("--neighbours", type=int, default=200)
    parser.add_argument("--scored-users", type=int, default=50_000, help="users whose lists table 2 makes")
    parser.add_argument("-k", type=int, default=20)
    args = parser.parse_args()
    setup_logging()
    from implicit.nearest_neighbours import CosineRecommender
    from threadpoolctl import threadpool_limits

    from recsys.core.families import ItemModel
    from recsys.core.model import ModelParams, _row_scorer, _top_k, recommend_users, similar_items, train_model

    print("| items | neighbour non-zeros | recsys s | implicit similar_items s | ratio | dense top-k s | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    users_rows = []
    for items in (int(x) for x in args.items.split(",")):
        matrix = store(args.users, items, args.per_user, seed=items)
        knn = CosineRecommender(K=args.neighbours)
        with threadpool_limits(1, "blas"):
            knn.fit(matrix, show_progress=False)
        model = ItemModel(knn.similarity.tocsr().astype(np.float32), "itemknn")
        started = time.perf_counter()
        similar_items(model, args.k, None)
        ours = time.perf_counter() - started

        started = time.perf_counter()
        knn.similar_items(np.arange(items), N=args.k + 1)  # +1: implicit lists the item itself first
        library = time.perf_counter() - started

        neighbours = model.neighbour_matrix

        def score_rows(start: int, stop: int, neighbours: sp.csr_matrix = neighbours, items: int = items) -> np.ndarray:
            block = neighbours[start:stop].tocoo()
            dense = np.full((stop - start, items), -np.inf, dtype=np.float32)
            dense[block.row, block.col] = block.data
            return dense

        started = time.perf_counter()
        _top_k(score_rows, items, items, sp.identity(items, dtype=np.float32, format="csr"), args.k, None)
        before = time.perf_counter() - started
        print(f"| {items:,} | {neighbours.nnz:,} | {ours:.3f} | {library:.3f} | {library / ours:.1f}x "
              f"| {before:.3f} | {before / ours:.1f}x |")

        rows = np.arange(min(args.scored_users, args.users))
        rp3 = train_model(matrix, ModelParams(model="rp3beta", rp3_alpha=0.8, rp3_beta=0.3, neighbours=args.neighbours))
        started = time.perf_counter()
        recommend_users(rp3, rows, matrix, matrix[rows], args.k, None)
        ours = time.perf_counter() - started
        started = time.perf_counter()
        knn.recommend(rows, matrix[rows], N=args.k, filter_already_liked_items=True)
        library = time.perf_counter() - started
        started = time.perf_counter()
        _top_k(_row_scorer(rp3, rows, matrix), len(rows), items, matrix[rows], args.k, None)
        before = time.perf_counter() - started
        users_rows.append(f"| {items:,} | {len(rows):,} | {ours:.2f} | {library:.2f} | {library / ours:.1f}x "
                          f"| {before:.2f} | {before / ours:.1f}x |")
    print("\n| items | users | recsys recommend_users (RP3beta) s | implicit recommend (item-kNN) s | ratio "
          "| dense top-k s | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(users_rows))


if __name__ == "__main__":
    main()
