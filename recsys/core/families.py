"""Item-to-item model families: EASE (Steck 2019) and RP3beta (Paudel et al. 2016) fits, and
the :class:`ItemModel` every item family comes out as (item-kNN too, fit by ``implicit`` in
:func:`recsys.core.model.train_model`).

An item model scores a user from the user's history row alone: ``score = x @ item_matrix``
with ``x`` the row's binary pairs. A user it was not trained on is scored the same way
(fold-in), and the item-to-item neighbours of ``item#`` lists are rows of
:attr:`ItemModel.neighbour_matrix`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

ITEM_FAMILIES = ("ease", "rp3beta", "itemknn")
BLOCK_ENTRIES = 16_000_000  # dense entries of one block of item rows (64 MB of float32)


@dataclass
class ItemModel:
    """A fitted item-to-item model: score(user, j) = sum over the user's items i of item_matrix[i, j].

    ``item_matrix`` is dense for EASE (its B, diagonal zero) and a CSR matrix for the
    neighbourhood families (at most K non-zeros a row).
    """

    item_matrix: np.ndarray | sp.csr_matrix
    model: str

    @property
    def n_items(self) -> int:
        return int(self.item_matrix.shape[0])

    @property
    def neighbour_matrix(self) -> np.ndarray | sp.csr_matrix:
        """Row i: how like item i each item is. EASE: column i of B (the weights with which
        every item predicts i; one positive scale per column, so its order is the order of
        the partial correlations with i); kNN and RP3beta: row i of W."""
        matrix = self.item_matrix
        return matrix.T if self.model == "ease" and isinstance(matrix, np.ndarray) else matrix

    def score(self, history: sp.csr_matrix) -> np.ndarray:
        """Dense float32 scores (rows of ``history`` x items) of the binary history rows: a new array."""
        product = binary(history) @ self.item_matrix
        dense = product.toarray() if sp.issparse(product) else product
        return np.asarray(dense, dtype=np.float32)


def binary(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """The 0/1 float32 matrix of the stored entries of ``matrix`` (explicit zeros dropped)."""
    out = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    out.eliminate_zeros()
    out.data[:] = 1.0
    return out


def fit_ease(matrix: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE's B = I - P diag(1 / diag(P)), P = (XᵀX + λI)⁻¹, X the binary matrix: items x items
    float32, diagonal zero. Raises ValueError when ``lam`` is not positive.

    Memory is one items x items float32 matrix: the Gram matrix is built into it by blocks of
    rows, Cholesky-inverted in place (the matrix is symmetric, so its transpose is the
    Fortran-ordered array LAPACK works on without a copy), and turned into B in place.
    """
    from scipy.linalg import lapack

    if lam <= 0:
        raise ValueError(f"ease_lambda must be more than 0, got {lam}")
    x = binary(matrix)
    n = x.shape[1]
    xt = x.T.tocsr()
    gram = np.empty((n, n), dtype=np.float32)
    rows = max(1, BLOCK_ENTRIES // max(n, 1))
    for start in range(0, n, rows):
        gram[start : start + rows] = (xt[start : start + rows] @ x).toarray()
    gram[np.diag_indices(n)] += np.float32(lam)
    fortran = gram.T  # the same symmetric matrix, Fortran-contiguous
    factor, info = lapack.spotrf(fortran, lower=False, clean=False, overwrite_a=True)
    if info == 0:
        factor, info = lapack.spotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"EASE: X'X + {lam} I could not be inverted (LAPACK info {info})")
    if not np.shares_memory(factor, gram):  # f2py copied after all: keep its result
        gram = np.ascontiguousarray(factor.T)
    _mirror_lower_to_upper(gram, rows)
    scale = -np.diag(gram).copy()
    gram /= scale[None, :]
    np.fill_diagonal(gram, 0.0)
    return gram


def _mirror_lower_to_upper(square: np.ndarray, rows: int) -> None:
    """Make a matrix whose lower triangle (diagonal included) is right symmetric, in place,
    a block of rows at a time (LAPACK's upper triangle of the transpose is this lower one)."""
    n = square.shape[0]
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        square[start:stop, stop:] = square[stop:, start:stop].T
        block = square[start:stop, start:stop]
        block[...] = np.tril(block) + np.tril(block, -1).T


def fit_rp3beta(matrix: sp.csr_matrix, alpha: float, beta: float, neighbours: int) -> sp.csr_matrix:
    """RP3beta's W (items x items, CSR float32): the two-step walk item -> user -> item over the
    binary matrix, each transition probability raised to ``alpha``, each column divided by
    the popularity (users) of its item to the power ``beta``, the diagonal left out, and each
    row kept to its ``neighbours`` largest entries.

    A user's score, ``x @ W``, is the three-step walk from the user up to the factor
    ``(1 / len(history)) ** alpha`` of the first step, the same for every item of a list.
    """
    x = binary(matrix)
    n_users, n = x.shape
    user_degree = np.asarray(x.sum(axis=1)).ravel()
    item_degree = np.asarray(x.sum(axis=0)).ravel()
    p_ui = sp.diags(_inverse(user_degree)) @ x
    p_iu = (sp.diags(_inverse(item_degree)) @ x.T).tocsr()
    p_ui.data **= alpha
    p_iu.data **= alpha
    damp = np.zeros(n, dtype=np.float64)
    damp[item_degree > 0] = item_degree[item_degree > 0] ** -beta
    rows = max(1, BLOCK_ENTRIES // max(n, 1))
    return _top_rows(lambda start, stop: (p_iu[start:stop] @ p_ui).toarray() * damp[None, :], n, rows, neighbours)


def _inverse(degree: np.ndarray) -> np.ndarray:
    out = np.zeros(len(degree), dtype=np.float64)
    out[degree > 0] = 1.0 / degree[degree > 0]
    return out


def _top_rows(block_of: Callable[[int, int], np.ndarray], n: int, rows: int, keep: int) -> sp.csr_matrix:
    """The n x n CSR matrix of each row's ``keep`` largest entries (non-negative), off the diagonal,
    from dense blocks of rows ``block_of(start, stop)``."""
    parts = []
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        dense = np.asarray(block_of(start, stop), dtype=np.float32)
        dense[np.arange(stop - start), np.arange(start, stop)] = 0.0
        if keep < n:
            top = np.argpartition(-dense, keep - 1, axis=1)[:, :keep]
            kept = np.zeros_like(dense)
            np.put_along_axis(kept, top, np.take_along_axis(dense, top, axis=1), axis=1)
            dense = kept
        parts.append(sp.csr_matrix(dense))
    out = sp.vstack(parts, format="csr") if parts else sp.csr_matrix(np.zeros((0, 0), dtype=np.float32))
    out.eliminate_zeros()
    return out.astype(np.float32)
