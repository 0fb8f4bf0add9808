"""The one wrapper around ``implicit`` and the one place that builds models: the user × item
matrix, model training (ALS, BPR, EASE, RP3beta, item-kNN) and top-k lists.

Models take a users × items CSR matrix and nothing else; ids stay outside, as the row and
column labels returned by :func:`build_user_item_matrix`. A family comes out as
:class:`Factors` (ALS, BPR: user and item vectors whose dot product ranks items) or as
:class:`recsys.core.families.ItemModel` (an item-item matrix that scores a user's history
row). Both are a :data:`Model`: :func:`recommend_users` and :func:`similar_items` serve
either through the same top-k, so recommending, evaluating and saving never ask which
family made them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recsys.config import SIMILARITIES
from recsys.core.families import ItemModel, binary, fit_ease, fit_rp3beta, sparse_top_k

log = logging.getLogger(__name__)

# The weight BM25 leaves an entry whose idf is not positive (see scale_confidence).
BM25_FLOOR = 1e-3

DEFAULT_BATCH_USERS = 20_000
TOPK_BLOCK_SCORES = 8_000_000  # scores per top-k block (32 MB of float32), per thread
SPARSE_BATCH_USERS = 5_000  # users per block of a sparse item model's products (each links some thousands of items)


# The fields of ModelParams each family is fit with (``model`` is always kept).
FAMILY_FIELDS: dict[str, tuple[str, ...]] = {
    "als": ("factors", "regularization", "alpha", "iterations", "random_state", "weighting"),
    "bpr": ("factors", "regularization", "iterations", "random_state", "learning_rate"),
    "ease": ("ease_lambda",),
    "rp3beta": ("rp3_alpha", "rp3_beta", "neighbours"),
    "itemknn": ("similarity", "neighbours"),
    "blend": ("blend_weight", "parts"),
}


@dataclass(frozen=True)
class ModelParams:
    """What a model is trained with: the family (a key of FAMILY_FIELDS) and its parameters."""

    model: str = "als"
    factors: int = 64
    regularization: float = 0.05
    alpha: float = 2.0  # ALS: confidence = alpha * weighting(x)
    iterations: int = 10
    random_state: int = 42
    weighting: str = "log"  # ALS: how the confidence matrix is weighted: "log" or "bm25"
    learning_rate: float = 0.01  # BPR: SGD step
    ease_lambda: float = 500.0  # EASE: the L2 penalty on B
    rp3_alpha: float = 0.6  # RP3beta: exponent of the transition probabilities
    rp3_beta: float = 0.5  # RP3beta: exponent of the popularity each item's column is divided by
    neighbours: int = 200  # RP3beta, item-kNN: the non-zeros kept per item row
    similarity: str = "bm25"  # item-kNN: implicit's "cosine", "bm25" or "tfidf" recommender
    blend_weight: float = 0.5  # blend: the first part's share of the standardised scores
    parts: tuple[dict[str, Any], ...] = ()  # blend: the two parts' ModelParams.as_dict()

    def as_dict(self) -> dict[str, Any]:
        """The family and the fields that matter to it (FAMILY_FIELDS; an unknown family keeps all)."""
        values = dataclasses.asdict(self)
        wanted = FAMILY_FIELDS.get(self.model)
        return {k: v for k, v in values.items() if k == "model" or wanted is None or k in wanted}


@dataclass
class Factors:
    """A trained factor model: score(user, item) = user_factors[user] · item_factors[item]."""

    user_factors: np.ndarray
    item_factors: np.ndarray
    model: str = "als"

    @property
    def item_embeddings(self) -> np.ndarray:
        """Item vectors for item-to-item similarity: BPR's last column is the item bias (its
        users' last column is 1), which says how popular an item is, not what it is like."""
        return self.item_factors[:, :-1] if self.model == "bpr" else self.item_factors


@dataclass
class Blend:
    """Two fitted models of different families whose scores are mixed per user:
    ``weight * z(first) + (1 - weight) * z(second)``, where ``z`` standardises a user's scores
    over the items (mean 0, standard deviation 1), so neither family's scale decides. The
    item-to-item lists (``item#``) are the first part's."""

    first: Model
    second: Model
    weight: float
    first_params: ModelParams
    second_params: ModelParams
    model: str = "blend"


# What train_model returns and recommend_users / similar_items serve.
Model = Factors | ItemModel | Blend


def needs_history(model: Model) -> bool:
    """True when the model scores users from their history rows (an item model, or a blend
    with one): its callers pass the users x items matrix."""
    if isinstance(model, Blend):
        return needs_history(model.first) or needs_history(model.second)
    return isinstance(model, ItemModel)


def standardise_rows(scores: np.ndarray) -> np.ndarray:
    """Each row minus its mean, divided by its standard deviation (a constant row becomes 0),
    in place; returns it."""
    scores -= scores.mean(axis=1, keepdims=True)
    spread = scores.std(axis=1, keepdims=True)
    scores /= np.where(spread > 0, spread, 1.0).astype(scores.dtype)
    return scores


def history_rows(model: ItemModel, rows: np.ndarray, matrix: sp.csr_matrix | None) -> sp.csr_matrix:
    """The history rows ``matrix[rows]`` an item model scores; raises ValueError without a matrix."""
    if matrix is None:
        raise ValueError(f"{model.model} scores users from their history rows: pass the users x items matrix")
    return matrix[rows]


def _row_scorer(model: Model, rows: np.ndarray, matrix: sp.csr_matrix | None) -> Callable[[int, int], np.ndarray]:
    """``score(start, stop)``: the dense float32 scores (a new array) of the users at
    ``rows[start:stop]``, for any family."""
    if isinstance(model, ItemModel):
        history = history_rows(model, rows, matrix)
        item_model = model
        return lambda start, stop: item_model.score(history[start:stop])
    if isinstance(model, Factors):
        users = model.user_factors[rows]
        items_t = np.ascontiguousarray(model.item_factors, dtype=np.float32).T
        return lambda start, stop: np.ascontiguousarray(users[start:stop], dtype=np.float32) @ items_t
    first, second = _row_scorer(model.first, rows, matrix), _row_scorer(model.second, rows, matrix)
    weight = model.weight

    def mixed(start: int, stop: int) -> np.ndarray:
        scores = standardise_rows(first(start, stop))
        scores *= np.float32(weight)
        scores += np.float32(1.0 - weight) * standardise_rows(second(start, stop))
        return scores

    return mixed


@dataclass
class UserItemMatrix:
    """A users × items CSR matrix of confidences with its row and column ids."""

    matrix: sp.csr_matrix
    user_ids: pa.Array
    item_ids: pa.Array

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape


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


@dataclass
class PairEvents:
    """The window's events per (user, item) pair and event type, with the age of each event:
    what every candidate builds its confidence matrix from, whatever event weights and
    recency half-life it tries, without re-reading the events.

    The pairs are the non-zeros of a users × items CSR structure (``indptr``, ``indices``).
    Entry ``e`` (sorted by pair, then type) says pair ``pair[e]`` had ``counts[e]`` events of
    type ``event_types[type_code[e]]``, whose ages in days are ``ages[offsets[e]:offsets[e + 1]]``.
    """

    user_ids: pa.Array
    item_ids: pa.Array
    indptr: np.ndarray
    indices: np.ndarray
    event_types: list[str]
    pair: np.ndarray
    type_code: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray
    ages: np.ndarray

    ARRAYS = ("indptr", "indices", "pair", "type_code", "counts", "ages")  # offsets: cumsum of counts

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.user_ids), len(self.item_ids)

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything but the ids, as numpy arrays (for ``np.savez``)."""
        return {"event_types": np.array(self.event_types, dtype=str), **{k: getattr(self, k) for k in self.ARRAYS}}

    @classmethod
    def from_arrays(cls, arrays: Any, user_ids: pa.Array, item_ids: pa.Array) -> PairEvents:
        return cls(user_ids=user_ids, item_ids=item_ids, event_types=[str(t) for t in arrays["event_types"]],
                   offsets=np.concatenate([[0], np.cumsum(arrays["counts"], dtype=np.int64)]),
                   **{k: arrays[k] for k in cls.ARRAYS})


@dataclass
class SortedEvents:
    """The weighted events with their ids encoded and sorted by (user, item, type), newest
    first: what :func:`build_pair_events` indexes for each end. Holds no string per event, so
    the caller can drop the events table before the per-end indexes are built (at scale 10
    the table is 292 MiB of Arrow strings)."""

    users: pa.Array
    items: pa.Array
    types: pa.Array
    key: np.ndarray  # (user * items + item) * types + type, sorted
    seconds: np.ndarray  # the epoch second of each event, newest first within a key

    @classmethod
    def of(cls, events: pa.Table) -> SortedEvents:
        """One hash pass per id column, one sort."""
        users, user = _sorted_codes(events["user_id"])
        items, item = _sorted_codes(events["item_id"])
        types, kind = _sorted_codes(events["event_type"])
        seconds = events["event_us"].to_numpy() // 1_000_000  # floor: the second each event falls in
        n_items, n_types = max(len(items), 1), max(len(types), 1)
        # One int64 key per (user, item, type), in that order: 10M users x 1M items x 100 types fit.
        key = (user * n_items + item) * n_types + kind
        del user, item, kind
        key, seconds = _sort_by_key_newest_first(key, seconds)
        return cls(users=users, items=items, types=types, key=key, seconds=seconds)

    def before(self, end: dt.datetime) -> PairEvents:
        """The PairEvents of the events before ``end``."""
        return _pair_events_before(self.key, self.seconds, self.users, self.items, self.types, end)


def _sort_by_key_newest_first(key: np.ndarray, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(key, seconds) sorted by key, then newest first. Events of one key in the same second
    have the same age, so any order among them gives the same arrays. When the key and the age
    in seconds fit in 62 bits together (the scale-10 store: 37 + 23), both are packed into one
    int64 and sorted in place by one ``np.sort``; otherwise ``np.lexsort`` (8M shuffled events:
    lexsort and gather 11.6 s, the packed sort 0.9 s)."""
    if not len(key):
        return key, seconds
    newest = int(seconds.max())
    age = newest - seconds
    age_bits = max(int(age.max()).bit_length(), 1)
    if int(key.max()).bit_length() + age_bits <= 62:
        packed = (key << age_bits) | age
        del age
        packed.sort()
        return packed >> age_bits, newest - (packed & ((1 << age_bits) - 1))
    order = np.lexsort((age, key))
    return key[order], seconds[order]


def _pair_events_before(
    key: np.ndarray, seconds: np.ndarray, users: pa.Array, items: pa.Array, types: pa.Array, end: dt.datetime
) -> PairEvents:
    """The PairEvents of the sorted (key, epoch second) events before ``end`` (see
    :func:`build_pair_events`); raises ValueError when ``end`` is not a whole second."""
    if end.microsecond:
        raise ValueError(f"end {end.isoformat()} is not a whole second: event ages count whole seconds")
    n_items, n_types = max(len(items), 1), max(len(types), 1)
    end_s = int(end.timestamp())
    keep = seconds < end_s
    if not keep.all():  # with every event kept, every id occurs and the numbering stands
        key, seconds = key[keep], seconds[keep]
        user_kept, user = _dense(key // (n_items * n_types), len(users))
        item_kept, item = _dense(key // n_types % n_items, len(items))
        type_kept, kind = _dense(key % n_types, len(types))
        users, items, types = (
            users.filter(pa.array(user_kept)),
            items.filter(pa.array(item_kept)),
            types.filter(pa.array(type_kept)),
        )
        n_items, n_types = max(len(items), 1), max(len(types), 1)
        key = (user * n_items + item) * n_types + kind  # the same order, renumbered
        del user, item, kind
    del keep
    pair_key = key // n_types
    new_entry = np.ones(len(key), dtype=bool)
    new_entry[1:] = key[1:] != key[:-1]
    new_pair = np.ones(len(key), dtype=bool)
    new_pair[1:] = pair_key[1:] != pair_key[:-1]
    entry_starts = np.flatnonzero(new_entry)
    pair_starts = pair_key[np.flatnonzero(new_pair)]
    counts = np.diff(np.append(entry_starts, len(key))).astype(np.int32)
    return PairEvents(
        user_ids=users,
        item_ids=items,
        indptr=np.concatenate([[0], np.cumsum(np.bincount(pair_starts // n_items, minlength=len(users)))]).astype(
            np.int64
        ),
        indices=(pair_starts % n_items).astype(np.int32),
        event_types=types.to_pylist(),
        pair=(np.cumsum(new_pair)[entry_starts] - 1).astype(np.int32),
        type_code=(key[entry_starts] % n_types).astype(np.int16),
        counts=counts,
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        ages=(end_s - seconds) / 86_400.0,
    )


def take_users(events: PairEvents, rows: np.ndarray) -> PairEvents:
    """The PairEvents of the users at sorted, distinct ``rows`` only (every item column kept):
    their pairs, entries and ages, in the same order, with rows renumbered 0..len(rows)-1."""
    keep_user = np.zeros(events.shape[0], dtype=bool)
    keep_user[rows] = True
    keep_pair = np.repeat(keep_user, np.diff(events.indptr))
    keep_entry = keep_pair[events.pair]
    counts = events.counts[keep_entry]
    return PairEvents(
        user_ids=events.user_ids.take(pa.array(rows)),
        item_ids=events.item_ids,
        indptr=np.concatenate([[0], np.cumsum(np.diff(events.indptr)[rows])]).astype(np.int64),
        indices=events.indices[keep_pair],
        event_types=events.event_types,
        pair=(np.cumsum(keep_pair) - 1)[events.pair[keep_entry]].astype(np.int32),
        type_code=events.type_code[keep_entry],
        counts=counts,
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        ages=events.ages[np.repeat(keep_entry, events.counts)],
    )


def _dense(codes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(which of 0..n-1 occur in ``codes``, each code renumbered among those that occur):
    an order-keeping renumbering in two linear passes."""
    present = np.zeros(n, dtype=bool)
    present[codes] = True
    return present, (np.cumsum(present) - 1)[codes]


def _sorted_codes(values: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """(the sorted distinct values, each value's position among them as int64)."""
    encoded = values.combine_chunks().dictionary_encode()
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return encoded.dictionary.take(pa.array(order)), rank[encoded.indices.to_numpy(zero_copy_only=False)]


def pairs_matrix(events: PairEvents, event_types: Any = None) -> sp.csr_matrix:
    """The users × items 0/1 matrix of every pair with an event, or with ``event_types``,
    only of the pairs with an event of one of those types."""
    shape = events.shape
    if event_types is None:
        return sp.csr_matrix(
            (np.ones(len(events.indices), dtype=np.float32), events.indices, events.indptr), shape=shape
        )
    wanted = np.isin(np.array(events.event_types, dtype=object), list(event_types))
    pairs = np.unique(events.pair[wanted[events.type_code]])
    rows = np.repeat(np.arange(shape[0]), np.diff(events.indptr))[pairs]
    return sp.csr_matrix((np.ones(len(pairs), dtype=np.float32), (rows, events.indices[pairs])), shape=shape)


def confidence_matrix(events: PairEvents, weights: dict[str, float], half_life_days: float) -> UserItemMatrix:
    """The users × items confidence matrix of one candidate: per pair, the sum over its events
    of the event type's weight, each event decayed by ``0.5 ** (age / half_life_days)``
    when the half-life is > 0 (an event that old counts half).

    Event types missing from ``weights`` weigh 0; pairs left with confidence 0 are not stored
    (the model does not see them).
    """
    type_weight = np.array([weights.get(t, 0.0) for t in events.event_types], dtype=np.float64)
    if half_life_days > 0 and len(events.ages):
        per_entry = np.add.reduceat(np.power(0.5, events.ages / half_life_days), events.offsets[:-1])
    else:
        per_entry = events.counts.astype(np.float64)
    sums = np.bincount(events.pair, weights=type_weight[events.type_code] * per_entry, minlength=len(events.indices))
    matrix = sp.csr_matrix((sums.astype(np.float32), events.indices, events.indptr), shape=events.shape)
    matrix.eliminate_zeros()
    return UserItemMatrix(matrix=matrix, user_ids=events.user_ids, item_ids=events.item_ids)


def scale_confidence(matrix: sp.csr_matrix, alpha: float, weighting: str = "log") -> sp.csr_matrix:
    """The matrix ALS fits on.

    ``log``: ``alpha * log1p(x)``, so repeated views saturate instead of dominating.
    ``bm25``: ``alpha * BM25(x)`` with each user's history as the document and the items as
    its terms: an item many users touched weighs less (idf over items), and so does each
    item of a long history (length norm per user). Raises ValueError for another weighting.

    The other orientation (items as documents, as in ``implicit``'s last.fm example) damps
    an item by its own popularity, and collapsed on the larger bench store (see the tuning
    figures in docs/benchmarks.md).
    ``implicit``'s idf, ``log(N) - log1p(df)``, is not positive for an item touched by nearly
    every user (only in tiny stores); such entries keep a small positive weight instead, since
    ALS would read a negative one as a dislike.
    """
    if weighting == "log":
        scaled = matrix.copy()
        scaled.data = (alpha * np.log1p(scaled.data)).astype(np.float32)
        return scaled
    if weighting == "bm25":
        from implicit.nearest_neighbours import bm25_weight

        weighted: sp.csr_matrix = bm25_weight(matrix.tocoo(), K1=100, B=0.8).tocsr()
        weighted.data = (alpha * np.maximum(weighted.data, BM25_FLOOR)).astype(np.float32)
        return weighted.astype(np.float32)
    raise ValueError(f"unknown weighting {weighting!r}; expected 'log' or 'bm25'")


def train_model(matrix: sp.csr_matrix, params: ModelParams) -> Model:
    """Fit the family ``params.model`` on a users × items confidence matrix; returns the model.

    ALS fits ``scale_confidence(matrix)``. BPR and the item families only see which entries
    are non-zero (BPR samples a liked item per step, whatever its weight; the item families
    are fit on the binary matrix, which scored better than weighted input on real logs).
    Raises ValueError for another family.
    """
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    model: Model
    if params.model == "blend":
        if len(params.parts) != 2:
            raise ValueError(f"a blend has two parts, got {len(params.parts)}")
        first, second = (ModelParams(**dict(part)) for part in params.parts)
        return Blend(train_model(matrix, first), train_model(matrix, second), params.blend_weight, first, second)
    if params.model == "ease":  # one Cholesky inversion: BLAS threads are all it spends
        model = ItemModel(fit_ease(matrix, params.ease_lambda), "ease")
    elif params.model == "rp3beta":
        model = ItemModel(fit_rp3beta(matrix, params.rp3_alpha, params.rp3_beta, params.neighbours), "rp3beta")
    # implicit runs its own threads; a multi-threaded BLAS under them only thrashes.
    else:
        with threadpool_limits(1, "blas"):
            model = _fit_implicit(matrix, params)
    seconds = time.perf_counter() - started
    log.info(
        "%s fit: %d users x %d items, %d non-zeros, %s in %.1f s",
        params.model.upper(), matrix.shape[0], matrix.shape[1], matrix.nnz, params.as_dict(), seconds,
    )
    return model


def _fit_implicit(matrix: sp.csr_matrix, params: ModelParams) -> Model:
    """The families ``implicit`` fits: ALS, BPR, and its item-item recommenders (item-kNN)."""
    if params.model == "als":
        from implicit.cpu.als import AlternatingLeastSquares

        als = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=1.0,  # confidence is scaled by scale_confidence, once
            iterations=params.iterations,
            random_state=params.random_state,
            calculate_training_loss=False,
        )
        als.fit(scale_confidence(matrix, params.alpha, params.weighting), show_progress=False)
        return Factors(als.user_factors, als.item_factors, "als")
    if params.model == "bpr":
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        bpr = BayesianPersonalizedRanking(
            factors=params.factors,
            learning_rate=params.learning_rate,
            regularization=params.regularization,
            iterations=params.iterations,
            random_state=params.random_state,
            num_threads=1,  # SGD on several threads races, and a rerun must give the same lists
        )
        bpr.fit(binary(matrix), show_progress=False)
        return Factors(bpr.user_factors, bpr.item_factors, "bpr")
    if params.model == "itemknn":
        from implicit import nearest_neighbours
        from implicit.utils import ParameterWarning

        kinds = {"cosine": nearest_neighbours.CosineRecommender, "bm25": nearest_neighbours.BM25Recommender,
                 "tfidf": nearest_neighbours.TFIDFRecommender}
        if params.similarity not in kinds:
            raise ValueError(f"unknown similarity {params.similarity!r}; expected one of {SIMILARITIES}")
        knn = kinds[params.similarity](K=params.neighbours)
        with warnings.catch_warnings():  # implicit hands its own weighted COO matrix to itself and warns
            warnings.simplefilter("ignore", ParameterWarning)
            knn.fit(binary(matrix), show_progress=False)
        return ItemModel(sp.csr_matrix(knn.similarity, dtype=np.float32), "itemknn")
    raise ValueError(f"unknown model family {params.model!r}; expected one of {tuple(FAMILY_FIELDS)}")


def fold_in_als(item_factors: np.ndarray, history: sp.csr_matrix, params: ModelParams) -> np.ndarray:
    """ALS user vectors of the users x items ``history`` rows (confidence, before
    :func:`scale_confidence`; its columns the rows of ``item_factors``), solved against the
    fixed item factors by ``implicit``'s ``recalculate_user`` (one exact least-squares solve
    per user): what a full fit's user step would give these histories. Returns float32
    (users x factors)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    factors = np.ascontiguousarray(item_factors, dtype=np.float32)
    als = AlternatingLeastSquares(factors=factors.shape[1], regularization=params.regularization, alpha=1.0,
                                  random_state=params.random_state, calculate_training_loss=False)
    als.item_factors = factors
    scaled = scale_confidence(history, params.alpha, params.weighting)
    with threadpool_limits(1, "blas"):
        users: np.ndarray = als.recalculate_user(np.arange(history.shape[0]), scaled)
    return users.astype(np.float32, copy=False)


def fold_in(model: Model, params: ModelParams, history: sp.csr_matrix) -> Model:
    """The model that scores the rows of ``history`` (users x the model's items, confidences
    as :func:`confidence_matrix` builds them), whether it was trained on those users or not:
    row r of the result's users is the r-th history row, for :func:`recommend_users` with
    ``rows = arange(len(history))`` and ``matrix = history``.

    - Item models (EASE, RP3beta, item-kNN) score a history row by itself: returned as they
      are, and a folded-in user gets exactly the scores a training row would.
    - ALS: each user's vector is its exact user step against the fixed item factors
      (:func:`fold_in_als`), what a full fit's last sweep gives (close, not equal: the fit's
      item factors moved after its last user step).
    - a blend folds in each of its parts.
    - BPR has no closed-form user step (a least-squares solve against its embeddings ranked
      worse than its own users did on a two-block test): a user is the mean embedding of
      the items in their history, scaled to the mean length of the trained user vectors so
      the item biases (its last column, kept at 1 for the user) weigh as in the fit.

    Raises ValueError when ``history`` has not the model's items as columns.
    """
    if history.shape[1] != model_items(model):
        raise ValueError(f"fold-in: the history has {history.shape[1]} item columns, the {model.model} model "
                         f"{model_items(model)}; map the history to the model's items first")
    if isinstance(model, ItemModel):
        return model
    if isinstance(model, Blend):
        return Blend(fold_in(model.first, model.first_params, history),
                     fold_in(model.second, model.second_params, history), model.weight, model.first_params,
                     model.second_params)
    if model.model == "als":
        return Factors(fold_in_als(model.item_factors, history, params), model.item_factors, "als")
    touched = binary(history)
    counts = np.maximum(np.asarray(touched.sum(axis=1)).ravel(), 1.0)
    users = np.asarray(touched @ model.item_embeddings, dtype=np.float32) / counts[:, None].astype(np.float32)
    trained = np.linalg.norm(model.user_factors[:, :-1], axis=1).mean() if len(model.user_factors) else 0.0
    folded = np.linalg.norm(users, axis=1)
    if trained > 0 and folded[folded > 0].size:
        users *= np.float32(trained / folded[folded > 0].mean())
    with_bias = np.hstack([users, np.ones((users.shape[0], 1), dtype=np.float32)])
    return Factors(with_bias, model.item_factors, model.model)


def reindex_items(model: Model, columns: np.ndarray, their: np.ndarray, n_items: int) -> Model:
    """The model in another item space of ``n_items`` columns, where column ``columns[j]`` is
    the model's item ``their[j]``; an item it does not know gets a zero vector (factor models)
    or a zero row and column (item models), so the caller excludes those items. User factors
    are kept as they are."""
    if isinstance(model, Blend):
        return Blend(reindex_items(model.first, columns, their, n_items),
                     reindex_items(model.second, columns, their, n_items), model.weight, model.first_params,
                     model.second_params)
    if isinstance(model, Factors):
        items = np.zeros((n_items, model.item_factors.shape[1]), dtype=np.float32)
        items[columns] = model.item_factors[their]
        return Factors(model.user_factors, items, model.model)
    select = sp.csr_matrix((np.ones(len(columns), dtype=np.float32), (columns, their)),
                           shape=(n_items, model.n_items))
    matrix = model.item_matrix
    if isinstance(matrix, np.ndarray):
        dense = np.zeros((n_items, n_items), dtype=np.float32)
        dense[np.ix_(columns, columns)] = matrix[np.ix_(their, their)]
        return ItemModel(dense, model.model)
    return ItemModel(sp.csr_matrix(select @ matrix @ select.T, dtype=np.float32), model.model)


def _top_k(
    score_rows: Callable[[int, int], np.ndarray],
    n: int,
    n_items: int,
    seen: sp.csr_matrix | None,
    k: int,
    exclude_items: np.ndarray | None,
    batch_users: int = DEFAULT_BATCH_USERS,
    threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items of the scores ``score_rows(start, stop)`` gives for rows start..stop-1 of n
    (a new float32 array: it is masked in place),
    best first (ties: lower item index first), in blocks of at most ``batch_users`` rows and
    ``TOPK_BLOCK_SCORES`` scores on ``threads`` threads (0: one per core, at most 4).

    ``seen`` (rows aligned with the n rows) and ``exclude_items`` are never returned; nor is an
    item whose score is -inf. Returns (ids int32, scores float32), shape (n, k); a short list
    is padded with id -1.
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    k_eff = min(k, n_items)
    ids = np.full((n, k), -1, dtype=np.int32)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    if n == 0 or k_eff == 0:
        return ids, scores
    exclude = None if exclude_items is None or len(exclude_items) == 0 else np.asarray(exclude_items, dtype=np.int64)
    rows = max(1, min(batch_users, TOPK_BLOCK_SCORES // n_items))

    def block(start: int) -> None:
        stop = min(start + rows, n)
        scored = score_rows(start, stop)
        if seen is not None:
            first, last = seen.indptr[start], seen.indptr[stop]
            owner = np.repeat(np.arange(stop - start), np.diff(seen.indptr[start : stop + 1]))
            scored[owner, seen.indices[first:last]] = -np.inf
        if exclude is not None:
            scored[:, exclude] = -np.inf
        if k_eff == n_items:
            top = np.broadcast_to(np.arange(n_items), scored.shape)
        else:
            top = np.argpartition(scored, n_items - k_eff, axis=1)[:, n_items - k_eff :]
        top_scores = np.take_along_axis(scored, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)
        ids[start:stop, :k_eff] = np.take_along_axis(top, order, axis=1)
        scores[start:stop, :k_eff] = np.take_along_axis(top_scores, order, axis=1)

    workers = threads or min(4, os.cpu_count() or 1)
    with threadpool_limits(1, "blas"), ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(block, range(0, n, rows)))
    unfilled = ~np.isfinite(scores)  # everything else was filtered out
    ids[unfilled] = -1
    scores[unfilled] = -np.inf
    return ids, scores


def top_k_items(
    item_vectors: np.ndarray,
    query_vectors: np.ndarray,
    seen: sp.csr_matrix | None,
    k: int,
    exclude_items: np.ndarray | None,
    batch_users: int = DEFAULT_BATCH_USERS,
    threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items by dot product for every query row, best first (ties: lower item index
    first), computed in blocks of at most ``batch_users`` rows and ``TOPK_BLOCK_SCORES``
    scores on ``threads`` threads (0: one per core, at most 4).

    ``seen`` (rows aligned with ``query_vectors``) and ``exclude_items`` are never returned.
    Returns (ids int32, scores float32), shape (n, k); a short list is padded with id -1.

    Not implicit's ``topk``: that masks the seen items of each user with one scipy row slice
    in Python, under the GIL, which costs more than the scoring itself; here one block's
    seen items are masked with one vectorised assignment, and the matrix products and
    partial sorts release the GIL, so the blocks run in parallel.
    """
    items_t = np.ascontiguousarray(item_vectors, dtype=np.float32).T

    def score_rows(start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(query_vectors[start:stop], dtype=np.float32) @ items_t

    return _top_k(score_rows, query_vectors.shape[0], item_vectors.shape[0], seen, k, exclude_items,
                  batch_users, threads)


def top_k_scores(
    scores: np.ndarray, seen: sp.csr_matrix | None, k: int, exclude_items: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items of a block of precomputed scores (rows x items), with the masking, tie order
    and padding of :func:`top_k_items`."""
    return _top_k(lambda start, stop: np.array(scores[start:stop], dtype=np.float32), scores.shape[0],
                  scores.shape[1], seen, k, exclude_items)


def model_items(model: Model) -> int:
    """The number of items (columns) a model scores."""
    if isinstance(model, Blend):
        return model_items(model.first)
    return model.n_items if isinstance(model, ItemModel) else int(model.item_factors.shape[0])


def recommend_users(
    model: Model,
    rows: np.ndarray,
    matrix: sp.csr_matrix | None,
    seen: sp.csr_matrix,
    k: int,
    exclude_items: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k for the users at ``rows``, never an item in ``seen`` (rows aligned with ``rows``) or
    ``exclude_items``. Factor models score their trained user vectors ``user_factors[rows]``;
    item models score the users' history rows ``matrix[rows]`` (any users × items matrix with
    the model's columns, trained on or not: fold-in); a blend mixes both (:func:`_row_scorer`).
    Raises ValueError when an item model gets no matrix."""
    started = time.perf_counter()
    if isinstance(model, ItemModel) and sp.issparse(model.item_matrix):
        ids, scores = _recommend_sparse(model, rows, matrix, seen, k, exclude_items)
    else:
        ids, scores = _top_k(_row_scorer(model, rows, matrix), len(rows), model_items(model), seen, k,
                             exclude_items)
    seconds = time.perf_counter() - started
    log.info(
        "recommended top-%d for %d users in %.1f s (%.0f users/s)", k, len(ids), seconds, len(ids) / max(seconds, 1e-9)
    )
    return ids, scores


def _recommend_sparse(
    model: ItemModel,
    rows: np.ndarray,
    matrix: sp.csr_matrix | None,
    seen: sp.csr_matrix,
    k: int,
    exclude_items: np.ndarray | None,
    batch_users: int = SPARSE_BATCH_USERS,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`recommend_users` of a sparse item model (RP3beta, item-kNN): a user's scores are
    the sparse product of their history row and W, so only the items their history links to
    are ranked (:func:`recsys.core.families.sparse_top_k`), never every item of the catalog.
    A user whose history links to fewer than ``k`` unseen active items has the rest of the
    list filled, score 0, with the items most users of ``matrix`` touched (the dense top-k
    filled it with unlinked items of score 0 by item number), unseen and active."""
    history = binary(history_rows(model, rows, matrix))
    assert matrix is not None  # history_rows raised otherwise
    n, n_items = len(rows), model.n_items
    ids = np.full((n, k), -1, dtype=np.int32)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    keep_item = np.ones(n_items, dtype=np.float32)
    if exclude_items is not None and len(exclude_items):
        keep_item[np.asarray(exclude_items, dtype=np.int64)] = 0.0
    for start in range(0, n, batch_users):
        stop = min(start + batch_users, n)
        block = sp.csr_matrix(history[start:stop] @ model.item_matrix, dtype=np.float32)
        block.data *= keep_item[block.indices]
        overlap = block.multiply(binary(seen[start:stop]))
        block = sp.csr_matrix(block - overlap)  # a seen item's score is taken out exactly
        block.eliminate_zeros()
        ids[start:stop], scores[start:stop] = sparse_top_k(block, k, None, row_offset=None)
    short = np.flatnonzero(ids[:, k - 1] < 0) if k else np.zeros(0, dtype=np.int64)
    if len(short):
        popular = np.argsort(-np.bincount(matrix.indices, minlength=n_items), kind="stable")
        popular = popular[keep_item[popular] > 0]
        for row in short:
            listed = ids[row][ids[row] >= 0]
            taken = np.concatenate([listed, seen.indices[seen.indptr[row] : seen.indptr[row + 1]]])
            head = popular[: k + len(taken)]
            extra = head[~np.isin(head, taken)][: k - len(listed)]
            ids[row, len(listed) : len(listed) + len(extra)] = extra
            scores[row, len(listed) : len(listed) + len(extra)] = 0.0
    return ids, scores


def recommend_factors(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    seen: sp.csr_matrix,
    k: int,
    exclude_items: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k for every user row of the factors, never an item in ``seen`` or ``exclude_items``."""
    return recommend_users(Factors(user_factors, item_factors), np.arange(len(user_factors)), None, seen, k,
                           exclude_items)


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


def similar_items(model: Model, k: int, exclude_items: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Item-to-item top-k, never the item itself nor an excluded item. Factor models: cosine of
    the item vectors (``Factors.item_embeddings``); item models: the rows of their neighbour
    matrix (EASE: columns of B), only the items a row links (a shorter list is padded); a
    blend: its first part's."""
    if isinstance(model, Blend):
        return similar_items(model.first, k, exclude_items)
    if isinstance(model, Factors):
        vectors = model.item_embeddings
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        normed = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
        itself = sp.identity(len(normed), dtype=np.float32, format="csr")
        return top_k_items(normed, normed, itself, k, exclude_items)
    neighbours = model.neighbour_matrix
    n = model.n_items
    if sp.issparse(neighbours):
        return sparse_top_k(sp.csr_matrix(neighbours), k, exclude_items)

    def score_rows(start: int, stop: int) -> np.ndarray:
        return np.array(neighbours[start:stop], dtype=np.float32)

    itself = sp.identity(n, dtype=np.float32, format="csr")
    return _top_k(score_rows, n, n, itself, k, exclude_items)
