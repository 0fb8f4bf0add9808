"""Task ``index_events``: the window's weighted events indexed by (user, item) pair, and the
hold-out every candidate is scored on, built once into ``lake/pair_events/dt=D/``."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import pyarrow.parquet as pq

from recsys import datasets
from recsys.config import Settings
from recsys.core.holdout import build_holdout
from recsys.core.lists import ItemFilters
from recsys.core.model import SortedEvents
from recsys.core.window import Window
from recsys.io import lake
from recsys.io.artifacts import save_holdout, save_pair_events
from recsys.io.sources.files import read_catalog
from recsys.io.sql import connect, register_window, run_sql

log = logging.getLogger(__name__)


def index_events(settings: Settings, day: dt.date) -> dict[str, Any]:
    """What every model task of the run loads, built once into ``lake/pair_events/dt=D/``: the
    window's weighted events (``sql/weighted_events.sql``, one row each) indexed by (user,
    item) pair and event type with their ages (:class:`recsys.core.model.PairEvents`): of the
    whole window (``events.npz``, ids in ``users/items.parquet``: train fits the winner on
    them, recommend takes the seen items from them) and of the training days' users the
    candidates fit on (``train_events.npz``, ids in ``train_users/train_items.parquet``; see
    :func:`tuning_users`), with the hold-out every candidate is scored on (``holdout.npz``,
    from aggregate's hold-out truth and training popularity). Returns counts."""

    window = Window.of(settings, day)
    started = time.perf_counter()
    aggregated = lake.fetch_partition(
        settings.lake, datasets.CONFIDENCE, day, ["holdout.parquet", "popular_train.parquet"]
    )
    holdout_truth = pq.read_table(aggregated / "holdout.parquet")
    popular_train = pq.read_table(aggregated / "popular_train.parquet")
    with connect(temp_dir=settings.duckdb_temp_dir) as con:
        partitions = register_window(con, settings, window)
        weighted = run_sql(con, "weighted_events", window.sql_params(settings))
    sorted_events = SortedEvents.of(weighted)
    del weighted  # the Arrow strings go before the indexes are built
    events, train_events = sorted_events.before(window.end), sorted_events.before(window.split)
    del sorted_events
    holdout = build_holdout(settings, train_events, holdout_truth, popular_train,
                            ItemFilters.from_catalog(read_catalog(settings.catalog), train_events.item_ids))
    with lake.replace_partition(settings.lake, datasets.PAIR_EVENTS, day) as tmp:
        save_pair_events(tmp, "train_", holdout.events)  # the users tuning fits on
        save_pair_events(tmp, "", events)
        save_holdout(tmp, holdout)
    seconds = time.perf_counter() - started
    counts = {"events": len(events.ages), "pairs": len(events.indices), "train_events": len(train_events.ages),
              "tuning_users": holdout.events.shape[0], "holdout_users": len(holdout.rows),
              "holdout_users_warm": holdout.warm_users}
    log.info("index_events: %d day partition(s) of the window -> %s in %.1f s", partitions, counts, seconds)
    return {"partitions": partitions, "rows": counts, "seconds": round(seconds, 2)}
