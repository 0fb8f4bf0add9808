"""The Great Expectations suite for extracted interaction partitions, run inside the task.

GX is imported only here and only when a task validates: nothing of it runs at DAG parse time.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys import lake
from recsys.config import Settings

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 2048  # DynamoDB's limit for a partition key, in bytes


class ValidationError(ValueError):
    """A batch of interactions broke the suite; the message names partitions, columns and counts."""


def build_suite(event_types: Sequence[str]) -> Any:
    """The interactions expectation suite (GX 1.x), defined in code."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name="interactions")
    for column in ("user_id", "item_id", "event_type", "event_ts"):
        suite.add_expectation(gxe.ExpectColumnToExist(column=column))
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column))
    for column in ("user_id", "item_id"):
        suite.add_expectation(
            gxe.ExpectColumnValueLengthsToBeBetween(column=column, min_value=1, max_value=MAX_ID_LENGTH)
        )
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=sorted(event_types)))
    # Each row must lie inside its own partition's day: 0 <= seconds since its midnight < 86400.
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(
            column="seconds_into_day", min_value=0, max_value=86400, strict_max=True
        )
    )
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="event_id"))
    return suite


def _frame(tables: list[tuple[dt.date, pa.Table]]) -> "pd.DataFrame":
    """One pandas frame of the partitions, with ``dt`` and ``seconds_into_day`` added."""
    import pandas as pd

    frames = []
    for day, table in tables:
        midnight = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc).timestamp()
        epoch = pc.cast(pc.cast(table["event_ts"], pa.timestamp("us", tz="UTC")), pa.int64()).to_numpy(
            zero_copy_only=False
        )
        frame = table.to_pandas()
        frame["dt"] = day.isoformat()
        frame["seconds_into_day"] = np.asarray(epoch, dtype="float64") / 1e6 - midnight
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def validate_partitions(settings: Settings, days: Sequence[dt.date]) -> dict[str, Any]:
    """Validate the interaction partitions of ``days``; returns a summary dict.

    Raises ValidationError naming each failing partition, column, count and expectation.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    tables = [(day, lake.read_partition(settings.lake, "interactions", day)) for day in days]
    tables = [(day, t) for day, t in tables if t.num_rows > 0]
    if not tables:
        log.info("validate: no rows to validate in %d partition(s)", len(days))
        return {"rows": 0, "partitions": 0}
    started = time.perf_counter()
    frame = _frame(tables)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    batch = (
        context.data_sources.add_pandas("interactions")
        .add_dataframe_asset("interactions")
        .add_batch_definition_whole_dataframe("partitions")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    result = batch.validate(build_suite(list(settings.event_weights)), result_format={"result_format": "COMPLETE"})
    problems: list[str] = []
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        column = config.kwargs.get("column")
        what = _expected(config.type, config.kwargs)
        indexes = item.result.get("unexpected_index_list")
        if indexes is None:
            problems.append(f"column {column!r}: {what} (GX {config.type})")
            continue
        positions = np.asarray([i if isinstance(i, (int, np.integer)) else i.get("index") for i in indexes])
        per_day = Counter(frame["dt"].to_numpy()[positions]) if len(positions) else Counter()
        examples = list(dict.fromkeys(str(v)[:60] for v in item.result.get("partial_unexpected_list", [])))[:3]
        for day_text, count in sorted(per_day.items()):
            total = int((frame["dt"] == day_text).sum())
            problems.append(
                f"{lake.partition_dir(settings.lake, 'interactions', dt.date.fromisoformat(day_text))}: "
                f"column {column!r}: {count:,} of {total:,} rows broke '{what}' (examples: {examples})"
            )
    seconds = time.perf_counter() - started
    summary = {"rows": len(frame), "partitions": len(tables), "seconds": round(seconds, 2)}
    if problems:
        raise ValidationError(
            f"validation failed for {len(problems)} check(s) of {len(frame):,} rows in "
            f"{len(tables)} partition(s) extracted from {settings.source}; nothing downstream runs:\n  "
            + "\n  ".join(problems)
        )
    log.info(
        "validate: %d rows in %d partition(s) passed %d expectations in %.1f s",
        len(frame), len(tables), len(result.results), seconds,
    )
    return summary


def _expected(kind: str, kwargs: dict[str, Any]) -> str:
    """A person's words for what an expectation wanted."""
    if kind == "expect_column_values_to_not_be_null":
        return "expected no nulls"
    if kind == "expect_column_value_lengths_to_be_between":
        return f"expected a length between {kwargs.get('min_value')} and {kwargs.get('max_value')}"
    if kind == "expect_column_values_to_be_in_set":
        return f"expected one of the configured event types {kwargs.get('value_set')}"
    if kind == "expect_column_values_to_be_between" and kwargs.get("column") == "seconds_into_day":
        return "expected event_ts inside the partition's day (UTC)"
    if kind == "expect_column_values_to_be_unique":
        return "expected unique values"
    if kind == "expect_column_to_exist":
        return "expected the column to exist"
    return kind
