"""The Great Expectations suites for staged interaction days, and what follows from their results:
the pure part of validate (:mod:`recsys.stages.validate` runs them, :mod:`recsys.io.gx` is the GX edge).

GX is imported only inside these functions, when the validate task runs: nothing of it at DAG parse time.
Three suites, defined in code, each run on pandas batches:

* **rows** (:func:`build_row_suite`; every row extract staged this run, a chunk of whole days
  at a time, see :func:`plan_chunks` and ``RECSYS_VALIDATE_CHUNK_ROWS``): the required columns
  and their types; ``user_id`` and ``item_id`` present, not blank, at most 2,048 bytes of UTF-8
  (DynamoDB's key limit; bytes, not characters) and valid UTF-8; ``event_type`` among the
  configured weights; ``event_ts`` present and inside its partition's day (UTC); ``event_id``
  unique within its day where present; the line was parseable at all; no user above
  ``bot_max_user_share`` of a day with at least ``bot_min_day_rows`` rows. A row that breaks
  any of these is quarantined, with its reasons.
* **days** (:func:`build_day_suite`; one row per staged day): bad rows at most
  ``max_bad_share`` of the day; the rows kept within [``volume_min_ratio``,
  ``volume_max_ratio``] times the mean of up to ``volume_history_days`` previous days that have
  rows; the share of kept rows whose item the catalog does not know (when there is a catalog)
  at most ``max_unknown_item_share``.
* **files** (only when some rows could not be placed on a day, see :mod:`recsys.ingest`):
  those rows at most ``max_bad_share`` of their own file.

A failed day or file check fails the run (ValidationError) after the evidence is written:
the quarantine partitions and the Data Docs under ``lake/validation/dt=<run date>/``. Only
when every check passes are the kept rows written to ``lake/interactions/dt=D/``, each day
re-read from staging and filtered by the mask its chunk left, so no chunk's rows are held
until the end.

Chunks are checked oldest first and a day is never split, so the results do not depend on the
chunking: the bot share is a day's, the trailing volume carries the kept counts of earlier
chunks, and ``event_id`` uniqueness is per day (extract already drops repeats; a nightly run
sees one day, so a window-wide check would also depend on how many days a run stages).

A bot's rows are quarantined but not counted as bad rows: the rest of its day is judged on
its own, volume included. A scraper on top of a normal day does not stop the night; a tracker
that stamps every event with one id leaves too few rows and does.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.config import Settings
from recsys.schemas import INTERACTIONS_SCHEMA, INVALID_UTF8_MARK

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

MAX_ID_BYTES = 2048  # DynamoDB's limit for a partition key value, in bytes of UTF-8

# The volume check needs a history worth comparing with: this many earlier days with rows,
# averaging at least this many rows (below that, Poisson noise alone leaves the band).
VOLUME_MIN_HISTORY_DAYS = 3

VOLUME_MIN_MEAN_ROWS = 10.0

BOT = "bot_user"

# Clocks drift: an event stamped up to this far after a run started is not "in the future".
FUTURE_TOLERANCE = dt.timedelta(hours=1)

EPOCH = dt.date(1970, 1, 1)  # day 0 of Arrow's date32

QUARANTINE_SCHEMA = pa.schema(
    [
        *INTERACTIONS_SCHEMA,
        ("source_file", pa.string()),
        ("raw_line", pa.string()),
        ("reason", pa.string()),
    ]
)


class ValidationError(ValueError):
    """A batch of interactions broke the suite; the message names partitions, columns and counts."""


@dataclass(frozen=True)
class Reason:
    """Why a row is quarantined: the column it concerns and what was expected of it."""

    column: str
    expected: str


def reasons_catalog(settings: Settings) -> dict[str, Reason]:
    """Every quarantine reason code with its column and expectation, in a person's words."""
    reasons = {
        "unparseable_line": Reason("(whole line)", "a line the reader can parse"),
        "invalid_utf8": Reason("(whole line)", "UTF-8 text"),
        "wrong_field_count": Reason("(whole line)", "as many fields as the header"),
        "unreadable_line": Reason("(whole line)", "one JSON object / row with the canonical fields"),
        "missing_event_type": Reason("event_type", "a value"),
        "unknown_event_type": Reason(
            "event_type", f"one of the configured event weights {sorted(settings.event_weights)}"
        ),
        "missing_event_ts": Reason("event_ts", "a timestamp, ISO-8601 text or epoch seconds / milliseconds"),
        "event_ts_outside_day": Reason(
            "event_ts", "a time inside the partition's day (UTC); the row came in a file of that day"
        ),
        "event_ts_in_future": Reason("event_ts", "a time no later than the run"),
        "duplicate_event_id": Reason("event_id", "unique values"),
        BOT: Reason(
            "user_id",
            f"no user above {settings.bot_max_user_share:.0%} of a day's rows (days of at least "
            f"{settings.bot_min_day_rows:,} rows; RECSYS_BOT_MAX_USER_SHARE)",
        ),
    }
    for column in ("user_id", "item_id"):
        reasons[f"missing_{column}"] = Reason(column, "a value")
        reasons[f"empty_{column}"] = Reason(column, "a non-blank id")
        reasons[f"{column}_too_long"] = Reason(
            column, f"at most {MAX_ID_BYTES:,} bytes of UTF-8 (DynamoDB's key limit)"
        )
        reasons[f"invalid_utf8_{column}"] = Reason(column, "valid UTF-8")
    return reasons


def build_row_suite(settings: Settings) -> Any:
    """The row-level expectation suite (GX 1.x) over the staged rows with derived columns."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name="interactions_rows")
    for column, type_ in (("user_id", "str"), ("item_id", "str"), ("event_type", "str"), ("event_ts", "Timestamp")):
        suite.add_expectation(gxe.ExpectColumnToExist(column=column))
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column))
        suite.add_expectation(gxe.ExpectColumnValuesToBeOfType(column=column, type_=type_))
    suite.add_expectation(gxe.ExpectColumnToExist(column="event_id"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeNull(column="read_error"))
    for column in ("user_id", "item_id"):
        suite.add_expectation(gxe.ExpectColumnValuesToMatchRegex(column=column, regex=r"\S"))
        suite.add_expectation(
            gxe.ExpectColumnValuesToBeBetween(column=f"{column}_bytes", min_value=1, max_value=MAX_ID_BYTES)
        )
        suite.add_expectation(gxe.ExpectColumnValuesToNotMatchRegex(column=column, regex=INVALID_UTF8_MARK))
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=sorted(settings.event_weights))
    )
    # Each row must lie inside its own partition's day: 0 <= seconds since its midnight < 86400.
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(column="seconds_into_day", min_value=0, max_value=86400, strict_max=True)
    )
    # Within the day, not the window: a window-wide check would depend on the chunking (see above).
    suite.add_expectation(
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["dt", "event_id"], ignore_row_if="any_value_is_missing")
    )
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(
            column="user_share_of_day", min_value=0, max_value=settings.bot_max_user_share
        )
    )
    return suite


def build_day_suite(settings: Settings) -> Any:
    """The batch-level suite (GX 1.x) over one row per staged day (see :func:`day_stats`)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name="interactions_days")
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(column="bad_share", min_value=0, max_value=settings.max_bad_share)
    )
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(
            column="volume_ratio", min_value=settings.volume_min_ratio, max_value=settings.volume_max_ratio
        )
    )
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(
            column="unknown_item_share", min_value=0, max_value=settings.max_unknown_item_share
        )
    )
    return suite


def build_file_suite(settings: Settings) -> Any:
    """The suite (GX 1.x) over source files with rows that could not be placed on a day."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name="interactions_unplaced_rows")
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(column="unplaced_share", min_value=0, max_value=settings.max_bad_share)
    )
    return suite


def row_frame(rows: pa.Table, settings: Settings) -> pd.DataFrame:
    """The staged rows (with ``dt``, a date32 column) as pandas, plus the derived columns the
    row suite checks: ``<id>_bytes``, ``seconds_into_day`` and ``user_share_of_day``."""
    day_start = pc.cast(pc.cast(rows["dt"], pa.timestamp("s")), pa.int64())
    ts = pc.cast(pc.cast(rows["event_ts"], pa.timestamp("us", tz="UTC")), pa.int64())
    seconds = pc.divide(pc.cast(pc.subtract(ts, pc.multiply(day_start, 1_000_000)), pa.float64()), 1e6)
    table = rows.drop_columns(["placed"])
    frame: pd.DataFrame = table.set_column(
        table.schema.get_field_index("dt"), "dt", pc.cast(rows["dt"], pa.string())
    ).to_pandas()
    frame["user_id_bytes"] = pc.binary_length(rows["user_id"]).to_numpy(zero_copy_only=False)
    frame["item_id_bytes"] = pc.binary_length(rows["item_id"]).to_numpy(zero_copy_only=False)
    frame["seconds_into_day"] = seconds.to_numpy(zero_copy_only=False)
    frame["user_share_of_day"] = user_share_of_day(rows, settings.bot_min_day_rows)
    return frame


def user_share_of_day(rows: pa.Table, min_day_rows: int) -> np.ndarray:
    """For each row, its user's share of the placed rows of its day (0 on days under ``min_day_rows``
    rows and for rows not placed on a day)."""
    placed = rows["placed"].to_numpy(zero_copy_only=False).astype(bool)
    share = np.zeros(rows.num_rows, dtype="float64")
    idx = np.flatnonzero(placed)
    if idx.size == 0:
        return share
    mine = rows.take(pa.array(idx))
    _, day_inverse, day_sizes = np.unique(
        pc.cast(mine["dt"], pa.int32()).to_numpy(zero_copy_only=False), return_inverse=True, return_counts=True
    )
    pairs = pc.binary_join_element_wise(pc.cast(mine["dt"], pa.string()), mine["user_id"].fill_null("\x00"), "\x1f")
    codes = pc.dictionary_encode(pairs.combine_chunks()).indices.to_numpy(zero_copy_only=False)
    pair_sizes = np.bincount(codes)
    rows_of_day = day_sizes[day_inverse]
    share[idx] = np.where(rows_of_day >= min_day_rows, pair_sizes[codes] / rows_of_day, 0.0)
    return share


def row_reasons(frame: pd.DataFrame, results: Sequence[Any], now: dt.datetime) -> list[list[str]]:
    """The quarantine reasons of every row (an empty list: the row passed), from the row suite's
    COMPLETE results. A line that could not be read gets only that reason."""
    reasons: list[list[str]] = [[] for _ in range(len(frame))]
    for item in results:
        if item.success:
            continue
        config = item.expectation_config
        indexes = result_indexes(item.result)
        if indexes is None or len(indexes) == 0:
            continue
        column = config.kwargs.get("column") or config.kwargs.get("column_list", [""])[-1]
        name = _reason_namer(config.type, column, frame, now)
        if name is None:
            continue
        for i, reason in zip(indexes, name(indexes)):
            if reason not in reasons[i]:
                reasons[i].append(reason)
    read_error = frame["read_error"].to_numpy()
    blank = (
        frame["user_id"].isna() & frame["item_id"].isna() & frame["event_type"].isna() & frame["event_ts"].isna()
    ).to_numpy()
    for i in np.flatnonzero(frame["read_error"].notna().to_numpy() | blank):
        reasons[i] = [str(read_error[i])] if isinstance(read_error[i], str) else ["unreadable_line"]
    return reasons


def result_indexes(result: dict[str, Any]) -> np.ndarray | None:
    indexes = result.get("unexpected_index_list")
    if indexes is None:
        return None
    return np.asarray([i if isinstance(i, (int, np.integer)) else i.get("index") for i in indexes], dtype="int64")


def failed_positions(item: Any) -> set[int]:
    """Row positions a failed column expectation names (empty when it passed)."""
    indexes = None if item.success else result_indexes(item.result)
    return set() if indexes is None else {int(i) for i in indexes}


def _reason_namer(
    kind: str, column: str, frame: pd.DataFrame, now: dt.datetime
) -> Callable[[np.ndarray], list[str]] | None:
    """A function from failing row positions to reason codes, for one failed expectation."""

    def fixed(code: str) -> Callable[[np.ndarray], list[str]]:
        return lambda idx: [code] * len(idx)

    if kind == "expect_column_values_to_not_be_null":
        return fixed(f"missing_{column}")
    if kind == "expect_column_values_to_be_null" and column == "read_error":
        return lambda idx: [str(v) for v in frame["read_error"].to_numpy()[idx]]
    if kind == "expect_column_values_to_match_regex":
        return fixed(f"empty_{column}")
    if kind == "expect_column_values_to_not_match_regex":
        return fixed(f"invalid_utf8_{column}")
    if kind == "expect_column_values_to_be_between" and column.endswith("_bytes"):
        base = column[: -len("_bytes")]
        sizes = frame[column].to_numpy()
        return lambda idx: [f"{base}_too_long" if sizes[i] > MAX_ID_BYTES else f"empty_{base}" for i in idx]
    if kind == "expect_column_values_to_be_in_set":
        return fixed(f"unknown_{column}")
    if kind == "expect_column_values_to_be_between" and column == "seconds_into_day":
        ts = frame["event_ts"]
        cutoff = np.datetime64(now.replace(tzinfo=None), "us")
        values = ts.dt.tz_convert(None).to_numpy(dtype="datetime64[us]") if hasattr(ts, "dt") else ts.to_numpy()
        return lambda idx: ["event_ts_in_future" if values[i] > cutoff else "event_ts_outside_day" for i in idx]
    if kind == "expect_compound_columns_to_be_unique":  # (dt, column): unique within the day
        return fixed(f"duplicate_{column}")
    if kind == "expect_column_values_to_be_between" and column == "user_share_of_day":
        return fixed(BOT)
    return None


@dataclass
class DayStats:
    """What validate found on one staged day."""

    day: dt.date
    rows_read: int
    duplicates: int
    staged: int
    placed: int
    bad: int
    bot: int
    kept: int
    unknown_items: int | None
    history_days: int
    history_mean: float | None
    quarantined: dict[str, int]
    source_files: dict[str, int]

    @property
    def bad_share(self) -> float:
        return self.bad / max(self.placed - self.bot, 1)

    @property
    def volume_ratio(self) -> float | None:
        if self.history_mean is None:
            return None
        return self.kept / self.history_mean

    @property
    def unknown_item_share(self) -> float | None:
        return None if self.unknown_items is None or self.kept == 0 else self.unknown_items / self.kept

    def row(self) -> dict[str, Any]:
        return {
            "dt": self.day.isoformat(),
            "rows_read": self.rows_read,
            "duplicates_dropped": self.duplicates,
            "rows_kept": self.kept,
            "bad_rows": self.bad,
            "bot_rows": self.bot,
            "bad_share": round(self.bad_share, 6),
            "volume_ratio": None if self.volume_ratio is None else round(self.volume_ratio, 4),
            "history_days": self.history_days,
            "history_mean_rows": None if self.history_mean is None else round(self.history_mean, 1),
            "unknown_item_share": None if self.unknown_item_share is None else round(self.unknown_item_share, 6),
            "quarantined": dict(sorted(self.quarantined.items())),
        }


def trailing_mean(
    counts: dict[dt.date, int], day: dt.date, history_days: int, lookback: int
) -> tuple[int, float | None]:
    """(days used, mean rows) over up to ``history_days`` days before ``day`` that have rows,
    looking back at most ``lookback`` calendar days; the mean is None when too few days
    (VOLUME_MIN_HISTORY_DAYS) or rows (VOLUME_MIN_MEAN_ROWS) to judge by."""
    found: list[int] = []
    for back in range(1, lookback + 1):
        n = counts.get(day - dt.timedelta(days=back), 0)
        if n > 0:
            found.append(n)
            if len(found) == history_days:
                break
    if len(found) < VOLUME_MIN_HISTORY_DAYS:
        return len(found), None
    mean = float(np.mean(found))
    return len(found), (mean if mean >= VOLUME_MIN_MEAN_ROWS else None)


def plan_chunks(day_rows: Mapping[dt.date, int], max_rows: int) -> list[list[dt.date]]:
    """The days, sorted, cut into runs whose rows add up to at most ``max_rows``; a day with
    more rows than that is a run of its own (a day is never split)."""
    chunks: list[list[dt.date]] = []
    size = 0
    for day in sorted(day_rows):
        if chunks and size + day_rows[day] <= max_rows:
            chunks[-1].append(day)
            size += day_rows[day]
        else:
            chunks.append([day])
            size = day_rows[day]
    return chunks


@dataclass
class Findings:
    """What validate keeps across chunks once a chunk's rows are dropped: per-day figures and
    masks, example values and counters, nothing holding the rows themselves."""

    counts: dict[dt.date, int]  # kept rows per day: the lake's history, then each day checked
    stats: dict[dt.date, DayStats] = field(default_factory=dict)
    kept: dict[dt.date, np.ndarray] = field(default_factory=dict)  # per day: which staged rows pass
    table_problems: list[str] = field(default_factory=list)
    examples: dict[tuple[dt.date, str], str] = field(default_factory=dict)
    unknown_examples: dict[dt.date, list[str]] = field(default_factory=dict)
    unplaced: Counter[str] = field(default_factory=Counter)


def span(days: list[dt.date]) -> str:
    return f"{days[0]}..{days[-1]}" if len(days) > 1 else str(days[0])


def day_number(day: dt.date) -> int:
    """Days since 1970-01-01: the int32 value of a date32."""
    return (day - EPOCH).days


def day_stats(
    settings: Settings,
    rows: pa.Table,
    metas: dict[dt.date, dict[str, Any]],
    reasons: list[list[str]],
    quarantined: np.ndarray,
    bad: np.ndarray,
    only_bot: np.ndarray,
    placed: np.ndarray,
    catalog: pa.Array | None,
    counts: dict[dt.date, int],
) -> dict[dt.date, DayStats]:
    """Per staged day: rows read, kept, bad, bot, unknown items and the trailing volume.

    ``counts`` holds the kept rows of the days before (the lake's, and those of earlier
    chunks); each day of ``metas`` is added to it, oldest first, so a later chunk's trailing
    volume is the same as if every day had been checked at once.
    """
    days = pc.cast(rows["dt"], pa.int32()).to_numpy(zero_copy_only=False)
    files = rows["source_file"].to_numpy(zero_copy_only=False)
    unknown = (
        None
        if catalog is None
        else pc.invert(pc.is_in(rows["item_id"], value_set=catalog)).fill_null(True).to_numpy(zero_copy_only=False)
    )
    stats: dict[dt.date, DayStats] = {}
    for day in sorted(metas):
        in_day = days == day_number(day)
        mine = in_day & placed
        kept = mine & ~quarantined
        counts[day] = int(kept.sum())
        used, mean = trailing_mean(
            counts, day, settings.volume_history_days, max(settings.window_days, 4 * settings.volume_history_days)
        )
        by_reason: Counter[str] = Counter()
        for i in np.flatnonzero(in_day & quarantined):
            by_reason.update(reasons[i])
        stats[day] = DayStats(
            day=day,
            rows_read=int(metas[day].get("rows_read", int(in_day.sum()))),
            duplicates=int(metas[day].get("duplicates_dropped", 0)),
            staged=int(in_day.sum()),
            placed=int(mine.sum()),
            bad=int((mine & bad).sum()),
            bot=int((mine & only_bot).sum()),
            kept=int(kept.sum()),
            unknown_items=None if unknown is None else int((kept & unknown).sum()),
            history_days=used,
            history_mean=mean,
            quarantined=dict(by_reason),
            source_files=dict(Counter(str(f) for f in files[in_day])),
        )
    return stats


def unplaced_rows(rows: pa.Table, bad: np.ndarray, placed: np.ndarray) -> Counter[str]:
    """Per source file: its rows among ``rows`` that could not be placed on a day."""
    files = rows["source_file"].to_numpy(zero_copy_only=False)
    return Counter(str(f) for f in files[~placed & bad])


def unplaced_files(unplaced: Mapping[str, int], file_rows: dict[str, int]) -> list[dict[str, Any]]:
    """Source files with rows that could not be placed on a day: rows, unplaced rows, share."""
    return [
        {
            "source_file": f,
            "rows": int(file_rows.get(f, n)),
            "unplaced": n,
            "unplaced_share": n / max(int(file_rows.get(f, n)), 1),
        }
        for f, n in sorted(unplaced.items())
    ]


def reason_examples(rows: pa.Table, reasons: list[list[str]], limit: int = 3) -> dict[tuple[dt.date, str], str]:
    """For each (day, reason code) of the quarantined rows but bots: up to ``limit`` distinct
    values of the column the reason concerns, as shown in messages, in the rows' order."""
    days = pc.cast(rows["dt"], pa.int32()).to_numpy(zero_copy_only=False)
    positions: dict[tuple[int, str], list[int]] = {}
    for i, codes in enumerate(reasons):
        for code in codes:
            if code != BOT:
                positions.setdefault((int(days[i]), code), []).append(i)
    examples: dict[tuple[dt.date, str], str] = {}
    for (number, code), where in positions.items():
        column = reasons_column(code)
        shown: list[str] = []
        for value in pc.unique(rows[column].take(pa.array(where))):  # in order of first occurrence
            text = _show(value, column)
            if text not in shown:
                shown.append(text)
                if len(shown) == limit:
                    break
        examples[(EPOCH + dt.timedelta(days=number), code)] = ", ".join(shown)
    return examples


def reasons_column(code: str) -> str:
    """The staged column whose value best shows a reason (the raw line for unreadable ones)."""
    for column in ("user_id", "item_id", "event_type", "event_ts", "event_id"):
        if column in code:
            return column
    return "raw_line" if code in ("invalid_utf8", "wrong_field_count", "unparseable_line") else "source_file"


def _show(value: pa.Scalar, column: str) -> str:
    if not value.is_valid:
        return "NULL"
    if column == "event_ts":
        seconds = pc.cast(value, pa.timestamp("s", tz="UTC"), safe=False)
        return str(pc.strftime(seconds, format="%Y-%m-%dT%H:%M:%S").as_py()) + "Z"
    if column == "source_file":
        return f"a line of {os.path.basename(str(value.as_py()))}"
    text = str(value.as_py())
    if len(text.encode("utf-8")) > 60:
        return f"{text[:24]!r}... ({len(text.encode('utf-8')):,} bytes)"
    return repr(text)


def unknown_examples(rows: pa.Table, day: dt.date, catalog: pa.Array | None, limit: int = 3) -> list[str]:
    if catalog is None:
        return []
    items = rows.filter(pc.equal(rows["dt"], pa.scalar(day, pa.date32())))["item_id"]
    unknown = items.filter(pc.invert(pc.is_in(items, value_set=catalog)).fill_null(False))
    return [str(v) for v in pc.unique(unknown).to_pylist()[:limit]]


def totals(stats: dict[dt.date, DayStats]) -> dict[str, Any]:
    reasons: Counter[str] = Counter()
    for s in stats.values():
        reasons.update(s.quarantined)
    return {
        "rows_read": sum(s.rows_read for s in stats.values()),
        "rows_kept": sum(s.kept for s in stats.values()),
        "quarantined": sum(s.staged - s.kept for s in stats.values()),
        "duplicates": sum(s.duplicates for s in stats.values()),
        "reasons": reasons,
    }


def by_reason(reasons: Counter[str]) -> str:
    return ", ".join(f"{code}: {n:,}" for code, n in reasons.most_common()) or "none"
