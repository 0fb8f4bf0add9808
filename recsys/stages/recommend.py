"""Task ``recommend``: every list the storefront reads, into ``lake/recommendations/dt=D/``."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys import datasets
from recsys.config import Settings
from recsys.core.lists import (
    ItemFilters,
    lists_table,
    popular_lists,
    seen_matrix,
    serve_lists,
)
from recsys.core.model import confidence_matrix, model_items, needs_history, similar_items
from recsys.io import lake
from recsys.io.artifacts import load_model, load_window_events
from recsys.io.sources.files import read_catalog
from recsys.schemas import RECOMMENDATIONS_SCHEMA

log = logging.getLogger(__name__)


def recommend(settings: Settings, day: dt.date) -> dict[str, Any]:
    """Every list the storefront reads, into ``lake/recommendations/dt=D/``.

    Top-k for every user of the window (filtered as configured); ``__popular__`` for unknown
    users; ``__popular__#<category>`` for each catalog category; ``item#<item_id>`` with the
    item's most similar items (factor models: cosine of the item factors; item models: their
    item-item matrix) for every item.

    Users are scored ``recommend_batch_users`` at a time and each batch's lists go straight
    into the Parquet file, so memory holds the model, the seen matrix (and for an item model
    the matrix it scores the users' histories from) and one batch of lists, whatever the
    number of users.
    """

    started = time.perf_counter()
    models = lake.fetch_partition(settings.lake, datasets.MODELS, day)
    confidence_dir = lake.fetch_partition(
        settings.lake, datasets.CONFIDENCE, day, ["popular.parquet", "popular_by_category.parquet"]
    )
    users = pq.read_table(models / "users.parquet")["user_id"].combine_chunks()
    items = pq.read_table(models / "items.parquet")["item_id"].combine_chunks()
    params = lake.read_json(models / "params.json")
    version = params["model_version"]
    model = load_model(models / "model.npz")
    events = load_window_events(settings, day)
    if not (events.user_ids.equals(users) and events.item_ids.equals(items)) or model_items(model) != len(items):
        raise ValueError(
            f"the model of {day} ({models}) was not trained on the events of "
            f"{lake.partition_uri(settings.lake, datasets.PAIR_EVENTS, day)}: rerun the run from index_events"
        )
    seen = seen_matrix(settings, events)
    # An item model scores each user's history: the matrix it was trained on, rebuilt the same way.
    history = (confidence_matrix(events, params["event_weights"], params["half_life_days"]).matrix
               if needs_history(model) else None)
    del events
    filters = ItemFilters.from_catalog(read_catalog(settings.catalog), items)
    batch = settings.recommend_batch_users
    rows = short = 0
    last_log = time.perf_counter()
    with lake.replace_partition(settings.lake, datasets.RECOMMENDATIONS, day) as tmp:
        with pq.ParquetWriter(tmp / datasets.DATA_FILE, RECOMMENDATIONS_SCHEMA, compression="zstd") as writer:
            for first in range(0, len(users), batch):
                last = min(first + batch, len(users))
                ids, scores = serve_lists(settings, model, np.arange(first, last), history, seen[first:last], filters)
                lists = lists_table(users.slice(first, last - first), items, ids, scores)
                writer.write_table(lists)
                rows += lists.num_rows
                short += int(np.sum((ids >= 0).sum(axis=1) < settings.k))
                if time.perf_counter() - last_log >= 10.0 or last == len(users):
                    last_log = time.perf_counter()
                    log.info("recommend: %d / %d users (%.0f users/s)", last, len(users),
                             last / max(last_log - started, 1e-9))
            popular = popular_lists(
                settings, pq.read_table(confidence_dir / "popular.parquet"),
                pq.read_table(confidence_dir / "popular_by_category.parquet"),
            )
            similar_ids, similar_scores = similar_items(model, settings.k, filters.exclude)
            item_keys = pc.binary_join_element_wise(pa.scalar("item#"), items, "")
            similar = lists_table(item_keys, items, similar_ids, similar_scores)
            writer.write_table(popular)
            writer.write_table(similar)
            rows += popular.num_rows + similar.num_rows
        lake.write_json(tmp / "_meta.json", {"model_version": version})
    seconds = time.perf_counter() - started
    categories = popular.num_rows and int(pc.count_distinct(popular["user_id"]).as_py()) - 1
    log.info(
        "recommend: %d users (%d with fewer than %d items), %d similar-item lists, popular list + %d category "
        "lists, %d rows in %.1f s (%.0f users/s)",
        len(users), short, settings.k, len(items), categories, rows, seconds, len(users) / max(seconds, 1e-9),
    )
    return {"users": len(users), "items": len(items), "category_lists": categories, "rows": rows,
            "short_lists": short, "model_version": version, "seconds": round(seconds, 2),
            "run_date": day.isoformat(), "partition": lake.partition_uri(settings.lake, datasets.RECOMMENDATIONS, day)}
