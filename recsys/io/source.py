"""The store's event source, behind one interface.

A source hands extract the days it needs as files DuckDB reads (:meth:`Source.stage`) and
reports its newest event (:meth:`Source.newest_event`) and an exporter's done marker
(:meth:`Source.done_marker`), from which :func:`check_day` (is the run date complete?
``wait_for_data`` asks) and :func:`newest_complete_day` (``recsys run --date latest``) apply the
one rule of a complete day, :func:`recsys.io.sources.files.day_is_complete`.
:func:`open_source` picks the kind from ``RECSYS_SOURCE``: a folder or glob of files
(:mod:`recsys.io.sources.files`), or ``postgres://CONN_ID`` (:mod:`recsys.io.sources.postgres`, staged
as Parquet). Another kind (an S3 export, a warehouse) is one more class with these three methods.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple, Protocol

from recsys.config import Settings
from recsys.io import sql
from recsys.io.sources import files, postgres
from recsys.io.sources.files import NewestEvent, day_is_complete, find_done_marker, latest_complete_day

log = logging.getLogger(__name__)


class Source(Protocol):
    """What extract and the 'latest' rule need of a source."""

    def stage(self, day: dt.date, days: Iterable[dt.date]) -> str:
        """A folder, file or glob holding at least the events of ``days`` (for the run of ``day``)."""

    def newest_event(self) -> NewestEvent:
        """The newest event and whether the UTC day before its day has events; raises SourceError when empty."""

    def done_marker(self, day: dt.date) -> Path | None:
        """The marker file the exporter wrote to say ``day`` is complete (``RECSYS_DONE_MARKER``), or None."""


class FileSource:
    """Files (Parquet, CSV, JSON lines; see :mod:`recsys.io.sources.files`) read where they lie."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def stage(self, day: dt.date, days: Iterable[dt.date]) -> str:
        return self.settings.source

    def newest_event(self) -> NewestEvent:
        settings = self.settings
        with sql.connect() as con:
            files.register_source(con, settings.source, settings.source_columns, list(settings.event_weights))
            return files.newest_event(con, settings.source)

    def done_marker(self, day: dt.date) -> Path | None:
        marker = self.settings.done_marker
        return find_done_marker(self.settings.source, marker, day) if marker else None


class PostgresSource:
    """A PostgreSQL table or query behind an Airflow connection, staged as Parquet per run."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def stage(self, day: dt.date, days: Iterable[dt.date]) -> str:
        return str(postgres.stage_days(self.settings, day, days))

    def newest_event(self) -> NewestEvent:
        return postgres.newest_event(self.settings)

    def done_marker(self, day: dt.date) -> Path | None:
        return None  # a table has no marker file: its newest event_ts decides


def open_source(settings: Settings) -> Source:
    """The source ``RECSYS_SOURCE`` names."""
    return PostgresSource(settings) if settings.source_conn_id else FileSource(settings)


def newest_complete_day(settings: Settings) -> dt.date:
    """The newest UTC day of the source that has fully landed; raises SourceError when it is empty.

    The source reports its newest event; :func:`recsys.io.sources.files.latest_complete_day`
    applies the one rule for every kind: that event's day when it is at ``RECSYS_COMPLETE_AFTER``
    (23:00 UTC) or later, else the day before (if it has events).
    """
    newest = open_source(settings).newest_event()
    day = latest_complete_day(newest.ts, newest.day_before_has_events, settings.complete_after)
    if day != newest.ts.date():
        log.warning(
            "the source's newest event is at %02d:%02d UTC on %s, before RECSYS_COMPLETE_AFTER, so that day "
            "has not fully landed: 'latest' is %s (RECSYS_COMPLETE_AFTER=00:00 recsys run --date %s runs the "
            "partial day anyway)",
            newest.ts.hour, newest.ts.minute, newest.ts.date(), day, newest.ts.date(),
        )
    return day


class DayStatus(NamedTuple):
    """Whether a day has fully landed in the source, and what that was judged from."""

    day: dt.date
    complete: bool
    newest: dt.datetime | None  # the source's newest event (None when a marker decided without reading it)
    marker: Path | None  # the exporter's done marker that made the day complete

    def describe(self) -> str:
        """The evidence in words: the marker, or the newest event."""
        if self.marker is not None:
            return f"the done marker {self.marker} is there"
        return f"the newest event is at {self.newest.isoformat() if self.newest else '?'}"


def describe_source(settings: Settings) -> str:
    """The source as a message names it: the path, or the PostgreSQL table or query and its connection."""
    return postgres.describe_source(settings) if settings.source_conn_id else f"event source {settings.source}"


def describe_rule(settings: Settings, day: dt.date) -> str:
    """The rule of a complete ``day``, with the settings that set it, for messages."""
    rule = (
        f"a day is complete once the source holds an event at or after "
        f"{settings.complete_after.strftime('%H:%M')} UTC of it or of a later day (RECSYS_COMPLETE_AFTER)"
    )
    if settings.done_marker and not settings.source_conn_id:
        marker = settings.done_marker.replace("{date}", day.isoformat())
        rule += f", or the exporter's marker {marker} is in the source folder (RECSYS_DONE_MARKER)"
    return rule


def check_day(settings: Settings, day: dt.date) -> DayStatus:
    """Whether ``day`` has fully landed in the source: its done marker, else its newest event
    (:func:`recsys.io.sources.files.day_is_complete`). Raises SourceError when the source cannot be read.
    """
    source = open_source(settings)
    marker = source.done_marker(day)
    if marker is not None:
        return DayStatus(day, True, None, marker)
    newest = source.newest_event().ts
    return DayStatus(day, day_is_complete(day, newest, settings.complete_after), newest, None)
