"""Task ``aggregate``: the window's events into confidence, hold-out truth and popularity
(``lake/confidence/dt=D/``) with DuckDB SQL (``sql/*.sql``)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import pyarrow.parquet as pq

from recsys import datasets
from recsys.config import Settings
from recsys.core.window import Window
from recsys.io import lake
from recsys.io.sources.files import register_catalog
from recsys.io.sql import (
    connect,
    copy_to_parquet,
    register_parquet,
    register_window,
    run_sql,
)

log = logging.getLogger(__name__)


def aggregate(settings: Settings, day: dt.date) -> dict[str, Any]:
    """The window's events aggregated with DuckDB SQL into ``lake/confidence/dt=D/``: one
    GROUP BY (user, item) over the day partitions, written by DuckDB straight to
    ``part-0.parquet`` (``sql/confidence.sql``: confidence, events and training
    events per pair), and from that file the hold-out truth (``holdout.parquet``) and the
    popularity (``sql/item_counts.sql``, counted once) over the window, over its training
    days and per category (``popular.parquet``, ``popular_train.parquet``,
    ``popular_by_category.parquet``).
    Returns row counts."""

    window = Window.of(settings, day)
    started = time.perf_counter()
    with connect(temp_dir=settings.duckdb_temp_dir) as con, \
            lake.replace_partition(settings.lake, datasets.CONFIDENCE, day) as tmp:
        partitions = register_window(con, settings, window)
        counts = {
            "part-0": copy_to_parquet(con, datasets.CONFIDENCE, tmp / datasets.DATA_FILE, window.sql_params(settings))
        }
        register_parquet(con, datasets.CONFIDENCE, [tmp / datasets.DATA_FILE])
        register_catalog(con, settings.catalog)
        con.register("item_counts", run_sql(con, "item_counts"))
        outputs = {
            "holdout.parquet": run_sql(con, "holdout_relevant"),
            "popular.parquet": run_sql(con, "popular_items", {"training": False}),
            "popular_train.parquet": run_sql(con, "popular_items", {"training": True}),
        }
        con.register("popular_items", outputs["popular.parquet"])
        outputs["popular_by_category.parquet"] = run_sql(con, "popular_by_category")
        for name, table in outputs.items():
            pq.write_table(table, tmp / name, compression="zstd")
    seconds = time.perf_counter() - started
    counts.update({name.removesuffix(".parquet"): t.num_rows for name, t in outputs.items()})
    log.info("aggregate: %d day partition(s) of the window -> %s in %.1f s", partitions, counts, seconds)
    return {"partitions": partitions, "rows": counts, "seconds": round(seconds, 2)}
