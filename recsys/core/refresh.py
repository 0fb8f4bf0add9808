"""The hourly refresh's decisions: the lists of the users active since the served night,
scored by the served model from their whole history (the night's window plus the new events)
through the same fold-in and serve path as every other list."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recsys.config import Settings
from recsys.core.holdout import Champion, champion_history, champion_params
from recsys.core.lists import ItemFilters, lists_table, seen_matrix, serve_lists
from recsys.core.model import PairEvents, fold_in, take_users

log = logging.getLogger(__name__)


@dataclass
class RefreshedLists:
    """What a refresh writes: the long (user_id, rank, item_id, score) lists and its counts."""

    lists: pa.Table
    active_users: int  # users with new events
    new_users: int  # of them, users the night's window does not hold
    unscored_users: int  # of them, users none of whose items the served model knows (no list written)
    seconds: float


def shift_ages(events: PairEvents, days: float) -> PairEvents:
    """``events`` with every age ``days`` older: the night's window events (aged at its end,
    midnight after the run date) aged at the refresh's end instead, so a half-life decays
    the night's events and the new ones on one clock."""
    return dataclasses.replace(events, ages=events.ages + days)


def refresh_lists(
    settings: Settings,
    champion: Champion,
    window: PairEvents,
    new: PairEvents,
    filters: ItemFilters,
) -> RefreshedLists:
    """Top-k lists of every user with an event in ``new`` (the events since the served night,
    aged at the refresh's end), scored by the served ``champion`` from their history in
    ``window`` (the night's window events, aged at the same instant: see :func:`shift_ages`)
    plus ``new``, with the champion's event weights and half-life, folded in
    (:func:`recsys.core.model.fold_in`) and served like the nightly lists (:func:`serve_lists`:
    seen items of both, ``filters`` on the champion's items, category cap).

    ``filters`` are those of the champion's items. Users whose history holds no item the
    champion knows get no list (the storefront keeps what it has for them).
    """
    started = time.perf_counter()
    active = new.user_ids
    index = pc.index_in(active, value_set=window.user_ids)
    warm = np.asarray(pc.is_valid(index).to_numpy(zero_copy_only=False), dtype=bool)
    warm_rows = np.asarray(pc.drop_null(index).to_numpy(zero_copy_only=False), dtype=np.int64)
    order = np.argsort(warm_rows, kind="stable")  # take_users wants sorted rows
    known = take_users(window, warm_rows[order])
    # (active users x warm users): row i of the result is active user i's window history (none if cold).
    spread = sp.csr_matrix((np.ones(len(warm_rows), dtype=np.float32), (np.flatnonzero(warm)[order],
                                                                         np.arange(len(warm_rows)))),
                           shape=(len(active), len(warm_rows)))
    old = champion_history(champion, known, np.arange(len(warm_rows)))
    fresh = champion_history(champion, new, np.arange(len(active)))
    history = sp.csr_matrix(spread @ old.own + fresh.own)
    seen = sp.csr_matrix(spread @ (seen_matrix(settings, known) @ old.projection)
                         + seen_matrix(settings, new) @ fresh.projection)
    seen.data[:] = 1.0
    scored = np.flatnonzero(np.diff(history.indptr) > 0)
    history, seen = history[scored], seen[scored]
    model = fold_in(champion.model, champion_params(champion), history)
    ids, scores = serve_lists(settings, model, np.arange(len(scored)), history, seen, filters)
    lists = lists_table(active.take(pa.array(scored)), champion.item_ids, ids, scores)
    seconds = time.perf_counter() - started
    result = RefreshedLists(lists=lists, active_users=len(active), new_users=int((~warm).sum()),
                            unscored_users=len(active) - len(scored), seconds=seconds)
    log.info("refresh: %d active users (%d new to the night's window, %d without an item the model knows) scored "
             "in %.1f s (%.0f users/s)", result.active_users, result.new_users, result.unscored_users, seconds,
             len(scored) / max(seconds, 1e-9))
    return result
