"""Lists the way they are served: item filters from the catalog, seen items, top-k with the
category cap, and the long (user_id, rank, item_id, score) tables they are stored as."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recsys.config import POPULAR_USER_ID, Settings
from recsys.core.model import (
    Model,
    PairEvents,
    cap_per_category,
    pairs_matrix,
    recommend_users,
)
from recsys.schemas import RECOMMENDATIONS_SCHEMA

log = logging.getLogger(__name__)


@dataclass
class ItemFilters:
    """What the catalog says about the matrix columns: never-recommend items and categories."""

    exclude: np.ndarray  # column indexes of inactive items
    categories: np.ndarray  # category code per column (-1: unknown)

    @classmethod
    def from_catalog(cls, catalog: pa.Table, item_ids: pa.Array) -> ItemFilters:
        """The filters of the columns ``item_ids`` from the catalog's rows (item_id, active, category)."""
        index = pc.index_in(catalog["item_id"], value_set=item_ids)
        known = pc.is_valid(index)
        inactive = pc.and_(known, pc.invert(pc.fill_null(catalog["active"], True)))
        exclude = np.asarray(pc.filter(index, inactive).to_numpy(zero_copy_only=False), dtype=np.int32)
        categories = np.full(len(item_ids), -1, dtype=np.int32)
        with_category = pc.and_(known, pc.is_valid(catalog["category"]))
        codes = pc.filter(catalog["category"], with_category).dictionary_encode().combine_chunks().indices
        categories[pc.filter(index, with_category).to_numpy(zero_copy_only=False)] = codes.to_numpy(
            zero_copy_only=False
        )
        return cls(exclude=np.unique(exclude), categories=categories)


def serve_lists(
    settings: Settings,
    model: Model,
    rows: np.ndarray,
    matrix: sp.csr_matrix | None,
    seen: sp.csr_matrix,
    filters: ItemFilters,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k lists of the users at ``rows`` the way they are served, whatever the family: seen
    (rows aligned with ``rows``) and inactive items out, category cap applied. Item models
    score the users' rows of ``matrix`` (see :func:`recsys.core.model.recommend_users`)."""

    cap = settings.max_per_category
    width = settings.k * 3 if cap else settings.k
    ids, scores = recommend_users(model, rows, matrix, seen, width, filters.exclude)
    if cap:
        ids, scores = cap_per_category(ids, scores, filters.categories, cap, settings.k)
    return ids, scores


def seen_matrix(settings: Settings, events: PairEvents) -> sp.csr_matrix:
    """The users x items matrix (rows and columns those of ``events``, a PairEvents) of what a
    list must not repeat: every item the user touched (exclude_seen=all) or only what they
    bought (exclude_seen=purchased: an event of a purchase type)."""

    return pairs_matrix(events, settings.purchase_event_types if settings.exclude_seen == "purchased" else None)


def popular_lists(settings: Settings, popular: pa.Table, by_category: pa.Table) -> pa.Table:
    """``__popular__`` and ``__popular__#<category>`` rows; score = users / the top item's users."""
    overall = popular.slice(0, settings.k)
    keys = pa.array([POPULAR_USER_ID] * overall.num_rows, pa.string())
    ranks = pa.array(np.arange(1, overall.num_rows + 1), pa.int16())
    top = by_category.filter(pc.less_equal(by_category["category_rank"], settings.k))
    category_keys = pc.binary_join_element_wise(pa.scalar(POPULAR_USER_ID + "#"), top["category"], "")
    users = np.concatenate([overall["users"].to_numpy(), top["users"].to_numpy()]).astype(np.float32)
    best = np.concatenate([np.full(overall.num_rows, users[: overall.num_rows].max(initial=1.0)),
                           _first_of_group(top["users"].to_numpy(), top["category_rank"].to_numpy())])
    return pa.table(
        {
            "user_id": pa.concat_arrays([keys, category_keys.combine_chunks()]),
            "rank": pa.concat_arrays([ranks, top["category_rank"].cast(pa.int16()).combine_chunks()]),
            "item_id": pa.concat_arrays([overall["item_id"].combine_chunks(), top["item_id"].combine_chunks()]),
            "score": pa.array(users / np.maximum(best, 1.0), pa.float32()),
        },
        schema=RECOMMENDATIONS_SCHEMA,
    )


def _first_of_group(values: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """For rows sorted by group then rank (rank 1 starts a group): each row's group's first value."""
    starts = np.flatnonzero(ranks == 1)
    group = np.cumsum(ranks == 1) - 1
    return values[starts][group].astype(np.float32) if len(starts) else values.astype(np.float32)


def lists_table(users: pa.Array, items: pa.Array, ids: np.ndarray, scores: np.ndarray) -> pa.Table:
    """Long (user_id, rank, item_id, score) rows from (n_users, k) id and score arrays."""
    n, k = ids.shape
    valid = ids >= 0
    user_index = np.repeat(np.arange(n), k)[valid.ravel()]
    ranks = np.tile(np.arange(1, k + 1, dtype=np.int16), n)[valid.ravel()]
    return pa.table(
        {
            "user_id": users.take(pa.array(user_index)),
            "rank": pa.array(ranks, pa.int16()),
            "item_id": items.take(pa.array(ids[valid].astype(np.int64))),
            "score": pa.array(scores[valid].astype(np.float32), pa.float32()),
        },
        schema=RECOMMENDATIONS_SCHEMA,
    )
