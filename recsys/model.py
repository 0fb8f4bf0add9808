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


def scale_confidence(matrix: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    """ALS confidence ``alpha * log1p(x)``: repeated views saturate instead of dominating."""
    scaled = matrix.copy()
    scaled.data = (alpha * np.log1p(scaled.data)).astype(np.float32)
    return scaled


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
        model.fit(scale_confidence(matrix, params.alpha), show_progress=False)
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
