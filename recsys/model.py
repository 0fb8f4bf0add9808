"""The one wrapper around ``implicit``: the user × item matrix, ALS training and top-k lists.

Models take a users × items CSR matrix and nothing else; ids stay outside, as the row and
column labels returned by :func:`build_user_item_matrix`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

if TYPE_CHECKING:
    from implicit.cpu.als import AlternatingLeastSquares

log = logging.getLogger(__name__)

DEFAULT_BATCH_USERS = 20_000


@dataclass(frozen=True)
class ALSParams:
    """What an ALS model is trained with."""

    factors: int = 64
    regularization: float = 0.05
    alpha: float = 2.0
    iterations: int = 15
    random_state: int = 42
    weighting: str = "log"  # how the confidence matrix is weighted: "log" or "bm25"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class UserItemMatrix:
    """A users × items CSR matrix of confidences with its row and column ids."""

    matrix: sp.csr_matrix
    user_ids: pa.Array
    item_ids: pa.Array

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape  # type: ignore[return-value]


def build_user_item_matrix(
    confidence: pa.Table, item_ids: pa.Array | None = None, user_ids: pa.Array | None = None
) -> UserItemMatrix:
    """Build the CSR matrix from a (user_id, item_id, confidence) table.

    Rows and columns are the sorted distinct ids unless ``user_ids``/``item_ids`` fix them
    (rows whose id is not in a fixed list are dropped: e.g. hold-out users unknown to a model).
    """
    users = user_ids if user_ids is not None else pc.unique(confidence["user_id"]).sort()
    items = item_ids if item_ids is not None else pc.unique(confidence["item_id"]).sort()
    rows = pc.index_in(confidence["user_id"], value_set=users)
    cols = pc.index_in(confidence["item_id"], value_set=items)
    keep = pc.and_(pc.is_valid(rows), pc.is_valid(cols))
    if "confidence" in confidence.column_names:
        values = pc.filter(confidence["confidence"], keep).to_numpy().astype(np.float32)
    else:
        values = np.ones(pc.sum(keep).as_py() or 0, dtype=np.float32)
    r = pc.filter(rows, keep).to_numpy().astype(np.int64)
    c = pc.filter(cols, keep).to_numpy().astype(np.int64)
    matrix = sp.csr_matrix((values, (r, c)), shape=(len(users), len(items)), dtype=np.float32)
    matrix.sum_duplicates()
    return UserItemMatrix(matrix=matrix, user_ids=users, item_ids=items)


def scale_confidence(matrix: sp.csr_matrix, alpha: float, weighting: str = "log") -> sp.csr_matrix:
    """The matrix ALS fits on.

    ``log``: ``alpha * log1p(x)``, so repeated views saturate instead of dominating.
    ``bm25``: ``alpha * BM25(x)`` over items (as documents), which also damps the items
    everybody touches and long user histories. Raises ValueError for another weighting.
    """
    if weighting == "log":
        scaled = matrix.copy()
        scaled.data = (alpha * np.log1p(scaled.data)).astype(np.float32)
        return scaled
    if weighting == "bm25":
        from implicit.nearest_neighbours import bm25_weight

        weighted = bm25_weight(matrix.T.tocoo(), K1=100, B=0.8).T.tocsr()
        weighted.data = (alpha * weighted.data).astype(np.float32)
        return weighted.astype(np.float32)
    raise ValueError(f"unknown weighting {weighting!r}; expected 'log' or 'bm25'")


def train_als(matrix: sp.csr_matrix, params: ALSParams) -> "AlternatingLeastSquares":
    """Fit ALS on a users × items confidence matrix (already scaled); returns the model."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    # implicit runs its own threads; a multi-threaded BLAS under them only thrashes.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=1.0,  # confidence is scaled by scale_confidence, once
            iterations=params.iterations,
            random_state=params.random_state,
            calculate_training_loss=False,
        )
        model.fit(scale_confidence(matrix, params.alpha, params.weighting), show_progress=False)
    seconds = time.perf_counter() - started
    log.info(
        "ALS fit: %d users x %d items, %d non-zeros, %s in %.1f s",
        matrix.shape[0], matrix.shape[1], matrix.nnz, params.as_dict(), seconds,
    )
    return model


def top_k_items(
    item_vectors: np.ndarray,
    query_vectors: np.ndarray,
    seen: sp.csr_matrix | None,
    k: int,
    exclude_items: np.ndarray | None,
    batch_users: int = DEFAULT_BATCH_USERS,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items by dot product for every query row, in batches of users.

    ``seen`` (rows aligned with ``query_vectors``) and ``exclude_items`` are never returned.
    Returns (ids int32, scores float32), shape (n, k); a short list is padded with id -1.
    """
    from implicit.cpu.topk import topk
    from threadpoolctl import threadpool_limits

    n = query_vectors.shape[0]
    k_eff = min(k, item_vectors.shape[0])
    ids = np.full((n, k), -1, dtype=np.int32)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    exclude = None if exclude_items is None or len(exclude_items) == 0 else np.asarray(exclude_items, dtype=np.int32)
    item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    with threadpool_limits(1, "blas"):
        for start in range(0, n, batch_users):
            stop = min(start + batch_users, n)
            batch_ids, batch_scores = topk(
                item_vectors,
                np.ascontiguousarray(query_vectors[start:stop], dtype=np.float32),
                k_eff,
                filter_query_items=None if seen is None else seen[start:stop],
                filter_items=exclude,
            )
            ids[start:stop, :k_eff] = batch_ids
            scores[start:stop, :k_eff] = batch_scores
    # topk fills positions it could not fill (all else filtered) with the lowest float.
    unfilled = ~np.isfinite(scores) | (scores <= np.finfo(np.float32).min)
    ids[unfilled] = -1
    scores[unfilled] = -np.inf
    return ids, scores


def recommend_als(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    seen: sp.csr_matrix,
    k: int,
    exclude_items: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k for every user row of the factors, never an item in ``seen`` or ``exclude_items``."""
    started = time.perf_counter()
    ids, scores = top_k_items(item_factors, user_factors, seen, k, exclude_items)
    seconds = time.perf_counter() - started
    log.info("recommended top-%d for %d users in %.1f s (%.0f users/s)", k, len(ids), seconds, len(ids) / max(seconds, 1e-9))
    return ids, scores


def recommend_popular(
    popularity: np.ndarray, seen: sp.csr_matrix, k: int, exclude_items: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The popularity baseline: the most popular items each user has not seen yet."""
    queries = np.ones((seen.shape[0], 1), dtype=np.float32)
    return top_k_items(popularity.reshape(-1, 1).astype(np.float32), queries, seen, k, exclude_items)


def save_model(model: "AlternatingLeastSquares", path: Path) -> None:
    """Save the factors as ``.npz`` (what serving-time scoring needs)."""
    np.savez(path, user_factors=model.user_factors, item_factors=model.item_factors)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts and numpy arrays (for model versions)."""
    digest = hashlib.sha1()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:8]


def cap_per_category(
    ids: np.ndarray, scores: np.ndarray, categories: np.ndarray, cap: int, k: int, batch_users: int = 10_000
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``cap`` items of one category in each list: walk each (wider) list best first,
    skip items whose category is already full, keep the first ``k``.

    ``categories`` maps item index -> category code (-1: no category, never capped).
    Returns (ids, scores) of shape (n, k), padded with -1 / -inf.
    """
    n, width = ids.shape
    out_ids = np.full((n, k), -1, dtype=np.int32)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    before = np.tri(width, k=-1, dtype=bool)  # before[j, l]: position l comes before j
    for start in range(0, n, batch_users):
        block = ids[start : start + batch_users]
        cats = np.where(block >= 0, categories[np.maximum(block, 0)], -1)
        same = cats[:, :, None] == cats[:, None, :]
        earlier_same = (same & before[None]).sum(axis=2)
        keep = (block >= 0) & ((cats < 0) | (earlier_same < cap))
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        kept = np.take_along_axis(keep, order, axis=1)
        chosen = np.take_along_axis(block, order, axis=1)
        chosen_scores = np.take_along_axis(scores[start : start + batch_users], order, axis=1)
        out_ids[start : start + len(block)] = np.where(kept, chosen, -1)
        out_scores[start : start + len(block)] = np.where(kept, chosen_scores, -np.inf)
    return out_ids, out_scores


def similar_items(item_factors: np.ndarray, k: int, exclude_items: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Item-to-item top-k by cosine similarity of the item factors (never the item itself)."""
    norms = np.linalg.norm(item_factors, axis=1, keepdims=True)
    normed = (item_factors / np.maximum(norms, 1e-12)).astype(np.float32)
    itself = sp.identity(len(normed), dtype=np.float32, format="csr")
    return top_k_items(normed, normed, itself, k, exclude_items)
