"""Task ``extract``: the store's events of the run date (and of any window day the lake lacks)
staged in ``lake/staging/interactions/dt=D/`` for validate.

The source (:mod:`recsys.io.sources`: files, or PostgreSQL staged as Parquet) hands over
the needed days as files; DuckDB reads them. validate then checks the staged days and only
then writes ``lake/interactions/dt=D/`` (the rows that passed) and
``lake/quarantine/interactions/dt=D/`` (the rows that did not, each with its reason). Later
stages read only ``lake/interactions``, so a batch that fails never reaches them, and a day
that failed is still missing there, so the next night extracts and checks it again.

Rows that no day of the run takes by their timestamp are not dropped silently. Each source
file that fed the run gets a *home day*: the extracted day holding most of its rows, when that
is at least half of them (a daily or hourly file has one; a single file holding months of
history has none). Its rows without a usable ``event_ts``, with one in the future, or (home
files only) on an earlier window day this run does not extract and that the lake does not
already hold, and its CSV lines DuckDB could not parse, are staged under the home day, where
validate quarantines them. Those of files without a home are staged under the run date as
*unplaced* and judged against their own file's row count instead of a day's.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from recsys import datasets
from recsys.config import Settings
from recsys.core.checks import FUTURE_TOLERANCE
from recsys.core.window import Window
from recsys.io import lake
from recsys.io.source import open_source
from recsys.io.sources.files import (
    CSV_QUOTE_ERRORS,
    RegisteredSource,
    SourceError,
    find_unreadable_file,
    raw_values,
    register_source,
    rejected_lines,
)
from recsys.io.sql import connect, run_sql
from recsys.schemas import INTERACTIONS_SCHEMA

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)

# What extract stages: the canonical row, where it came from, and why it could not be read.
STAGED_SCHEMA = pa.schema(
    [
        *INTERACTIONS_SCHEMA,
        ("source_file", pa.string()),
        ("read_error", pa.string()),  # a CSV line that could not be parsed: why (raw_line holds it)
        ("raw_line", pa.string()),
        ("placed", pa.bool_()),  # False: a stray of a file with no home day (see the module doc)
    ]
)

HOME_DAY_MIN_SHARE = 0.5

# DuckDB's CSV reject types, as the reasons validate reports.
READ_ERRORS = {
    "INVALID ENCODING": "invalid_utf8",
    "TOO MANY COLUMNS": "wrong_field_count",
    "MISSING COLUMNS": "wrong_field_count",
}


class EmptyDayError(ValueError):
    """The run date has no events in the source."""


def extract(settings: Settings, day: dt.date) -> dict[str, Any]:
    """Stage the run date's events (and any window day missing from the lake) for validate.

    Returns {"days": [...], "rows": n, "duplicates_dropped": n, "stray_rows": n,
    "rejected_lines": n, "empty_files": [...], "seconds": s}. Raises EmptyDayError when the run
    date has no events, SourceError naming the file when the source cannot be read (a
    truncated or unparseable file, a missing column, a quote that never closes, a file in
    which no row has a usable event_ts).
    """

    window = Window.of(settings, day)
    todo = [d for d in window.days if d == day or not lake.partition_exists(settings.lake, datasets.INTERACTIONS, d)]
    with connect(temp_dir=settings.duckdb_temp_dir) as con:
        source = open_source(settings).stage(day, todo)  # PostgreSQL: the needed days as Parquet
        started = time.perf_counter()
        registered = register_source(con, source, settings.source_columns, list(settings.event_weights))
        future = dt.datetime.now(dt.UTC) + FUTURE_TOLERANCE
        with _named_read_errors(con, registered):
            per_file = run_sql(con, "source_file_days")
            rejects = rejected_lines(con, registered)
            _check_files(con, registered, per_file, rejects)
            homes = file_homes(per_file, todo)
            strays = _stray_rows(con, settings, window, todo, homes, future)
            strays = pa.concat_tables([strays, _reject_rows(rejects, homes, day)])
            file_rows = {str(f): int(n) for f, n in _file_totals(per_file).items() if f in homes}
            rows = duplicates = 0
            written: list[str] = []
            # Contiguous runs of missing days, at most a week per query: one scan per chunk, bounded memory.
            for chunk in _chunks(todo, max_days=7):
                chunk_start = _midnight(chunk[0])
                chunk_end = _midnight(chunk[-1] + dt.timedelta(days=1))
                table = run_sql(con, datasets.INTERACTIONS, {"start": chunk_start, "end": chunk_end})
                first = pc.equal(table["occurrence"], 1)
                dates = table["event_date"]
                for d in chunk:
                    in_day = pc.equal(dates, pa.scalar(d, pa.date32()))
                    read = int(pc.sum(in_day).as_py() or 0)
                    part = _staged(table.filter(pc.and_(in_day, first)), placed=True)
                    day_strays = strays.filter(pc.equal(strays["home_day"], pa.scalar(d, pa.date32())))
                    if d == day and part.num_rows == 0:
                        raise EmptyDayError(_empty_day_message(settings, registered, day, day_strays))
                    staged = pa.concat_tables([part, day_strays.select(STAGED_SCHEMA.names).cast(STAGED_SCHEMA)])
                    meta = {
                        "day": d.isoformat(),
                        "run_date": day.isoformat(),
                        "rows_read": read + day_strays.num_rows,
                        "duplicates_dropped": read - part.num_rows,
                        "strays": dict(Counter(day_strays["stray"].to_pylist())),
                        "file_rows": file_rows if d == day else {},
                        "empty_files": [str(p) for p in registered.empty_files] if d == day else [],
                    }
                    lake.write_partition(
                        settings.lake, datasets.STAGING, d, staged, extra_files={datasets.EXTRACT_META: meta}
                    )
                    rows += staged.num_rows
                    duplicates += read - part.num_rows
                    written.append(d.isoformat())
    seconds = time.perf_counter() - started
    log.info(
        "extract: %d day(s), %d rows in %.1f s (%.0f rows/s), %d duplicate(s) dropped, %d stray row(s) and "
        "%d unparseable CSV line(s) staged for quarantine, %d empty file(s) skipped",
        len(written),
        rows,
        seconds,
        rows / max(seconds, 1e-9),
        duplicates,
        int(pc.sum(pc.is_null(strays["read_error"])).as_py() or 0),
        int(pc.sum(pc.is_valid(strays["read_error"])).as_py() or 0),
        len(registered.empty_files),
    )
    return {
        "days": written,
        "rows": rows,
        "duplicates_dropped": duplicates,
        "stray_rows": strays.num_rows,
        "empty_files": [str(p) for p in registered.empty_files],
        "seconds": round(seconds, 2),
    }


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def _chunks(days: list[dt.date], max_days: int) -> list[list[dt.date]]:
    """Split sorted days into runs of consecutive days, each at most ``max_days`` long."""
    chunks: list[list[dt.date]] = []
    for d in days:
        if chunks and (d - chunks[-1][-1]).days == 1 and len(chunks[-1]) < max_days:
            chunks[-1].append(d)
        else:
            chunks.append([d])
    return chunks


@contextmanager
def _named_read_errors(con: duckdb.DuckDBPyConnection, registered: RegisteredSource) -> Iterator[None]:
    """Turn a DuckDB error while scanning the source into a SourceError naming the broken file."""
    import duckdb


    try:
        yield
    except duckdb.Error as exc:
        named = find_unreadable_file(con, registered)
        if named is not None:
            raise named from exc
        raise SourceError(f"cannot read the event source {registered.root}: {exc}") from exc


def _staged(table: pa.Table, placed: bool) -> pa.Table:
    """Rows of the interactions query as STAGED_SCHEMA (no read error, no raw line)."""
    n = table.num_rows
    columns = {name: table[name] for name in (*INTERACTIONS_SCHEMA.names, "source_file")}
    columns["read_error"] = pa.nulls(n, pa.string())
    columns["raw_line"] = pa.nulls(n, pa.string())
    columns["placed"] = pa.array([placed] * n, pa.bool_())
    return pa.table(columns).cast(STAGED_SCHEMA)


def _file_totals(per_file: pa.Table) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for row in per_file.select(["source_file", "events"]).to_pylist():
        totals[row["source_file"]] += int(row["events"])
    return dict(totals)


def file_homes(
    per_file: pa.Table, days: Sequence[dt.date], min_share: float = HOME_DAY_MIN_SHARE
) -> dict[str, dt.date | None]:
    """The home day of every file with rows on one of ``days`` (None: no day holds ``min_share``).

    ``per_file`` is sql/source_file_days.sql's output (source_file, event_date, events). A
    file's home is the day of ``days`` holding most of its rows, if that is at least
    ``min_share`` of all of them (rows without a timestamp included). Files with no row on
    ``days`` are not in the result: this run does not read them.
    """
    wanted = set(days)
    totals = _file_totals(per_file)
    best: dict[str, tuple[int, dt.date]] = {}
    for row in per_file.to_pylist():
        d = row["event_date"]
        if d in wanted:
            count = int(row["events"])
            if row["source_file"] not in best or (count, d) > best[row["source_file"]]:
                best[row["source_file"]] = (count, d)
    return {f: (d if count >= min_share * totals[f] else None) for f, (count, d) in best.items()}


def _check_files(
    con: duckdb.DuckDBPyConnection, registered: RegisteredSource, per_file: pa.Table, rejects: pa.Table
) -> None:
    """Fail on files that cannot be used at all: a CSV quote that never closes, no line that
    parses, or no row with a usable event_ts. Raises SourceError naming the file."""

    for row in rejects.to_pylist():
        if any(kind in row["error_types"] for kind in CSV_QUOTE_ERRORS):
            raise SourceError(
                f"cannot read {row['source_file']} as CSV: line {row['line']} opens a quote that is never "
                f"closed ({row['error_types']}: {str(row['raw_line'])[:120]!r}), so the lines after it "
                "cannot be trusted; expected every quoted field to end with '\"'. Fix or remove the file."
            )
    totals = _file_totals(per_file)
    rejected = Counter(rejects["source_file"].to_pylist())
    for name, count in rejected.items():
        if totals.get(name, 0) == 0:
            raise SourceError(
                f"cannot read {name} as CSV: none of its {count:,} line(s) parses (e.g. "
                f"{rejects.filter(pc.equal(rejects['source_file'], name))['error_types'][0].as_py()}); "
                "expected UTF-8 text with the header's number of fields"
            )
    timed: Counter[str] = Counter()
    for row in per_file.to_pylist():
        if row["event_date"] is not None:
            timed[row["source_file"]] += int(row["events"])
    for source_file in registered.files:
        name = str(source_file.path)
        if totals.get(name, 0) > 0 and timed[name] == 0:
            column = dict(source_file.mapping)["event_ts"]
            examples = raw_values(con, source_file, "event_ts")
            raise SourceError(
                f"cannot use {name}: none of its {totals[name]:,} rows has a usable event_ts (column {column!r}, "
                f"e.g. {examples}); expected a timestamp, ISO-8601 text (an offset is converted to UTC), "
                "or epoch seconds / milliseconds"
            )


def _stray_rows(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    window: Window,
    days: list[dt.date],
    homes: dict[str, dt.date | None],
    future: dt.datetime,
) -> pa.Table:
    """Rows of the files that fed this run that no extracted day takes, with ``home_day`` and ``stray``.

    Rows on an earlier day that the lake already holds (the same event_id, or user, item, type
    and timestamp) are replays, not strays, and are left out.
    """

    run_date = window.day
    table = run_sql(
        con,
        "stray_events",
        {
            "files": sorted(homes),
            "home_files": sorted(f for f, d in homes.items() if d is not None),
            "future": future,
            "window_start": window.start,
            "end": window.end,
            "extracted_days": list(days),
        },
    )
    earlier = pc.equal(table["stray"], "earlier_day")
    if table.num_rows and pc.any(earlier).as_py():
        late = table.filter(earlier)
        late_days = pc.cast(late["event_ts"], pa.date32())
        keep = pc.invert(earlier)
        known = _known_keys(settings, sorted(set(late_days.to_pylist())))
        new_late = pc.invert(pc.is_in(_event_keys(late), value_set=known))
        log.info(
            "extract: %d row(s) on earlier days were already in the lake (replays)",
            late.num_rows - int(pc.sum(new_late).as_py() or 0),
        )
        table = pa.concat_tables([table.filter(keep), late.filter(new_late)])
    home = [homes.get(f) or run_date for f in table["source_file"].to_pylist()]
    placed = [homes.get(f) is not None for f in table["source_file"].to_pylist()]
    n = table.num_rows
    return pa.table(
        {
            **{name: table[name] for name in (*INTERACTIONS_SCHEMA.names, "source_file")},
            "read_error": pa.nulls(n, pa.string()),
            "raw_line": pa.nulls(n, pa.string()),
            "placed": pa.array(placed, pa.bool_()),
            "stray": table["stray"],
            "home_day": pa.array(home, pa.date32()),
        }
    ).cast(_STRAY_SCHEMA)

_STRAY_SCHEMA = pa.schema([*STAGED_SCHEMA, ("stray", pa.string()), ("home_day", pa.date32())])


def _event_keys(table: pa.Table) -> pa.Array:
    """The identity of each event: its event_id, or user, item, type and timestamp without one."""
    natural = pc.binary_join_element_wise(
        table["user_id"].cast(pa.string()),
        table["item_id"].cast(pa.string()),
        table["event_type"].cast(pa.string()),
        pc.cast(pc.cast(table["event_ts"], pa.timestamp("us", tz="UTC")), pa.int64()).cast(pa.string()),
        "\x1f",
    )
    with_id = pc.binary_join_element_wise(pa.scalar("id"), table["event_id"].cast(pa.string()), "\x1f")
    return pc.if_else(pc.is_valid(table["event_id"]), with_id, natural).combine_chunks()


def _known_keys(settings: Settings, days: list[dt.date]) -> pa.Array:
    """Event keys of the lake's interaction partitions for ``days`` (those that exist)."""
    keys = [
        _event_keys(lake.read_partition(settings.lake, datasets.INTERACTIONS, d))
        for d in days
        if lake.partition_exists(settings.lake, datasets.INTERACTIONS, d)
    ]
    return pa.concat_arrays(keys) if keys else pa.array([], pa.string())


def _reject_rows(rejects: pa.Table, homes: dict[str, dt.date | None], run_date: dt.date) -> pa.Table:
    """Unparseable CSV lines of the files that fed this run, staged like strays (``read_error`` set).

    Lines of files this run does not read were judged when their own day was extracted.
    """
    rows = [r for r in rejects.to_pylist() if r["source_file"] in homes]
    reasons = [
        ",".join(
            sorted(
                {READ_ERRORS.get(k.strip(), k.strip().lower().replace(" ", "_")) for k in r["error_types"].split(",")}
            )
        )
        for r in rows
    ]
    n = len(rows)
    return pa.table(
        {
            "user_id": pa.nulls(n, pa.string()),
            "item_id": pa.nulls(n, pa.string()),
            "event_type": pa.nulls(n, pa.string()),
            "event_ts": pa.nulls(n, pa.timestamp("us", tz="UTC")),
            "event_id": pa.nulls(n, pa.string()),
            "source_file": pa.array([r["source_file"] for r in rows], pa.string()),
            "read_error": pa.array(reasons, pa.string()),
            "raw_line": pa.array([f"line {r['line']}: {r['raw_line']}" for r in rows], pa.string()),
            "placed": pa.array([homes[r["source_file"]] is not None for r in rows], pa.bool_()),
            "stray": pa.array(["unparseable_line"] * n, pa.string()),
            "home_day": pa.array([homes[r["source_file"]] or run_date for r in rows], pa.date32()),
        },
        schema=_STRAY_SCHEMA,
    )


def _empty_day_message(settings: Settings, registered: RegisteredSource, day: dt.date, strays: pa.Table) -> str:
    notes = []
    if registered.empty_files:
        notes.append(
            f"{len(registered.empty_files)} empty file(s) were skipped, e.g. {registered.empty_files[0]}"
        )
    if strays.num_rows:
        notes.append(f"{strays.num_rows:,} row(s) of its files had no usable event_ts or could not be parsed")
    return (
        f"the run date {day} has no events in {settings.source} "
        f"(between {_midnight(day).isoformat()} and {_midnight(day + dt.timedelta(days=1)).isoformat()}); "
        "expected at least one row. Is the source complete for that day?"
        + (f" ({'; '.join(notes)})" if notes else "")
    )
