"""Task ``validate``: the staged days checked with Great Expectations (the suites and
statistics are in :mod:`recsys.core.checks`); quarantine and Data Docs written, and only
when every check passes the kept rows written to ``lake/interactions/dt=D/``.

The rows are checked a chunk of whole days at a time (``validate_chunk_rows``, oldest
first), so memory follows the chunk, not the window; the day and file suites then run once
on the per-day figures of all chunks. Each day is re-read from staging and filtered by the
mask its chunk left when the kept rows are written, so no chunk's rows are held until the end.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys import datasets
from recsys.config import Settings
from recsys.core.checks import (
    BOT,
    QUARANTINE_SCHEMA,
    DayStats,
    Findings,
    Reason,
    ValidationError,
    build_day_suite,
    build_file_suite,
    build_row_suite,
    by_reason,
    day_number,
    day_stats,
    failed_positions,
    plan_chunks,
    reason_examples,
    reasons_catalog,
    result_indexes,
    row_frame,
    row_reasons,
    span,
    totals,
    unknown_examples,
    unplaced_files,
    unplaced_rows,
)
from recsys.core.window import days_between
from recsys.io import gx, lake
from recsys.io.sources.files import read_catalog
from recsys.schemas import INTERACTIONS_SCHEMA

log = logging.getLogger(__name__)


def validate(settings: Settings, day: dt.date, days: list[str]) -> dict[str, Any]:
    """Run the GX suite over the days extract staged (always including the run date).

    Returns validate_partitions' summary; raises ValidationError (see recsys.validate).
    """

    wanted = sorted({dt.date.fromisoformat(d) for d in days} | {day})
    return validate_partitions(settings, wanted, run_date=day)


def validate_partitions(settings: Settings, days: Sequence[dt.date], run_date: dt.date | None = None) -> dict[str, Any]:
    """Validate the staged partitions of ``days``; write quarantine, Data Docs and, when every
    check passes, the kept rows to ``lake/interactions``. Returns a summary dict.

    The rows are checked a chunk of whole days at a time (``validate_chunk_rows``, oldest
    first), so memory follows the chunk, not the window; the day and file suites then run once
    on the per-day figures of all chunks. Raises ValidationError naming each failing
    partition or file, column, count and what was expected (after writing the quarantine and
    the Data Docs; nothing is written to ``lake/interactions`` then); FileNotFoundError when
    a day was not staged (run extract first).
    """

    run_date = run_date or max(days)
    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    ordered = sorted(days)
    chunks = plan_chunks(
        {day: lake.partition_rows(settings.lake, datasets.STAGING, day) for day in ordered},
        settings.validate_chunk_rows,
    )
    metas = {
        day: lake.read_partition_json(settings.lake, datasets.STAGING, day, datasets.EXTRACT_META) for day in ordered
    }
    catalog = _catalog_items(settings)
    context = gx.gx_context()
    row_suite = context.suites.add(build_row_suite(settings))
    findings = Findings(counts=_lake_counts(settings, ordered))
    for number, chunk in enumerate(chunks, 1):
        chunk_started = time.perf_counter()
        name = "rows" if len(chunks) == 1 else f"rows-{span(chunk)}"
        rows, quarantined = _validate_chunk(settings, context, row_suite, name, chunk, metas, catalog, now, findings)
        chunk_seconds = time.perf_counter() - chunk_started
        log.info(
            "validate: chunk %d/%d (%s): %s rows, %s quarantined, %.1f s (%s rows/s)",
            number,
            len(chunks),
            span(chunk),
            f"{rows:,}",
            f"{quarantined:,}",
            chunk_seconds,
            f"{rows / max(chunk_seconds, 1e-9):,.0f}",
        )

    stats = findings.stats
    day_frame = gx.records_frame([s.row() for s in stats.values()])
    day_result = gx.run_suite(context, "days", context.suites.add(build_day_suite(settings)), day_frame)
    files = unplaced_files(findings.unplaced, metas[run_date].get("file_rows", {}))
    file_result = (
        gx.run_suite(context, "files", context.suites.add(build_file_suite(settings)), gx.records_frame(files))
        if files
        else None
    )

    summary_rows = [s.row() for s in stats.values()]
    problems = findings.table_problems + _day_problems(settings, stats, day_result, findings)
    problems += _file_problems(settings, files, file_result)
    docs = gx.write_docs(settings, context, run_date, {"days": summary_rows, "files": files, "problems": problems})
    seconds = time.perf_counter() - started
    total = totals(stats)
    line = (
        f"validate {run_date}: {total['rows_read']:,} rows read in {len(stats)} day(s), {total['rows_kept']:,} kept, "
        f"{total['quarantined']:,} quarantined ({by_reason(total['reasons'])}), "
        f"{total['duplicates']:,} duplicate(s) dropped; {len(problems)} failed check(s); "
        f"{seconds:.1f} s; Data Docs: {docs}"
    )
    if problems:
        log.error("%s", line)
        raise ValidationError(
            f"validation failed for {len(problems)} check(s) of {sum(s.staged for s in stats.values()):,} staged rows "
            f"in {len(stats)} partition(s) from {settings.source}; "
            "nothing downstream runs and nothing served changes:\n  "
            + "\n  ".join(problems)
            + f"\nQuarantined rows (with a reason column): {_quarantine_dirs(settings, stats)}; Data Docs: {docs}"
        )
    for day in stats:
        _write_kept(settings, day, findings.kept[day])
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


def _validate_chunk(
    settings: Settings,
    context: Any,
    suite: Any,
    name: str,
    days: list[dt.date],
    metas: dict[dt.date, dict[str, Any]],
    catalog: pa.Array | None,
    now: dt.datetime,
    findings: Findings,
) -> tuple[int, int]:
    """Run the row suite (as validation ``name``) on the staged rows of ``days``, write their
    quarantine and add what is left to ``findings``; returns (rows, rows not kept)."""

    tables = []
    for day in days:
        table = lake.read_partition(settings.lake, datasets.STAGING, day)
        tables.append(table.append_column("dt", pa.array([day] * table.num_rows, pa.date32())))
    rows = pa.concat_tables(tables)
    frame = row_frame(rows, settings)
    row_result = gx.run_suite(context, name, suite, frame)
    reasons = row_reasons(frame, row_result.results, now)
    for problem in (
        f"column {r.expectation_config.kwargs.get('column')!r}: {r.expectation_config.type} failed ({r.result})"
        for r in row_result.results
        if not r.success and result_indexes(r.result) is None
    ):
        if problem not in findings.table_problems:  # the same broken column in every chunk: said once
            findings.table_problems.append(problem)
    del frame, row_result  # the pandas copy is the biggest thing here (GX has let go of it, see _run)
    quarantined = np.array([bool(r) for r in reasons], dtype=bool)
    only_bot = np.array([r == [BOT] for r in reasons], dtype=bool)
    bad = quarantined & ~only_bot
    placed = rows["placed"].to_numpy(zero_copy_only=False).astype(bool)
    stats = day_stats(
        settings,
        rows,
        {d: metas[d] for d in days},
        reasons,
        quarantined,
        bad,
        only_bot,
        placed,
        catalog,
        findings.counts,
    )
    keep = placed & ~quarantined
    day_numbers = pc.cast(rows["dt"], pa.int32()).to_numpy(zero_copy_only=False)
    for day in days:
        findings.kept[day] = keep[day_numbers == day_number(day)]  # a day's rows keep their staged order
        if catalog is not None:
            findings.unknown_examples[day] = unknown_examples(rows, day, catalog)
    findings.stats.update(stats)
    findings.examples.update(reason_examples(rows, reasons))
    findings.unplaced.update(unplaced_rows(rows, bad, placed))
    _write_quarantine(settings, rows, reasons, stats)
    _log_bots(settings, rows, only_bot, stats)
    return rows.num_rows, sum(s.staged - s.kept for s in stats.values())


def _write_kept(settings: Settings, day: dt.date, kept: np.ndarray) -> None:
    """Write the rows of the staged day that ``kept`` marks to ``lake/interactions/dt=day``."""

    staged = lake.read_partition(settings.lake, datasets.STAGING, day)
    if staged.num_rows != len(kept):
        raise lake.LakeError(
            f"{lake.partition_uri(settings.lake, datasets.STAGING, day)} changed while validate ran "
            f"({len(kept):,} rows "
            f"checked, {staged.num_rows:,} now): is another extract running? Run extract and validate again."
        )
    lake.write_partition(
        settings.lake,
        datasets.INTERACTIONS,
        day,
        staged.filter(pa.array(kept)).select(INTERACTIONS_SCHEMA.names).cast(INTERACTIONS_SCHEMA),
    )


def _lake_counts(settings: Settings, days: list[dt.date]) -> dict[dt.date, int]:
    """Rows of the lake's interaction partitions that could be history for ``days`` (not themselves)."""
    lookback = max(settings.window_days, 4 * settings.volume_history_days)
    wanted = set(days)
    counts: dict[dt.date, int] = {}
    start = min(days) - dt.timedelta(days=lookback)
    for candidate in days_between(start, max(days)):
        if candidate not in wanted and lake.partition_exists(settings.lake, datasets.INTERACTIONS, candidate):
            counts[candidate] = lake.partition_rows(settings.lake, datasets.INTERACTIONS, candidate)
    return counts


def _catalog_items(settings: Settings) -> pa.Array | None:
    """The catalog's item ids, or None when no catalog is configured."""
    if settings.catalog is None:
        return None

    items = read_catalog(settings.catalog)["item_id"].combine_chunks()
    return pc.unique(pc.drop_null(items)).cast(pa.string())


def _day_problems(
    settings: Settings,
    stats: dict[dt.date, DayStats],
    result: Any,
    findings: Findings,
) -> list[str]:
    """One message per failed day check, naming the partition, column, count and expectation,
    with the example values the chunks collected."""
    failed = {
        item.expectation_config.kwargs["column"]: failed_positions(item) for item in result.results if not item.success
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
            parts.append(
                f"{code}: {count:,} (column {reason.column!r}, expected {reason.expected}; "
                f"e.g. {findings.examples.get((s.day, code), '')})"
            )
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
            f"(e.g. {', '.join(findings.unknown_examples.get(s.day, []))}); "
            f"expected at most {settings.max_unknown_item_share:.0%} "
            "(RECSYS_MAX_UNKNOWN_ITEM_SHARE). Is the catalog stale, or the item ids of another system?"
        )
    return problems


def _file_problems(settings: Settings, files: list[dict[str, Any]], result: Any | None) -> list[str]:
    if result is None:
        return []
    failed: set[int] = set()
    for item in result.results:
        failed |= failed_positions(item)
    return [
        f"{files[i]['source_file']}: {files[i]['unplaced']:,} of its {files[i]['rows']:,} rows "
        f"({files[i]['unplaced_share']:.2%}) have no usable event_ts, one in the future, or could not be parsed; "
        f"expected at most {settings.max_bad_share:.2%} (RECSYS_MAX_BAD_SHARE)"
        for i in sorted(failed)
    ]


def _quarantine_dirs(settings: Settings, stats: dict[dt.date, DayStats]) -> str:
    dirs = [lake.partition_uri(settings.lake, datasets.QUARANTINE, d) for d, s in stats.items() if s.kept < s.staged]
    return ", ".join(dirs[:3]) + (f" and {len(dirs) - 3} more" if len(dirs) > 3 else "") if dirs else "none"


def _log_bots(settings: Settings, rows: pa.Table, only_bot: np.ndarray, stats: dict[dt.date, DayStats]) -> None:
    """A warning per day with bot rows: who, how many, what share."""
    if not only_bot.any():
        return
    bots = rows.filter(pa.array(only_bot)).group_by(["dt", "user_id"]).aggregate([("user_id", "count")])
    for row in bots.to_pylist():
        s = stats[row["dt"]]
        log.warning(
            "validate %s: user %r made %s of the day's %s placed rows "
            "(%.0f%%, above RECSYS_BOT_MAX_USER_SHARE=%.0f%%): "
            "its rows are quarantined as bot_user and the rest of the day is judged on its own",
            row["dt"],
            str(row["user_id"])[:80],
            f"{row['user_id_count']:,}",
            f"{s.placed:,}",
            100 * row["user_id_count"] / max(s.placed, 1),
            100 * settings.bot_max_user_share,
        )


def _where(settings: Settings, s: DayStats) -> str:

    files = sorted(s.source_files.items(), key=lambda kv: -kv[1])
    named = ", ".join(os.path.basename(f) for f, _ in files[:3]) + (
        f" and {len(files) - 3} more" if len(files) > 3 else ""
    )
    return f"{lake.partition_uri(settings.lake, datasets.STAGING, s.day)} (from {named or 'no file'})"


def _write_quarantine(
    settings: Settings, rows: pa.Table, reasons: list[list[str]], stats: dict[dt.date, DayStats]
) -> None:
    """Write each day's quarantined rows with their reasons; remove a day's stale quarantine."""
    reason = pa.array([",".join(r) if r else None for r in reasons], pa.string())
    with_reason = rows.append_column("reason", reason)
    for day in stats:
        mask = pc.and_(pc.equal(rows["dt"], pa.scalar(day, pa.date32())), pc.is_valid(reason))
        part = with_reason.filter(mask).select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)
        if part.num_rows:
            lake.write_partition(settings.lake, datasets.QUARANTINE, day, part)
        else:
            lake.delete_partition(settings.lake, datasets.QUARANTINE, day)
