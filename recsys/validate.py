"""The Great Expectations suites for staged interaction days, and what follows from their results.

GX is imported only here and only when the validate task runs: nothing of it at DAG parse time.
Three suites, defined in code, each run on one pandas batch:

* **rows** (:func:`build_row_suite`; every row extract staged this run): the required columns
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
when every check passes are the kept rows written to ``lake/interactions/dt=D/``.

``event_id`` uniqueness is per day: extract already drops repeats within its scans, and a
nightly run sees one day, so a window-wide check would depend on how many days a run stages.

A bot's rows are quarantined but not counted as bad rows: the rest of its day is judged on
its own, volume included. A scraper on top of a normal day does not stop the night; a tracker
that stamps every event with one id leaves too few rows and does.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys import lake
from recsys.config import Settings
from recsys.schemas import INTERACTIONS_SCHEMA
from recsys.source import INVALID_UTF8_MARK

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

MAX_ID_BYTES = 2048  # DynamoDB's limit for a partition key value, in bytes of UTF-8
QUARANTINE = "quarantine/interactions"
VALIDATION = "validation"
DOCS_SITE = "recsys"
# The volume check needs a history worth comparing with: this many earlier days with rows,
# averaging at least this many rows (below that, Poisson noise alone leaves the band).
VOLUME_MIN_HISTORY_DAYS = 3
VOLUME_MIN_MEAN_ROWS = 10.0
BOT = "bot_user"
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


# --------------------------------------------------------------------------- the suites


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
        "unknown_event_type": Reason("event_type", f"one of the configured event weights {sorted(settings.event_weights)}"),
        "missing_event_ts": Reason("event_ts", "a timestamp, ISO-8601 text or epoch seconds / milliseconds"),
        "event_ts_outside_day": Reason("event_ts", "a time inside the partition's day (UTC); the row came in a file of that day"),
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
        reasons[f"{column}_too_long"] = Reason(column, f"at most {MAX_ID_BYTES:,} bytes of UTF-8 (DynamoDB's key limit)")
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
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=sorted(settings.event_weights)))
    # Each row must lie inside its own partition's day: 0 <= seconds since its midnight < 86400.
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(column="seconds_into_day", min_value=0, max_value=86400, strict_max=True)
    )
    # Within the day, not the window (see the module docstring).
    suite.add_expectation(
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["dt", "event_id"], ignore_row_if="any_value_is_missing")
    )
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(column="user_share_of_day", min_value=0, max_value=settings.bot_max_user_share)
    )
    return suite


def build_day_suite(settings: Settings) -> Any:
    """The batch-level suite (GX 1.x) over one row per staged day (see :func:`day_stats`)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name="interactions_days")
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="bad_share", min_value=0, max_value=settings.max_bad_share))
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(
            column="volume_ratio", min_value=settings.volume_min_ratio, max_value=settings.volume_max_ratio
        )
    )
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(column="unknown_item_share", min_value=0, max_value=settings.max_unknown_item_share)
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


# --------------------------------------------------------------------------- pure parts


def row_frame(rows: pa.Table, settings: Settings) -> "pd.DataFrame":
    """The staged rows (with ``dt``, a date32 column) as pandas, plus the derived columns the
    row suite checks: ``<id>_bytes``, ``seconds_into_day`` and ``user_share_of_day``."""
    day_start = pc.cast(pc.cast(rows["dt"], pa.timestamp("s")), pa.int64())
    ts = pc.cast(pc.cast(rows["event_ts"], pa.timestamp("us", tz="UTC")), pa.int64())
    seconds = pc.divide(pc.cast(pc.subtract(ts, pc.multiply(day_start, 1_000_000)), pa.float64()), 1e6)
    table = rows.drop_columns(["placed"])
    frame = table.set_column(table.schema.get_field_index("dt"), "dt", pc.cast(rows["dt"], pa.string())).to_pandas()
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


def row_reasons(frame: "pd.DataFrame", results: Sequence[Any], now: dt.datetime) -> list[list[str]]:
    """The quarantine reasons of every row (an empty list: the row passed), from the row suite's
    COMPLETE results. A line that could not be read gets only that reason."""
    reasons: list[list[str]] = [[] for _ in range(len(frame))]
    for item in results:
        if item.success:
            continue
        config = item.expectation_config
        indexes = _indexes(item.result)
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


def _indexes(result: dict[str, Any]) -> np.ndarray | None:
    indexes = result.get("unexpected_index_list")
    if indexes is None:
        return None
    return np.asarray([i if isinstance(i, (int, np.integer)) else i.get("index") for i in indexes], dtype="int64")


def _failed_positions(item: Any) -> set[int]:
    """Row positions a failed column expectation names (empty when it passed)."""
    indexes = None if item.success else _indexes(item.result)
    return set() if indexes is None else {int(i) for i in indexes}


def _reason_namer(
    kind: str, column: str, frame: "pd.DataFrame", now: dt.datetime
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


def trailing_mean(counts: dict[dt.date, int], day: dt.date, history_days: int, lookback: int) -> tuple[int, float | None]:
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


# --------------------------------------------------------------------------- the stage


def validate_partitions(settings: Settings, days: Sequence[dt.date], run_date: dt.date | None = None) -> dict[str, Any]:
    """Validate the staged partitions of ``days``; write quarantine, Data Docs and, when every
    check passes, the kept rows to ``lake/interactions``. Returns a summary dict.

    Raises ValidationError naming each failing partition or file, column, count and what was
    expected (after writing the quarantine and the Data Docs); FileNotFoundError when a day
    was not staged (run extract first).
    """
    from recsys.ingest import EXTRACT_META, STAGING

    run_date = run_date or max(days)
    started = time.perf_counter()
    now = dt.datetime.now(dt.timezone.utc)
    metas: dict[dt.date, dict[str, Any]] = {}
    tables = []
    for day in sorted(days):
        table = lake.read_partition(settings.lake, STAGING, day)
        metas[day] = lake.read_partition_json(settings.lake, STAGING, day, EXTRACT_META)
        tables.append(table.append_column("dt", pa.array([day] * table.num_rows, pa.date32())))
    rows = pa.concat_tables(tables)
    frame = row_frame(rows, settings)

    context = _gx_context()
    row_result = _run(context, "rows", build_row_suite(settings), frame)
    reasons = row_reasons(frame, row_result.results, now)
    table_problems = [
        f"column {r.expectation_config.kwargs.get('column')!r}: {r.expectation_config.type} failed ({r.result})"
        for r in row_result.results
        if not r.success and _indexes(r.result) is None
    ]
    quarantined = np.array([bool(r) for r in reasons], dtype=bool)
    only_bot = np.array([r == [BOT] for r in reasons], dtype=bool)
    bad = quarantined & ~only_bot
    placed = rows["placed"].to_numpy(zero_copy_only=False).astype(bool)
    catalog = _catalog_items(settings)
    stats = day_stats(settings, rows, metas, reasons, quarantined, bad, only_bot, placed, catalog)
    day_frame = _frame([s.row() for s in stats.values()])
    day_result = _run(context, "days", build_day_suite(settings), day_frame)
    files = unplaced_files(rows, bad, placed, metas[run_date].get("file_rows", {}))
    file_result = _run(context, "files", build_file_suite(settings), _frame(files)) if files else None

    summary_rows = [s.row() for s in stats.values()]
    problems = table_problems + _day_problems(settings, stats, day_result, rows, reasons, catalog)
    problems += _file_problems(settings, files, file_result)
    docs = _write_docs(settings, context, run_date, {"days": summary_rows, "files": files, "problems": problems})
    _write_quarantine(settings, rows, reasons, stats)
    _log_bots(settings, rows, only_bot, stats)
    seconds = time.perf_counter() - started
    total = _totals(stats)
    line = (
        f"validate {run_date}: {total['rows_read']:,} rows read in {len(stats)} day(s), {total['rows_kept']:,} kept, "
        f"{total['quarantined']:,} quarantined ({_by_reason(total['reasons'])}), "
        f"{total['duplicates']:,} duplicate(s) dropped; {len(problems)} failed check(s); "
        f"{seconds:.1f} s; Data Docs: {docs}"
    )
    if problems:
        log.error("%s", line)
        raise ValidationError(
            f"validation failed for {len(problems)} check(s) of {len(frame):,} staged rows in {len(stats)} "
            f"partition(s) from {settings.source}; nothing downstream runs and nothing served changes:\n  "
            + "\n  ".join(problems)
            + f"\nQuarantined rows (with a reason column): {_quarantine_dirs(settings, stats)}; Data Docs: {docs}"
        )
    for day, s in stats.items():
        mask = pc.and_(pc.equal(rows["dt"], pa.scalar(day, pa.date32())), pa.array(~quarantined & placed))
        lake.write_partition(
            settings.lake, "interactions", day, rows.filter(mask).select(INTERACTIONS_SCHEMA.names).cast(INTERACTIONS_SCHEMA)
        )
    log.info("%s", line)
    for s in stats.values():
        if s.quarantined and len(stats) > 1:
            log.info("validate %s: %s", s.day, json.dumps(s.row()))
    return {
        "rows": total["rows_read"],
        "rows_kept": total["rows_kept"],
        "quarantined": total["quarantined"],
        "duplicates_dropped": total["duplicates"],
        "reasons": dict(total["reasons"]),
        "partitions": len(stats),
        "data_docs": str(docs),
        "seconds": round(seconds, 2),
    }


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
) -> dict[dt.date, DayStats]:
    """Per staged day: rows read, kept, bad, bot, unknown items and the trailing volume."""
    days = pc.cast(rows["dt"], pa.int32()).to_numpy(zero_copy_only=False)
    files = rows["source_file"].to_numpy(zero_copy_only=False)
    unknown = (
        None
        if catalog is None
        else pc.invert(pc.is_in(rows["item_id"], value_set=catalog)).fill_null(True).to_numpy(zero_copy_only=False)
    )
    counts = _lake_counts(settings, sorted(metas))
    stats: dict[dt.date, DayStats] = {}
    for day in sorted(metas):
        code = (day - dt.date(1970, 1, 1)).days
        in_day = days == code
        mine = in_day & placed
        kept = mine & ~quarantined
        counts[day] = int(kept.sum())
        used, mean = trailing_mean(counts, day, settings.volume_history_days, max(settings.window_days, 4 * settings.volume_history_days))
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


def unplaced_files(rows: pa.Table, bad: np.ndarray, placed: np.ndarray, file_rows: dict[str, int]) -> list[dict[str, Any]]:
    """Source files with rows that could not be placed on a day: rows, unplaced rows, share."""
    files = rows["source_file"].to_numpy(zero_copy_only=False)
    counts = Counter(str(f) for f in files[~placed & bad])
    return [
        {"source_file": f, "rows": int(file_rows.get(f, n)), "unplaced": n, "unplaced_share": n / max(int(file_rows.get(f, n)), 1)}
        for f, n in sorted(counts.items())
    ]


def _lake_counts(settings: Settings, days: list[dt.date]) -> dict[dt.date, int]:
    """Rows of the lake's interaction partitions that could be history for ``days`` (not themselves)."""
    lookback = max(settings.window_days, 4 * settings.volume_history_days)
    wanted = set(days)
    counts: dict[dt.date, int] = {}
    start = min(days) - dt.timedelta(days=lookback)
    for candidate in lake.days_between(start, max(days)):
        if candidate not in wanted and lake.partition_exists(settings.lake, "interactions", candidate):
            counts[candidate] = lake.partition_rows(settings.lake, "interactions", candidate)
    return counts


def _catalog_items(settings: Settings) -> pa.Array | None:
    """The catalog's item ids, or None when no catalog is configured."""
    if settings.catalog is None:
        return None
    from recsys.source import register_catalog
    from recsys.sqlrun import connect

    con = connect()
    register_catalog(con, settings.catalog)
    return con.sql("SELECT DISTINCT item_id FROM catalog WHERE item_id IS NOT NULL").to_arrow_table()["item_id"].combine_chunks().cast(pa.string())


# --------------------------------------------------------------------------- messages


def _day_problems(
    settings: Settings,
    stats: dict[dt.date, DayStats],
    result: Any,
    rows: pa.Table,
    reasons: list[list[str]],
    catalog: pa.Array | None,
) -> list[str]:
    """One message per failed day check, naming the partition, column, count and expectation."""
    failed = {
        item.expectation_config.kwargs["column"]: _failed_positions(item) for item in result.results if not item.success
    }
    catalogue = reasons_catalog(settings)
    ordered = list(stats.values())
    problems = []
    for i in sorted(failed.get("bad_share", set())):
        s = ordered[i]
        parts = []
        for code, count in sorted(s.quarantined.items(), key=lambda kv: -kv[1]):
            if code == BOT:
                continue
            reason = catalogue.get(code, Reason("?", code))
            parts.append(f"{code}: {count:,} (column {reason.column!r}, expected {reason.expected}; e.g. {_examples(rows, reasons, s.day, code)})")
        problems.append(
            f"{_where(settings, s)}: {s.bad:,} of {s.placed - s.bot:,} rows ({s.bad_share:.2%}) broke row checks, "
            f"above the allowed {settings.max_bad_share:.2%} (RECSYS_MAX_BAD_SHARE): " + "; ".join(parts)
        )
    for i in sorted(failed.get("volume_ratio", set())):
        s = ordered[i]
        problems.append(
            f"{_where(settings, s)}: volume anomaly: {s.kept:,} rows kept, {s.volume_ratio or 0:.2f}x the mean of the "
            f"previous {s.history_days} day(s) with data ({s.history_mean or 0:,.0f} rows/day); expected between "
            f"{settings.volume_min_ratio}x and {settings.volume_max_ratio}x (RECSYS_VOLUME_MIN_RATIO / "
            "RECSYS_VOLUME_MAX_RATIO). Is the source complete for that day, or did something replay or flood it?"
        )
    for i in sorted(failed.get("unknown_item_share", set())):
        s = ordered[i]
        problems.append(
            f"{_where(settings, s)}: column 'item_id': {s.unknown_items or 0:,} of {s.kept:,} kept rows "
            f"({s.unknown_item_share or 0:.2%}) name an item the catalog {settings.catalog} does not have "
            f"(e.g. {', '.join(_unknown_examples(rows, s.day, catalog))}); expected at most {settings.max_unknown_item_share:.0%} "
            "(RECSYS_MAX_UNKNOWN_ITEM_SHARE). Is the catalog stale, or the item ids of another system?"
        )
    return problems


def _file_problems(settings: Settings, files: list[dict[str, Any]], result: Any | None) -> list[str]:
    if result is None:
        return []
    failed: set[int] = set()
    for item in result.results:
        failed |= _failed_positions(item)
    return [
        f"{files[i]['source_file']}: {files[i]['unplaced']:,} of its {files[i]['rows']:,} rows "
        f"({files[i]['unplaced_share']:.2%}) have no usable event_ts, one in the future, or could not be parsed; "
        f"expected at most {settings.max_bad_share:.2%} (RECSYS_MAX_BAD_SHARE)"
        for i in sorted(failed)
    ]


def _quarantine_dirs(settings: Settings, stats: dict[dt.date, DayStats]) -> str:
    dirs = [lake.partition_uri(settings.lake, QUARANTINE, d) for d, s in stats.items() if s.kept < s.staged]
    return ", ".join(dirs[:3]) + (f" and {len(dirs) - 3} more" if len(dirs) > 3 else "") if dirs else "none"


def _log_bots(settings: Settings, rows: pa.Table, only_bot: np.ndarray, stats: dict[dt.date, DayStats]) -> None:
    """A warning per day with bot rows: who, how many, what share."""
    if not only_bot.any():
        return
    bots = rows.filter(pa.array(only_bot)).group_by(["dt", "user_id"]).aggregate([("user_id", "count")])
    for row in bots.to_pylist():
        s = stats[row["dt"]]
        log.warning(
            "validate %s: user %r made %s of the day's %s placed rows (%.0f%%, above RECSYS_BOT_MAX_USER_SHARE=%.0f%%): "
            "its rows are quarantined as bot_user and the rest of the day is judged on its own",
            row["dt"], str(row["user_id"])[:80], f"{row['user_id_count']:,}", f"{s.placed:,}",
            100 * row["user_id_count"] / max(s.placed, 1), 100 * settings.bot_max_user_share,
        )


def _where(settings: Settings, s: DayStats) -> str:
    from recsys.ingest import STAGING

    files = sorted(s.source_files.items(), key=lambda kv: -kv[1])
    named = ", ".join(os.path.basename(f) for f, _ in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return f"{lake.partition_uri(settings.lake, STAGING, s.day)} (from {named or 'no file'})"


def _examples(rows: pa.Table, reasons: list[list[str]], day: dt.date, code: str, limit: int = 3) -> str:
    """Up to ``limit`` distinct values (of the column the reason concerns) of one day's rows with that reason."""
    column = rows[reasons_column(code)]
    days = pc.cast(rows["dt"], pa.int32()).to_numpy(zero_copy_only=False)
    code_of_day = (day - dt.date(1970, 1, 1)).days
    values: list[str] = []
    for i in np.flatnonzero(days == code_of_day):
        if code in reasons[i]:
            values.append(_show(column[int(i)], reasons_column(code)))
            if len(set(values)) >= limit:
                break
    return ", ".join(dict.fromkeys(values))


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


def _unknown_examples(rows: pa.Table, day: dt.date, catalog: pa.Array | None, limit: int = 3) -> list[str]:
    if catalog is None:
        return []
    items = rows.filter(pc.equal(rows["dt"], pa.scalar(day, pa.date32())))["item_id"]
    unknown = items.filter(pc.invert(pc.is_in(items, value_set=catalog)).fill_null(False))
    return [str(v) for v in pc.unique(unknown).to_pylist()[:limit]]


def _totals(stats: dict[dt.date, DayStats]) -> dict[str, Any]:
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


def _by_reason(reasons: Counter[str]) -> str:
    return ", ".join(f"{code}: {n:,}" for code, n in reasons.most_common()) or "none"


# --------------------------------------------------------------------------- GX and the lake


def _gx_context() -> Any:
    """An ephemeral GX context (no project folder), without its default Data Docs site."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    for name in list(context.list_data_docs_sites()):
        context.delete_data_docs_site(name)
    return context


def _run(context: Any, name: str, suite: Any, frame: "pd.DataFrame") -> Any:
    """Validate ``frame`` against ``suite`` as a stored validation definition; returns the result."""
    import great_expectations as gx

    batch_definition = (
        context.data_sources.add_pandas(f"interactions_{name}")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe(name)
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch_definition, suite=context.suites.add(suite))
    )
    return definition.run(batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"})


def _frame(records: list[dict[str, Any]]) -> "pd.DataFrame":
    import pandas as pd

    frame = pd.DataFrame.from_records(records)
    for column in frame.columns:
        if column.endswith(("_share", "_ratio")):
            frame[column] = frame[column].astype("float64")  # None -> NaN, which GX skips
    if "quarantined" in frame:
        frame["quarantined"] = frame["quarantined"].map(lambda v: json.dumps(v, sort_keys=True))
    return frame


def _write_docs(settings: Settings, context: Any, run_date: dt.date, summary: dict[str, Any]) -> str:
    """Build the GX Data Docs (and summary.json) into ``lake/validation/dt=D/``; returns index.html's path."""
    with lake.replace_partition(settings.lake, VALIDATION, run_date) as tmp:
        context.add_data_docs_site(
            DOCS_SITE,
            {
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(tmp)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        context.build_data_docs(site_names=[DOCS_SITE])
        lake.write_json(tmp / "summary.json", {"run_date": run_date.isoformat(), **summary})
    return f"{lake.partition_uri(settings.lake, VALIDATION, run_date)}/index.html"


def _write_quarantine(settings: Settings, rows: pa.Table, reasons: list[list[str]], stats: dict[dt.date, DayStats]) -> None:
    """Write each day's quarantined rows with their reasons; remove a day's stale quarantine."""
    reason = pa.array([",".join(r) if r else None for r in reasons], pa.string())
    with_reason = rows.append_column("reason", reason)
    for day in stats:
        mask = pc.and_(pc.equal(rows["dt"], pa.scalar(day, pa.date32())), pc.is_valid(reason))
        part = with_reason.filter(mask).select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)
        if part.num_rows:
            lake.write_partition(settings.lake, QUARANTINE, day, part)
        else:
            lake.delete_partition(settings.lake, QUARANTINE, day)
