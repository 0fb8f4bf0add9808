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
    parts = []
    for start in range(0, n, rows):  # the walk's products of a block of rows: sparse, as most pairs never meet
        stop = min(start + rows, n)
        block = sp.csr_matrix(p_iu[start:stop] @ p_ui)
        block.data *= damp[block.indices]
        block.eliminate_zeros()
        ids, scores = sparse_top_k(block, neighbours, None, row_offset=start)
        kept = ids >= 0
        kept_rows, _ = np.nonzero(kept)
        parts.append(sp.csr_matrix((scores[kept], (kept_rows, ids[kept])), shape=(stop - start, n)))
    if not parts:
        return sp.csr_matrix(np.zeros((0, 0), dtype=np.float32))
    return sp.csr_matrix(sp.vstack(parts, format="csr"), dtype=np.float32)


def _inverse(degree: np.ndarray) -> np.ndarray:
    out = np.zeros(len(degree), dtype=np.float64)
    out[degree > 0] = 1.0 / degree[degree > 0]
    return out


def sparse_top_k(
    matrix: sp.csr_matrix, k: int, exclude_items: np.ndarray | None, row_offset: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` largest stored entries (an item a row does not link is never listed),
    best first, ties by the lower item, leaving out the row's own item (row ``i`` is item
    ``i + row_offset``: a block of a square matrix's rows; None: rows are users, not items)
    and ``exclude_items``. Returns
    (ids int32, scores float32) of shape (rows, k), a short row padded with id -1 and -inf:
    what :func:`recsys.core.model._top_k` gives of the rows widened with -inf, in time of the
    stored entries instead of rows x items."""
    n = matrix.shape[0]
    ids = np.full((n, k), -1, dtype=np.int32)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    matrix = matrix.sorted_indices()  # a row's entries by item, so a stable sort breaks ties by item
    row = np.repeat(np.arange(n, dtype=np.int64), np.diff(matrix.indptr))
    col, value = matrix.indices.astype(np.int64), matrix.data.astype(np.float32)
    keep = np.isfinite(value) if row_offset is None else (col != row + row_offset) & np.isfinite(value)
    if exclude_items is not None and len(exclude_items):
        excluded = np.zeros(matrix.shape[1], dtype=bool)
        excluded[np.asarray(exclude_items, dtype=np.int64)] = True
        keep &= ~excluded[col]
    row, col, value = row[keep], col[keep], value[keep]
    if not len(row):
        return ids, scores
    values, items = _side_by_side(row, col, value, n)
    if values.shape[1] > 2 * k:  # long rows: only the entries at or above each row's k-th best are sorted
        kth = -np.partition(-values, k - 1, axis=1)[:, k - 1]
        row, place = np.nonzero(values >= kth[:, None])  # by row, then by item: the stable order is kept
        values, items = _side_by_side(row, items[row, place], values[row, place], n)
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    taken = min(k, values.shape[1])
    ids[:, :taken] = np.take_along_axis(items, order, axis=1)
    scores[:, :taken] = np.take_along_axis(values, order, axis=1)
    ids[np.isneginf(scores)] = -1
    return ids, scores


def _side_by_side(row: np.ndarray, col: np.ndarray, value: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Entries grouped by row (``row`` sorted) as two (n, longest row) arrays: their values
    (-inf where a row is shorter) and their items (-1 there), in the entries' order."""
    lengths = np.bincount(row, minlength=n)
    place = np.arange(len(row)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    width = int(lengths.max()) if len(row) else 0
    values = np.full((n, width), -np.inf, dtype=np.float32)
    items = np.full((n, width), -1, dtype=np.int64)
    values[row, place], items[row, place] = value, col
    return values, items
