"""The store's event source, behind one interface.

A source hands extract the days it needs as files DuckDB reads (:meth:`Source.stage`) and
reports its newest event (:meth:`Source.newest_event`), from which :func:`newest_complete_day`
applies the one rule of a complete day. :func:`open_source` picks the kind from
``RECSYS_SOURCE``: a folder or glob of files (:mod:`recsys.io.sources.files`), or ``postgres://CONN_ID``
(:mod:`recsys.io.sources.postgres`, staged as Parquet). Another kind (an S3 export, a warehouse) is one more
class with these two methods.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import Protocol

from recsys.config import Settings
from recsys.io import sql
from recsys.io.sources import files, postgres
from recsys.io.sources.files import NewestEvent, latest_complete_day

log = logging.getLogger(__name__)


class Source(Protocol):
    """What extract and the 'latest' rule need of a source."""

    def stage(self, day: dt.date, days: Iterable[dt.date]) -> str:
        """A folder, file or glob holding at least the events of ``days`` (for the run of ``day``)."""

    def newest_event(self) -> NewestEvent:
        """The newest event and whether the UTC day before its day has events; raises SourceError when empty."""


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


class PostgresSource:
    """A PostgreSQL table or query behind an Airflow connection, staged as Parquet per run."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def stage(self, day: dt.date, days: Iterable[dt.date]) -> str:
        return str(postgres.stage_days(self.settings, day, days))

    def newest_event(self) -> NewestEvent:
        return postgres.newest_event(self.settings)


def open_source(settings: Settings) -> Source:
    """The source ``RECSYS_SOURCE`` names."""
    return PostgresSource(settings) if settings.source_conn_id else FileSource(settings)


def newest_complete_day(settings: Settings) -> dt.date:
    """The newest UTC day of the source that has fully landed; raises SourceError when it is empty.

    The source reports its newest event; :func:`recsys.io.sources.files.latest_complete_day`
    applies the one rule for every kind: that event's day when it is at 23:00 UTC or later,
    else the day before (if it has events).
    """
    newest = open_source(settings).newest_event()
    day = latest_complete_day(newest.ts, newest.day_before_has_events)
    if day != newest.ts.date():
        log.warning(
            "the source's newest event is at %02d:%02d UTC on %s, so that day has not fully landed: "
            "'latest' is %s (pass --date %s to run the partial day anyway)",
            newest.ts.hour, newest.ts.minute, newest.ts.date(), day, newest.ts.date(),
        )
    return day
