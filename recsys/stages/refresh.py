"""Tasks ``collect_events``, ``score_active`` and ``publish_refresh`` of ``recsys_refresh``:
the events since the served night, through the nightly's row checks, folded into the served
model for the users active since then, and written over those users' lists only.

The served night D is ``models/champion.json`` (what verify recorded), checked against the
table's ``__meta__``. A run reads the source's events from D+1 00:00 UTC up to its end
(:func:`recsys.runtime.refresh_until`), every time all of them: a run's lake partitions
(``refresh/*/dt=<day of its end>``) replace those of an earlier run of the same day, and
rewriting a user's list from the same events gives the same list.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys import datasets
from recsys.config import Settings
from recsys.core.checks import (
    BOT,
    FUTURE_TOLERANCE,
    QUARANTINE_SCHEMA,
    ValidationError,
    build_row_suite,
    by_reason,
    result_indexes,
    row_frame,
    row_reasons,
)
from recsys.core.holdout import ChampionUnavailable
from recsys.core.lists import ItemFilters
from recsys.core.model import SortedEvents
from recsys.core.refresh import refresh_lists, shift_ages
from recsys.core.window import Window, days_between
from recsys.io import dynamodb, gx, lake
from recsys.io.artifacts import load_champion, load_window_events, read_champion
from recsys.io.source import open_source
from recsys.io.sources.files import (
    CSV_QUOTE_ERRORS,
    SourceError,
    find_unreadable_file,
    read_catalog,
    register_source,
    rejected_lines,
)
from recsys.io.sql import connect, run_sql
from recsys.schemas import INTERACTIONS_SCHEMA, RECOMMENDATIONS_SCHEMA

log = logging.getLogger(__name__)

# The rows the row suite checks (extract's staged rows): the canonical row and where it came from.
_CHECKED_SCHEMA = pa.schema([*INTERACTIONS_SCHEMA, ("source_file", pa.string()), ("read_error", pa.string()),
                             ("raw_line", pa.string()), ("placed", pa.bool_()), ("dt", pa.date32())])


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def _partition_day(until: dt.datetime) -> dt.date:
    """The lake day of a run's partitions: the day its last second falls in."""
    return (until - dt.timedelta(seconds=1)).date()


def collect_events(settings: Settings, day: dt.date, until: dt.datetime) -> dict[str, Any]:
    """The source's events from the midnight after the served night up to ``until``, through the
    nightly's row suite: rows that break a check go to ``refresh/quarantine/dt=<day>`` with
    their reasons, the others to ``refresh/interactions/dt=<day>``.

    Returns {"served_run_date", "model_version", "start", "until", "rows", "rows_kept",
    "quarantined", "reasons", "duplicates_dropped", "seconds"}, or {"skipped": why} while the
    table's ``__meta__`` and the champion disagree (a nightly publish is finishing). Raises
    LookupError before any nightly was served; SourceError naming the file that cannot be
    read; ValidationError when more than RECSYS_MAX_BAD_SHARE of the new rows break a check
    (nothing is written to the table then).
    """
    started = time.perf_counter()
    record = read_champion(settings)
    if record is None:
        raise LookupError(f"no nightly has been served from the lake {settings.lake} yet (no {datasets.CHAMPION}): "
                          "run the nightly first (recsys run --date latest)")
    served_day = dt.date.fromisoformat(str(record["run_date"]))
    version = str(record["model_version"])
    meta = dynamodb.read_served(dynamodb.make_client(settings), settings.table)
    if meta is None or meta["model_version"] != version:
        reason = (f"table {settings.table} serves {meta} while {datasets.CHAMPION} names {version} of {served_day}: "
                  "a nightly publish is finishing (verify records the champion after __meta__); the next run refreshes")
        log.warning("refresh: skipped: %s", reason)
        return {"skipped": reason}
    start = _midnight(served_day + dt.timedelta(days=1))
    summary: dict[str, Any] = {"served_run_date": served_day.isoformat(), "model_version": version,
                               "start": start.isoformat(), "until": until.isoformat()}
    rows, duplicates = _read_new_events(settings, start, until)
    checked, reasons = _check_rows(settings, rows)
    quarantined = np.array([bool(r) for r in reasons], dtype=bool)
    bad = quarantined & ~np.array([r == [BOT] for r in reasons], dtype=bool)
    counts: Counter[str] = Counter(code for r in reasons for code in r)
    part = _partition_day(until)
    _write_quarantine(settings, part, checked, reasons, quarantined)
    kept = checked.filter(pa.array(~quarantined)).select(INTERACTIONS_SCHEMA.names).cast(INTERACTIONS_SCHEMA)
    summary.update(rows=checked.num_rows, rows_kept=kept.num_rows, quarantined=int(quarantined.sum()),
                   reasons=dict(counts), duplicates_dropped=duplicates)
    share = float(bad.sum()) / max(checked.num_rows, 1)
    if share > settings.max_bad_share:
        raise ValidationError(
            f"refresh: {int(bad.sum()):,} of the {checked.num_rows:,} new rows from {settings.source} between "
            f"{start.isoformat()} and {until.isoformat()} ({share:.2%}) broke row checks ({by_reason(counts)}), "
            f"above the allowed {settings.max_bad_share:.2%} (RECSYS_MAX_BAD_SHARE); nothing was refreshed. "
            f"Quarantined rows (with a reason column): "
            f"{lake.partition_uri(settings.lake, datasets.REFRESH_QUARANTINE, part)}. Fix or remove the file; "
            "the next run reads it again")
    summary["seconds"] = round(time.perf_counter() - started, 2)
    lake.write_partition(settings.lake, datasets.REFRESH_EVENTS, part, kept,
                         extra_files={datasets.REFRESH_META: summary})
    log.info("refresh: %s new rows since %s up to %s, %s kept, %s quarantined (%s), %d duplicate(s) dropped, "
             "%.1f s (%.0f rows/s)", f"{checked.num_rows:,}", start.isoformat(), until.isoformat(),
             f"{kept.num_rows:,}", f"{int(quarantined.sum()):,}", by_reason(counts), duplicates, summary["seconds"],
             checked.num_rows / max(summary["seconds"], 1e-9))
    return summary


def _read_new_events(settings: Settings, start: dt.datetime, until: dt.datetime) -> tuple[pa.Table, int]:
    """The source's canonical rows in [start, until) as the row suite checks them (repeats of
    an event dropped and counted), with the CSV lines of those files that could not be parsed
    (``read_error`` set). Raises SourceError naming a file that cannot be used at all."""
    import duckdb

    if until <= start:
        return _CHECKED_SCHEMA.empty_table(), 0
    days = days_between(start.date(), _partition_day(until))
    with connect(temp_dir=settings.duckdb_temp_dir) as con:
        source = open_source(settings).stage(days[-1], days)
        registered = register_source(con, source, settings.source_columns, list(settings.event_weights))
        try:
            table = run_sql(con, datasets.INTERACTIONS, {"start": start, "end": until})
            per_file = run_sql(con, "source_file_days")
            rejects = rejected_lines(con, registered)
            fed = set(pc.unique(table["source_file"]).to_pylist())
            # The rows of those files without a usable event_ts, or stamped in the future (as extract
            # finds them; no home files, so no row is another day's): quarantined, not dropped.
            strays = run_sql(con, "stray_events", {
                "files": sorted(fed), "home_files": [], "future": dt.datetime.now(dt.UTC) + FUTURE_TOLERANCE,
                "window_start": start, "end": until, "extracted_days": days})
        except duckdb.Error as exc:
            named = find_unreadable_file(con, registered)
            raise (named or SourceError(f"cannot read the event source {registered.root}: {exc}")) from exc
    parsed = Counter[str]()
    for row in per_file.to_pylist():
        parsed[row["source_file"]] += int(row["events"])
    lines = []
    for row in rejects.to_pylist():
        name = row["source_file"]
        if any(kind in row["error_types"] for kind in CSV_QUOTE_ERRORS):
            raise SourceError(f"cannot read {name} as CSV: line {row['line']} opens a quote that is never closed "
                              f"({str(row['raw_line'])[:120]!r}); expected every quoted field to end with '\"'. "
                              "Fix or remove the file")
        if parsed[name] == 0:
            raise SourceError(f"cannot read {name} as CSV: none of its lines parses (e.g. {row['error_types']}); "
                              "expected UTF-8 text with the header's number of fields. Fix or remove the file")
        if name in fed:
            lines.append(row)
    kept = table.filter(pc.equal(table["occurrence"], 1))
    rows = pa.concat_tables([_checked(kept, pc.cast(kept["event_ts"], pa.date32())),
                             _checked(strays, pa.array([_partition_day(until)] * strays.num_rows, pa.date32()))])
    m = len(lines)
    unparsed = pa.table({**{name: pa.nulls(m, field.type) for name, field in
                            zip(INTERACTIONS_SCHEMA.names, INTERACTIONS_SCHEMA)},
                         "source_file": pa.array([r["source_file"] for r in lines], pa.string()),
                         "read_error": pa.array(["unparseable_line"] * m, pa.string()),
                         "raw_line": pa.array([f"line {r['line']}: {r['raw_line']}" for r in lines], pa.string()),
                         "placed": pa.array([True] * m, pa.bool_()),
                         "dt": pa.array([_partition_day(until)] * m, pa.date32())}, schema=_CHECKED_SCHEMA)
    return pa.concat_tables([rows, unparsed]), table.num_rows - kept.num_rows


def _checked(rows: pa.Table, day: pa.Array) -> pa.Table:
    """Canonical rows (with ``source_file``) as the row suite takes them, each on ``day``."""
    n = rows.num_rows
    return pa.table({**{name: rows[name] for name in INTERACTIONS_SCHEMA.names},
                     "source_file": rows["source_file"], "read_error": pa.nulls(n, pa.string()),
                     "raw_line": pa.nulls(n, pa.string()), "placed": pa.array([True] * n, pa.bool_()),
                     "dt": day}).cast(_CHECKED_SCHEMA)


def _check_rows(settings: Settings, rows: pa.Table) -> tuple[pa.Table, list[list[str]]]:
    """The nightly's row suite (:func:`recsys.core.checks.build_row_suite`) on ``rows``: each
    row's quarantine reasons (empty: kept). Raises ValidationError when a check fails for the
    whole table (a column of the wrong type)."""
    if rows.num_rows == 0:
        return rows, []
    frame = row_frame(rows, settings)
    context = gx.gx_context()
    result = gx.run_suite(context, "refresh_rows", context.suites.add(build_row_suite(settings)), frame)
    broken = [f"column {r.expectation_config.kwargs.get('column')!r}: {r.expectation_config.type} failed"
              for r in result.results if not r.success and result_indexes(r.result) is None]
    if broken:
        raise ValidationError(f"refresh: the new rows from {settings.source} fail as a whole: {'; '.join(broken)}; "
                              "nothing was refreshed")
    return rows, row_reasons(frame, result.results, dt.datetime.now(dt.UTC))


def _write_quarantine(settings: Settings, part: dt.date, rows: pa.Table, reasons: list[list[str]],
                      quarantined: np.ndarray) -> None:
    if not quarantined.any():
        lake.delete_partition(settings.lake, datasets.REFRESH_QUARANTINE, part)
        return
    reason = pa.array([",".join(r) if r else None for r in reasons], pa.string())
    table = rows.append_column("reason", reason).filter(pa.array(quarantined))
    lake.write_partition(settings.lake, datasets.REFRESH_QUARANTINE, part,
                         table.select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA))


def score_active(settings: Settings, day: dt.date, collected: dict[str, Any]) -> dict[str, Any]:
    """The lists of every user with a kept new event, scored by the served model from the
    night's window events (``pair_events/dt=D``) plus the new ones, into
    ``refresh/lists/dt=<day>`` (see :func:`recsys.core.refresh.refresh_lists`).

    Returns {"users", "new_users", "unscored_users", "rows", "model_version", "seconds",
    "users_per_second", and collect_events' "new_rows", "quarantined", "collect_seconds"} (or
    what collect_events skipped). Raises LookupError when the served
    model cannot be loaded or was replaced since collect_events.
    """
    if collected.get("skipped"):
        return collected
    started = time.perf_counter()
    until = dt.datetime.fromisoformat(collected["until"])
    served_day = dt.date.fromisoformat(collected["served_run_date"])
    part = _partition_day(until)
    record = read_champion(settings) or {}
    if record.get("model_version") != collected["model_version"]:
        raise LookupError(f"the served model changed from {collected['model_version']} to "
                          f"{record.get('model_version')} while the refresh ran; the next run refreshes with it")
    try:
        champion = load_champion(settings, record)
    except ChampionUnavailable as exc:
        raise LookupError(f"the served model {collected['model_version']} cannot be loaded: {exc}; "
                          "rerun the nightly of its date") from exc
    kept = lake.read_partition(settings.lake, datasets.REFRESH_EVENTS, part)
    weights = {t for t, w in champion.params["event_weights"].items() if w}
    kept = kept.filter(pc.is_in(kept["event_type"], value_set=pa.array(sorted(weights), pa.string())))
    summary = {"model_version": champion.params["model_version"], "served_run_date": served_day.isoformat(),
               "until": until.isoformat(), "new_rows": collected.get("rows", 0),
               "quarantined": collected.get("quarantined", 0), "collect_seconds": collected.get("seconds")}
    if kept.num_rows == 0:
        lists = RECOMMENDATIONS_SCHEMA.empty_table()
        counts = {"users": 0, "new_users": 0, "unscored_users": 0}
    else:
        events = pa.table({"user_id": kept["user_id"], "item_id": kept["item_id"], "event_type": kept["event_type"],
                           "event_us": pc.cast(pc.cast(kept["event_ts"], pa.timestamp("us", tz="UTC")), pa.int64())})
        new = SortedEvents.of(events).before(until)
        shift = (until - Window.of(settings, served_day).end).total_seconds() / 86_400.0
        window = shift_ages(load_window_events(settings, served_day), shift)
        filters = ItemFilters.from_catalog(read_catalog(settings.catalog), champion.item_ids)
        result = refresh_lists(settings, champion, window, new, filters)
        lists = result.lists
        counts = {"users": result.active_users - result.unscored_users, "new_users": result.new_users,
                  "unscored_users": result.unscored_users}
    seconds = time.perf_counter() - started
    summary.update(counts, rows=lists.num_rows, seconds=round(seconds, 2),
                   users_per_second=round(counts["users"] / max(seconds, 1e-9), 1))
    lake.write_partition(settings.lake, datasets.REFRESH_LISTS, part, lists,
                         extra_files={datasets.REFRESH_META: summary})
    return summary


def publish_refresh(settings: Settings, day: dt.date, scored: dict[str, Any]) -> dict[str, Any]:
    """Write the refreshed lists (conditionally: never over a newer nightly, see
    :func:`recsys.io.dynamodb.publish_refreshed`) and read a sample of them back.

    Returns {"published", "items", "kept_newer", "checked", "seconds", ...}; {"published":
    False, "reason"} when collect_events skipped or a newer night is served by now. Raises
    PublicationError when a list read back differs from what was written.
    """
    if scored.get("skipped"):
        return {"published": False, "reason": scored["skipped"]}
    started = time.perf_counter()
    until = dt.datetime.fromisoformat(scored["until"])
    served_day = dt.date.fromisoformat(scored["served_run_date"])
    client = dynamodb.make_client(settings)
    meta = dynamodb.read_served(client, settings.table) or {}
    if meta.get("run_date", "") > served_day.isoformat():
        reason = f"table {settings.table} serves the newer night {meta['run_date']} by now: nothing refreshed"
        log.warning("refresh: %s", reason)
        return {"published": False, "reason": reason}
    recs = lake.read_partition(settings.lake, datasets.REFRESH_LISTS, _partition_day(until))
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    stats = dynamodb.publish_refreshed(
        client, settings.table, recs, model_version=scored["model_version"], served_run_date=served_day,
        refreshed_at=now, until=until, expires_at=int((now + dt.timedelta(days=settings.ttl_days)).timestamp()),
        threads=settings.publish_threads)
    written = stats.pop("written_users")
    checked = _read_back(settings, client, recs, written, scored["model_version"], until)
    seconds = time.perf_counter() - started
    result = {"published": True, **stats, "checked": checked, "users": scored["users"],
              "new_users": scored["new_users"], "refreshed_at": now.isoformat(), "until": until.isoformat(),
              "model_version": scored["model_version"], "seconds": round(seconds, 2)}
    _record_run(settings, scored, result)
    return result


def _record_run(settings: Settings, scored: dict[str, Any], published: dict[str, Any]) -> None:
    """``refresh/runs/<end>.json``: what one run wrote and how long each task took, for the
    nightly report (:func:`recsys.io.report.recent_refreshes`). Named after the run's end, so a
    rerun of the same end replaces its record."""
    until = dt.datetime.fromisoformat(published["until"]).astimezone(dt.UTC)
    record = {"until": published["until"], "refreshed_at": published["refreshed_at"],
              "served_run_date": scored["served_run_date"], "model_version": published["model_version"],
              "users": published["items"], "new_users": published["new_users"],
              "kept_newer": published["kept_newer"], "unscored_users": scored.get("unscored_users", 0),
              "new_rows": scored.get("new_rows", 0), "quarantined": scored.get("quarantined", 0),
              "seconds": {"collect_events": scored.get("collect_seconds"), "score_active": scored.get("seconds"),
                          "publish_refresh": published["seconds"]}}
    where = lake.write_lake_json(settings.lake, f"{datasets.REFRESH_RUNS}/{until:%Y-%m-%dT%H%M%SZ}.json", record)
    log.info("refresh: run recorded in %s", where)


def _read_back(settings: Settings, client: Any, recs: pa.Table, written: list[str], version: str,
               until: dt.datetime) -> int:
    """Read back a seeded sample (RECSYS_VERIFY_SAMPLE) of the users just written; raises
    PublicationError unless each holds the items written, the model and this run's stamp."""
    if not written:
        return 0
    picked = np.random.default_rng(settings.random_state).choice(len(written), min(settings.verify_sample,
                                                                                  len(written)), replace=False)
    users = [written[int(i)] for i in np.sort(picked)]
    found = dynamodb.batch_get(client, settings.table, users,
                               attributes=(dynamodb.KEY, "items", "model_version", "refreshed_until"))
    sample = recs.filter(pc.is_in(recs["user_id"], value_set=pa.array(users, pa.string())))
    expected: dict[str, list[str]] = {}
    for row in sample.sort_by([("user_id", "ascending"), ("rank", "ascending")]).to_pylist():
        expected.setdefault(row["user_id"], []).append(row["item_id"])
    stamp = until.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    wrong = [u for u in users
             if u not in found or found[u].get("model_version", {}).get("S") != version
             or found[u].get("refreshed_until", {}).get("S", "") < stamp
             or [x["M"]["item_id"]["S"] for x in found[u].get("items", {}).get("L", [])] != expected.get(u)]
    if wrong:
        raise dynamodb.PublicationError(
            f"refresh: {len(wrong)} of {len(users)} users read back from {settings.table} do not hold the lists "
            f"just written (model {version}, events up to {stamp}), e.g. {wrong[:5]}; rerun the refresh")
    log.info("refresh: %d users read back from %s match what was written", len(users), settings.table)
    return len(users)
