"""The first two stages: copy the store's events into the lake (extract) and check them (validate).

Both read the source through :mod:`recsys.source` and write only ``lake/interactions/dt=D/``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from recsys import lake
from recsys.config import Settings
from recsys.schemas import INTERACTIONS_SCHEMA
from recsys.window import Window

log = logging.getLogger(__name__)


class EmptyDayError(ValueError):
    """The run date has no events in the source."""


# --------------------------------------------------------------------------- extract


def extract(settings: Settings, day: dt.date) -> dict[str, Any]:
    """Copy the run date's events (and any window day missing from the lake) into the lake.

    Returns {"days": [...], "rows": n, "duplicates_dropped": n}. Raises EmptyDayError when
    the run date has no events, SourceError when the source cannot be read.
    """
    from recsys import pgsource
    from recsys.source import register_source
    from recsys.sqlrun import connect, run_sql

    window = Window.of(settings, day)
    todo = [d for d in window.days if d == day or not lake.partition_exists(settings.lake, "interactions", d)]
    con = connect(temp_dir=settings.duckdb_temp_dir)
    source = pgsource.staged_source(settings, day, todo)  # PostgreSQL: the needed days as Parquet
    register_source(con, source, settings.source_columns)
    started = time.perf_counter()
    rows = duplicates = 0
    written: list[str] = []
    # Contiguous runs of missing days, at most a week per query: one scan per chunk, bounded memory.
    for chunk in _chunks(todo, max_days=7):
        chunk_start = dt.datetime.combine(chunk[0], dt.time(), tzinfo=dt.timezone.utc)
        chunk_end = dt.datetime.combine(chunk[-1] + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
        table = run_sql(con, "interactions", {"start": chunk_start, "end": chunk_end})
        first = pc.equal(table["occurrence"], 1)
        duplicates += table.num_rows - pc.sum(first).as_py() if table.num_rows else 0
        table = table.filter(first)
        dates = table["event_date"]
        for d in chunk:
            part = table.filter(pc.equal(dates, pa.scalar(d, pa.date32()))).select(INTERACTIONS_SCHEMA.names)
            part = part.cast(INTERACTIONS_SCHEMA)
            if d == day and part.num_rows == 0:
                raise EmptyDayError(
                    f"the run date {day} has no events in {settings.source} "
                    f"(between {chunk_start.isoformat()} and {chunk_end.isoformat()}); "
                    "expected at least one row. Is the source complete for that day?"
                )
            lake.write_partition(settings.lake, "interactions", d, part)
            rows += part.num_rows
            written.append(d.isoformat())
    seconds = time.perf_counter() - started
    log.info(
        "extract: %d day(s), %d rows in %.1f s (%.0f rows/s), %d duplicate event_id(s) dropped",
        len(written), rows, seconds, rows / max(seconds, 1e-9), duplicates,
    )
    return {"days": written, "rows": rows, "duplicates_dropped": duplicates, "seconds": round(seconds, 2)}


def _chunks(days: list[dt.date], max_days: int) -> list[list[dt.date]]:
    """Split sorted days into runs of consecutive days, each at most ``max_days`` long."""
    chunks: list[list[dt.date]] = []
    for d in days:
        if chunks and (d - chunks[-1][-1]).days == 1 and len(chunks[-1]) < max_days:
            chunks[-1].append(d)
        else:
            chunks.append([d])
    return chunks


# --------------------------------------------------------------------------- validate


def validate(settings: Settings, day: dt.date, days: list[str]) -> dict[str, Any]:
    """Run the GX suite over the partitions extract wrote (always including the run date)."""
    from recsys.validate import validate_partitions

    wanted = sorted({dt.date.fromisoformat(d) for d in days} | {day})
    return validate_partitions(settings, wanted)


