"""What fitting a candidate costs, estimated before it runs, so that the tuning budget bounds
the screening too (issue 17: at scale 10 the 28 screens cost 1,338 s against a 600 s budget,
949 s of it EASE, whose items³ inversion does not shrink with the screening's users).

Each family's fit grows with its own leading terms of the matrix's shape (:func:`work`). The
constant in front of them is this machine's, right now: :class:`Probe` fits each family once
on a small seeded matrix, times it, and scales that time by the ratio of the work of the
real shape to the probe's. A probe costs well under a second; the estimate is meant to be
within a factor of about two, which is what a budget needs, and the tuning logs put it beside
the seconds the fit really took.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsys.core.model import ModelParams, train_model

PROBE_SEED = 7
PROBE_USERS, PROBE_ITEMS, PROBE_PER_USER = 4_000, 2_000, 12
PROBE_ITERATIONS = 2  # the factor families' probe: the candidate's factors, two iterations
ALS_SOLVE_SHARE = 0.1  # ALS: a factors² solve per user and item costs about this many per-pair products


@dataclass(frozen=True)
class Shape:
    """What a fit's cost depends on: users, items, stored pairs, and the sum of the squared
    user degrees (the item-item products of the Gram matrix, RP3beta's walk and item-kNN)."""

    users: int
    items: int
    pairs: int
    co_pairs: int

    @classmethod
    def of(cls, matrix: sp.csr_matrix) -> Shape:
        degrees = np.diff(matrix.indptr).astype(np.int64)
        return cls(int(matrix.shape[0]), int(matrix.shape[1]), int(matrix.nnz), int(np.dot(degrees, degrees)))

    @classmethod
    def of_indptr(cls, indptr: np.ndarray, items: int) -> Shape:
        """The shape of a CSR matrix from its row pointer alone (no values or columns loaded)."""
        degrees = np.diff(indptr).astype(np.int64)
        return cls(len(degrees), int(items), int(degrees.sum()), int(np.dot(degrees, degrees)))


def work(params: ModelParams, shape: Shape) -> float:
    """The leading terms of the family's fit on ``shape``, in the family's own unit (only
    ratios between two shapes of one family mean anything):

    - EASE: the Gram matrix's products and its items² dense passes (its items³ Cholesky
      inversion is timed apart, see :meth:`Probe.seconds`);
    - RP3beta: the walk's products plus the items² dense rows it keeps the top of;
    - item-kNN: the item-item products plus each item's neighbours;
    - ALS: per iteration, a factors-long product per pair and a factors² solve per user and
      item (which BLAS does far faster per operation: ``ALS_SOLVE_SHARE``);
    - BPR: per iteration, a factors-long update per pair;
    - a blend: the sum of its two parts (in seconds, see :meth:`Probe.seconds`).
    """
    f, it = float(params.factors), float(params.iterations)
    if params.model == "ease":
        return float(shape.items) ** 2 + shape.co_pairs
    if params.model == "rp3beta":
        return float(shape.co_pairs) + float(shape.items) ** 2
    if params.model == "itemknn":
        return float(shape.co_pairs) + float(shape.items) * params.neighbours
    if params.model == "als":
        return it * (shape.pairs * f + ALS_SOLVE_SHARE * (shape.users + shape.items) * f * f)
    if params.model == "bpr":
        return it * shape.pairs * f
    raise ValueError(f"no cost model for the family {params.model!r}")


class Probe:
    """Times each family once on a seeded random matrix of a fixed small shape (cached per
    family and the parameters its cost depends on), and scales those seconds to a shape.

    EASE's items³ inversion is timed on its own (LAPACK's Cholesky inversion of a probe-sized
    matrix) and scaled by items³; the rest of its probe fit by :func:`work`. At the probe's
    size the inversion is a small part of the fit; at 25,000 items it is nearly all of it."""

    def __init__(self) -> None:
        self.shape = Shape.of(probe_matrix())
        self._seconds: dict[tuple[Any, ...], tuple[float, float]] = {}
        self._inversion: float | None = None

    def seconds(self, params: ModelParams, shape: Shape) -> float:
        """Estimated seconds of fitting ``params`` on a matrix of ``shape``."""
        if params.model == "blend":
            return sum(self.seconds(ModelParams(**dict(part)), shape) for part in params.parts)
        probe_params = self._probe_params(params)
        key = dataclasses.astuple(probe_params)
        if key not in self._seconds:
            matrix = probe_matrix()
            started = time.perf_counter()
            train_model(matrix, probe_params)
            self._seconds[key] = (time.perf_counter() - started, work(probe_params, self.shape))
        seconds, probe_work = self._seconds[key]
        if params.model != "ease":
            return seconds * work(params, shape) / max(probe_work, 1.0)
        inversion = self.inversion_seconds()
        rest = max(seconds - inversion, 0.0)
        return inversion * (shape.items / PROBE_ITEMS) ** 3 + rest * work(params, shape) / max(probe_work, 1.0)

    def inversion_seconds(self) -> float:
        """Seconds of LAPACK's float32 Cholesky inversion (spotrf, spotri) of a PROBE_ITEMS-square
        positive definite matrix: what EASE's items³ step costs at the probe's size."""
        if self._inversion is None:
            from scipy.linalg import lapack

            rng = np.random.default_rng(PROBE_SEED)
            square = rng.random((PROBE_ITEMS, PROBE_ITEMS), dtype=np.float32)
            spd = np.asfortranarray(square @ square.T + np.float32(PROBE_ITEMS) * np.eye(PROBE_ITEMS, dtype=np.float32))
            started = time.perf_counter()
            factor, _ = lapack.spotrf(spd, lower=False, clean=False, overwrite_a=True)
            lapack.spotri(factor, lower=False, overwrite_c=True)
            self._inversion = time.perf_counter() - started
        return self._inversion

    @staticmethod
    def _probe_params(params: ModelParams) -> ModelParams:
        """The probe's parameters: the candidate's family with the parameters its cost depends on
        and that :func:`work` does not scale (the factors of ALS and BPR, the neighbours kept,
        item-kNN's similarity); two iterations, which :func:`work` scales to the candidate's.
        EASE's λ, RP3beta's α and β and ALS's weights cost the same whatever their value."""
        if params.model in ("als", "bpr"):
            return ModelParams(model=params.model, factors=params.factors, iterations=PROBE_ITERATIONS)
        if params.model == "itemknn":
            return ModelParams(model="itemknn", similarity=params.similarity,
                               neighbours=min(params.neighbours, PROBE_ITEMS))
        if params.model == "rp3beta":
            return ModelParams(model="rp3beta", neighbours=min(params.neighbours, PROBE_ITEMS))
        return ModelParams(model=params.model)


def probe_matrix() -> sp.csr_matrix:
    """The probe's users x items binary matrix: seeded, each user ``PROBE_PER_USER`` distinct
    items drawn with a long-tailed popularity (a Zipf-like 1/rank weight), as a store's are."""
    rng = np.random.default_rng(PROBE_SEED)
    weights = 1.0 / np.arange(1, PROBE_ITEMS + 1)
    weights /= weights.sum()
    cols = np.concatenate([rng.choice(PROBE_ITEMS, PROBE_PER_USER, replace=False, p=weights)
                           for _ in range(PROBE_USERS)])
    rows = np.repeat(np.arange(PROBE_USERS), PROBE_PER_USER)
    data = np.ones(len(cols), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(PROBE_USERS, PROBE_ITEMS))


def within_budget(
    estimates: list[float], families: list[str], allowed: float
) -> tuple[list[int], list[int]]:
    """Which candidates (indexes into ``estimates``) are screened when their estimated seconds
    add up to more than ``allowed``: the costliest are cut first (ties: the later in the
    grid), but every family keeps its cheapest candidate (ties: the first in the grid), so
    the hold-out still chooses among the families. Returns (kept, cut), each in grid order."""
    total = math.fsum(estimates)
    keep = set(range(len(estimates)))
    protected = {min((i for i, fam in enumerate(families) if fam == family), key=lambda i: (estimates[i], i))
                 for family in set(families)}
    for i in sorted(keep - protected, key=lambda i: (-estimates[i], -i)):
        if total <= allowed:
            break
        keep.discard(i)
        total -= estimates[i]
    return sorted(keep), sorted(set(range(len(estimates))) - keep)
