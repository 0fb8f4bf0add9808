"""Helpers shared by several test modules (never imported by the package itself)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from recsys.core.model import PairEvents, SortedEvents, top_k_items


def recommend_popular(
    popularity: np.ndarray, seen: sp.csr_matrix, k: int, exclude_items: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The popularity baseline: the most popular items each user has not seen yet."""
    queries = np.ones((seen.shape[0], 1), dtype=np.float32)
    return top_k_items(popularity.reshape(-1, 1).astype(np.float32), queries, seen, k, exclude_items)


def build_pair_events(events: pa.Table, ends: Sequence[dt.datetime]) -> list[PairEvents]:
    """For each of ``ends``: the weighted events before it, indexed by (user, item) pair (what
    index_events builds for the window and the training days), from one sort of the events."""
    sorted_events = SortedEvents.of(events)
    return [sorted_events.before(end) for end in ends]
