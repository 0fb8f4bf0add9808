"""PostgreSQL as the event source: stage the days a run needs as Parquet, then read them as files.

``RECSYS_SOURCE=postgres://CONN_ID`` (default connection id ``recsys_source``) names an
Airflow connection; the events come from ``RECSYS_SOURCE_TABLE`` (default ``events``, may be
``schema.table``) or from the SELECT in ``RECSYS_SOURCE_QUERY``. Columns are resolved exactly
as for files (:func:`recsys.io.sources.files.resolve_columns`, ``RECSYS_SOURCE_COLUMNS``), and only
those columns of the needed days are read: through ADBC (binary COPY) as Arrow record
batches, each written to Parquet as it arrives, so memory stays flat however large a day is.

The staged folder keeps the source's own column names, so extract registers it with
:func:`recsys.io.sources.files.register_source` like any folder of files (the one seam with extract).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.config import Settings
from recsys.io.sources.files import NewestEvent, SourceError, as_utc, resolve_columns

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

TIME_TYPES = ("timestamptz", "timestamp", "date")
NUMBER_TYPES = ("int2", "int4", "int8", "numeric", "float4", "float8")
# Rows per Arrow batch asked of the driver (about this many bytes per batch).
BATCH_BYTES = 16 * 1024 * 1024


def connection_uri(conn_id: str) -> str:
    """A libpq URI for the Airflow connection ``conn_id``.

    Raises SourceError when the connection is not defined or is not a PostgreSQL one.
    """
    from urllib.parse import quote

    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        raise SourceError(
            f"the event source is PostgreSQL on the Airflow connection {conn_id!r}, which is not defined. "
            f"Add it in the Airflow UI (Admin > Connections) or set "
            f"AIRFLOW_CONN_{conn_id.upper()}=postgresql://USER:PASSWORD@HOST:5432/DATABASE"
        ) from None
    if conn.conn_type not in ("postgres", "postgresql"):
        raise SourceError(f"Airflow connection {conn_id!r} has type {conn.conn_type!r}; expected postgres")
    auth = quote(conn.login or "", safe="")
    if conn.password:
        auth += ":" + quote(conn.password, safe="")
    netloc = f"{auth + '@' if auth else ''}{conn.host or 'localhost'}:{conn.port or 5432}"
    options = {
        k: v
        for k, v in (conn.extra_dejson or {}).items()
        if k in ("sslmode", "sslrootcert", "connect_timeout", "application_name")
    }
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in options.items())
    return f"postgresql://{netloc}/{quote(conn.schema or 'postgres', safe='')}" + (f"?{query}" if query else "")


def quote_ident(name: str) -> str:
    """``schema.table`` → ``"schema"."table"`` (each part quoted, so any name is safe in SQL)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def source_relation(settings: Settings) -> str:
    """The FROM clause: the configured query as a sub-select, or the quoted table."""
    if settings.source_query:
        return f"({settings.source_query.strip().rstrip(';')}) AS src"
    return f"{quote_ident(settings.source_table)} AS src"


def describe_source(settings: Settings) -> str:
    what = "query RECSYS_SOURCE_QUERY" if settings.source_query else f"table {settings.source_table}"
    return f"PostgreSQL {what} on connection {settings.source_conn_id!r}"


def _connect(settings: Settings) -> Any:
    import adbc_driver_postgresql.dbapi as pg

    conn_id = settings.source_conn_id
    if conn_id is None:
        raise SourceError(f"event source {settings.source!r} is not PostgreSQL (expected postgres://CONN_ID)")
    uri = connection_uri(conn_id)
    try:
        con = pg.connect(uri)
    except Exception as exc:  # the driver's errors carry the server's reason
        raise SourceError(f"cannot connect to PostgreSQL on connection {conn_id!r}: {exc}") from exc
    with con.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")  # timestamps without a zone are UTC, as for files
    return con


def _fetch_table(con: Any, query: str, failure: str) -> pa.Table:
    """The whole result of ``query``; raises SourceError saying ``failure`` and the server's reason."""
    cur = con.cursor()
    try:
        cur.execute(query)
        return cur.fetch_arrow_table()
    except Exception as exc:
        raise SourceError(f"{failure}: {exc}") from exc
    finally:
        cur.close()


def source_columns(con: Any, settings: Settings) -> dict[str, tuple[str, str]]:
    """The source's columns: {name: (quoted name, PostgreSQL type name)}.

    Raises SourceError naming the table or query when it cannot be read.
    """
    query = f"SELECT * FROM {source_relation(settings)} LIMIT 0"
    schema = _fetch_table(con, query, f"cannot read {describe_source(settings)}").schema
    columns: dict[str, tuple[str, str]] = {}
    for field in schema:
        pg_type = (field.metadata or {}).get(b"POSTGRESQL:type", b"").decode() or str(field.type)
        columns[field.name] = ('"' + field.name.replace('"', '""') + '"', pg_type.lower())
    return columns


def build_day_query(
    settings: Settings, columns: dict[str, tuple[str, str]], start: dt.datetime, end: dt.datetime
) -> str:
    """SELECT of the resolved columns (keeping their names) for events in [start, end).

    Ids are cast to text (no lost leading zeros, one type across days); the time filter
    follows the timestamp column's type: a timestamp, epoch seconds/milliseconds, or text.
    Raises SourceError (from resolve_columns) when a required column is missing.
    """
    resolved = resolve_columns(list(columns), settings.source_columns, describe_source(settings))
    selects: list[str] = []
    for canonical, name in resolved.items():
        if name is None:
            continue
        quoted, pg_type = columns[name]
        keep = canonical == "event_ts" and pg_type in TIME_TYPES + NUMBER_TYPES
        selects.append(quoted if keep else f"CAST({quoted} AS text) AS {quoted}")
    ts = _timestamp_expr(*columns[resolved["event_ts"] or ""])
    return (
        f"SELECT {', '.join(selects)} FROM {source_relation(settings)} "
        f"WHERE {ts} >= {_timestamp_literal(start)} AND {ts} < {_timestamp_literal(end)}"
    )


def _timestamp_expr(quoted: str, pg_type: str) -> str:
    """SQL for the event time as timestamptz: epoch numbers are seconds, or milliseconds above 1e11."""
    if pg_type in NUMBER_TYPES:
        return f"to_timestamp(CASE WHEN {quoted} > 1e11 THEN {quoted} / 1000.0 ELSE {quoted} END)"
    if pg_type == "timestamptz":
        return quoted  # bare, so an index on the column serves the day filter
    return f"CAST({quoted} AS timestamptz)"


def _timestamp_literal(value: dt.datetime) -> str:
    # Literals, not bound parameters: the driver streams only unparameterised queries
    # (binary COPY); with parameters it fetches the whole result first. The values are
    # our own datetimes, never text from outside.
    return f"TIMESTAMPTZ '{value.astimezone(dt.UTC).isoformat()}'"


def staging_dir(settings: Settings, day: dt.date) -> Path:
    """Where the run for ``day`` stages its source rows (one folder per run date)."""
    return settings.home / "staging" / f"postgres-{settings.source_conn_id}" / f"dt={day.isoformat()}"


def stage_days(settings: Settings, day: dt.date, days: Iterable[dt.date]) -> Path:
    """Copy the events of ``days`` from PostgreSQL into Parquet files under a fresh folder.

    One query per run of consecutive days; rows stream as Arrow batches straight to Parquet.
    Returns the folder (read it with register_source). Raises SourceError when the connection
    is missing, the table cannot be read or lacks a required column.
    """
    import pyarrow.parquet as pq

    wanted = sorted(set(days))
    out = staging_dir(settings, day)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = time.perf_counter()
    rows = 0
    con = _connect(settings)
    try:
        columns = source_columns(con, settings)
        for index, (first, last) in enumerate(_ranges(wanted)):
            start = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC)
            end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
            cur = con.cursor()
            try:
                cur.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(BATCH_BYTES)})
                cur.execute(build_day_query(settings, columns, start, end))
                reader = cur.fetch_record_batch()
                path = out / f"part-{index:04d}.parquet"
                rows += _write_batches(reader, path, pq)
            except SourceError:
                raise
            except Exception as exc:
                raise SourceError(f"reading {describe_source(settings)} for {first}..{last} failed: {exc}") from exc
            finally:
                cur.close()
    finally:
        con.close()
    seconds = time.perf_counter() - started
    log.info(
        "staged %d rows of %d day(s) from %s into %s in %.1f s (%.0f rows/s)",
        rows, len(wanted), describe_source(settings), out, seconds, rows / max(seconds, 1e-9),
    )
    return out




def _write_batches(reader: pa.RecordBatchReader, path: Path, pq: Any) -> int:
    """Write every batch of ``reader`` to one Parquet file as it arrives; returns the row count."""
    rows = 0
    schema = reader.schema.remove_metadata()
    with pq.ParquetWriter(path, schema) as writer:
        for batch in reader:
            writer.write_batch(batch.replace_schema_metadata(None).cast(schema))
            rows += batch.num_rows
    return rows


def _ranges(days: list[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """Sorted days as (first, last) runs of consecutive days."""
    ranges: list[list[dt.date]] = []
    for d in days:
        if ranges and (d - ranges[-1][1]).days == 1:
            ranges[-1][1] = d
        else:
            ranges.append([d, d])
    return [(a, b) for a, b in ranges]


def newest_event(settings: Settings) -> NewestEvent:
    """The newest event of the PostgreSQL source and whether the UTC day before its day has events.

    Only the facts: :func:`recsys.io.sources.files.latest_complete_day` decides from them which day is
    complete, as for files. Raises SourceError when the source has no events.
    """
    con = _connect(settings)  # its session is in UTC, so date_trunc('day', ...) is the UTC day
    try:
        columns = source_columns(con, settings)
        resolved = resolve_columns(list(columns), settings.source_columns, describe_source(settings))
        ts = _timestamp_expr(*columns[resolved["event_ts"] or ""])
        relation = source_relation(settings)
        query = (
            f"WITH newest AS (SELECT max({ts}) AS newest_ts FROM {relation}) "
            f"SELECT newest_ts, EXISTS (SELECT 1 FROM {relation} "
            f"WHERE {ts} >= date_trunc('day', newest_ts) - interval '1 day' AND {ts} < date_trunc('day', newest_ts)) "
            f"AS day_before_has_events FROM newest"
        )
        row = _fetch_table(con, query, f"reading the newest event of {describe_source(settings)} failed").to_pylist()[0]
    finally:
        con.close()
    if row["newest_ts"] is None:
        raise SourceError(f"{describe_source(settings)} has no events")
    return NewestEvent(as_utc(row["newest_ts"]), bool(row["day_before_has_events"]))
