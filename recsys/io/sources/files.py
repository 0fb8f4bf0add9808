"""Reading the store's event files (Parquet, CSV, JSON lines) as canonical interaction rows.

Whatever the store calls its columns, :func:`register_source` exposes a DuckDB view
``source_events`` with the canonical columns ``user_id, item_id, event_type, event_ts,
event_id`` (ids as strings, ``event_ts`` as a UTC timestamp) and ``source_file`` (the file
each row came from). Column names are resolved per file, case-insensitively;
``RECSYS_SOURCE_COLUMNS`` maps names that differ; extra columns are ignored.

Dirty files are sorted out here, so that nothing downstream has to guess:

* an empty file (0 bytes, a CSV header without rows, a Parquet file without rows) is skipped
  with a warning: landing jobs write those for quiet hours, and there is nothing in it to lose;
* a file that cannot be read at all (a truncated Parquet file, a CSV whose quotes do not
  balance, a cut-off gzip stream) or that lacks a required column fails with SourceError
  naming the file;
* a CSV line that cannot be parsed on its own (bytes that are not UTF-8, too many or too few
  fields) is not fatal: DuckDB's rejects table keeps it and :func:`rejected_lines` hands it
  to extract, which quarantines it. A malformed JSON line reads as a row of NULLs;
* a timestamp that cannot be parsed becomes NULL, and an id stored as bytes that are not
  UTF-8 becomes U+FFFD followed by its hex: validate quarantines both, nothing is guessed.
"""

from __future__ import annotations

import datetime as dt
import gzip
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from recsys.config import CANONICAL_COLUMNS, OPTIONAL_COLUMNS

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

from recsys.io.sql import connect, run_sql
from recsys.schemas import INVALID_UTF8_MARK

log = logging.getLogger(__name__)

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".tsv": "csv",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".jsonl.gz": "json",
}


# Names stores commonly use, accepted when no mapping is given and the canonical name is absent.
ALIASES = {
    "event_ts": ("timestamp", "event_time", "event_timestamp", "ts", "time"),
    "event_type": ("type", "event", "event_name", "action"),
    "user_id": ("userid", "user", "customer_id", "visitor_id", "visitorid"),
    "item_id": ("itemid", "item", "product_id", "productid", "sku"),
    "event_id": ("id", "eventid"),
}


# Event names other stores use for the canonical event types. A source value maps to a configured
# event type when, ignoring case and anything but letters and digits, it equals the type's name
# or one of these (e.g. RetailRocket's view / addtocart / transaction, REES46's cart / purchase).
EVENT_TYPE_ALIASES = {
    "View": ("pageview", "productview", "detail", "detailview"),
    "AddToCart": ("cart", "addtobasket", "basketadd"),
    "ViewCart": ("basket", "viewbasket"),
    "StartCheckout": ("checkout", "begincheckout"),
    "Purchase": ("transaction", "order", "buy", "sale"),
}


def _event_key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def event_type_spellings(event_types: Sequence[str]) -> dict[str, str]:
    """Normalised spelling (lower case, letters and digits) -> configured event type.

    Each configured type is reached by its own name and by its EVENT_TYPE_ALIASES; a spelling
    that is itself a configured type's name always means that type.
    """
    spellings: dict[str, str] = {}
    for name in event_types:
        for alias in EVENT_TYPE_ALIASES.get(name, ()):
            spellings.setdefault(_event_key(alias), name)
    for name in event_types:
        spellings[_event_key(name)] = name
    return spellings


def _event_type_expr(column: str | None, event_types: Sequence[str]) -> str:
    """SQL for event_type: the configured name when the value is a spelling of it, else the value."""
    raw = f"CAST({_quote(column or '')} AS VARCHAR)"
    spellings = event_type_spellings(event_types)
    if not spellings:
        return raw
    key = f"lower(regexp_replace({raw}, '[^A-Za-z0-9]', '', 'g'))"
    cases = " ".join(f"WHEN {_literal(k)} THEN {_literal(v)}" for k, v in sorted(spellings.items()))
    return f"CASE {key} {cases} ELSE {raw} END"


# DuckDB adds each row's file under this name (chosen so that no store's column clashes).
FILE_COLUMN = "__recsys_source_file"
CSV_DELIMITERS = (",", ";", "\t", "|")
# DuckDB reject types that mean a quote was opened and never closed: the lines after it are
# swallowed into one field, so the file as a whole cannot be trusted.
CSV_QUOTE_ERRORS = ("UNQUOTED VALUE",)
_HEAD_BYTES = 65_536


class SourceError(ValueError):
    """The event source cannot be read as canonical interactions."""


def as_utc(ts: dt.datetime) -> dt.datetime:
    """``ts`` in UTC; a naive one is taken as UTC, as the sources take timestamps without a zone."""
    return ts.replace(tzinfo=dt.UTC) if ts.tzinfo is None else ts.astimezone(dt.UTC)


class NewestEvent(NamedTuple):
    """What an event source (files or PostgreSQL) reports about its end, for :func:`latest_complete_day`."""

    ts: dt.datetime  # the newest event's time, in UTC
    day_before_has_events: bool  # whether the UTC day before that event's day has any events


def day_is_complete(day: dt.date, newest_ts: dt.datetime, complete_after: dt.time) -> bool:
    """Whether ``day`` has fully landed in a source whose newest event is at ``newest_ts``: the one rule
    for every kind of source.

    True when that event is at ``complete_after`` (``RECSYS_COMPLETE_AFTER``, 23:00 UTC) of ``day`` or
    later, which an event of a later day is too. Exports and replicas deliver events in time order,
    so an event that late means the day's earlier ones are in. A naive ``newest_ts`` is UTC.
    """
    return as_utc(newest_ts) >= dt.datetime.combine(day, complete_after, tzinfo=dt.UTC)


def latest_complete_day(newest_ts: dt.datetime, day_before_has_events: bool, complete_after: dt.time) -> dt.date:
    """The newest UTC day of a source that has fully landed (:func:`day_is_complete`).

    That is the day of the newest event when it is complete; otherwise the newest day is still
    arriving (or the log was cut off mid-day, as an export often is), and the day before it is the
    latest complete one if it has events (a source of one partial day has nothing better to offer
    than that day). A naive ``newest_ts`` is UTC.
    """
    newest = as_utc(newest_ts)
    if not day_is_complete(newest.date(), newest, complete_after) and day_before_has_events:
        return newest.date() - dt.timedelta(days=1)
    return newest.date()


def find_done_marker(source: str | Path, marker: str, day: dt.date) -> Path | None:
    """The exporter's marker that says ``day`` is complete (``RECSYS_DONE_MARKER``), or None.

    ``marker`` is relative to the source folder (to the folder of a single source file);
    ``{date}`` in it stands for the day. A marker without ``{date}`` (a ``_SUCCESS`` rewritten by
    every export) counts only when it was written after ``day`` ended (UTC).
    """
    root = Path(source)
    path = (root.parent if root.is_file() else root) / marker.replace("{date}", day.isoformat())
    try:
        written = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    except FileNotFoundError:
        return None
    if "{date}" in marker or written >= dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC):
        return path
    return None


@dataclass(frozen=True)
class SourceFile:
    """One readable event file: its format, columns as found, and how they map to canonical ones."""

    path: Path
    fmt: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    mapping: tuple[tuple[str, str | None], ...]  # (canonical, column in the file or None)
    delimiter: str | None = None  # CSV only

    def group_key(self) -> tuple[object, ...]:
        """Files with equal keys are read by one DuckDB scan."""
        used = {c for _, c in self.mapping if c is not None}
        types = tuple(t for c, t in zip(self.columns, self.types) if c in used)
        return (self.fmt, self.delimiter, self.columns if self.fmt == "csv" else (), self.mapping, types)


@dataclass
class RegisteredSource:
    """What :func:`register_source` registered: the readable files, and the empty ones it skipped."""

    root: Path
    files: list[SourceFile] = field(default_factory=list)
    empty_files: list[Path] = field(default_factory=list)

    @property
    def by_format(self) -> dict[str, list[Path]]:
        grouped: dict[str, list[Path]] = {}
        for f in self.files:
            grouped.setdefault(f.fmt, []).append(f.path)
        return grouped

    @property
    def has_csv(self) -> bool:
        return any(f.fmt == "csv" for f in self.files)


def _format_of(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    return None


def find_source_files(source: str | Path) -> dict[str, list[Path]]:
    """The source's data files grouped by format; raises SourceError when there are none."""
    root = Path(source)
    if not root.exists():
        raise SourceError(f"event source {root} does not exist (set RECSYS_SOURCE to a file or folder)")
    candidates = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    grouped: dict[str, list[Path]] = {}
    for path in candidates:
        if path.name.startswith((".", "_")):
            continue
        fmt = _format_of(path)
        if fmt is None:
            if root.is_file():
                raise SourceError(
                    f"event source {root}: unknown file type; expected .parquet, .csv, .jsonl/.ndjson/.json"
                )
            continue
        grouped.setdefault(fmt, []).append(path)
    if not grouped:
        raise SourceError(f"event source {root} holds no .parquet, .csv or .jsonl files")
    return grouped


def resolve_columns(found: list[str], mapping: Mapping[str, str], where: str) -> dict[str, str | None]:
    """Map each canonical column to the source's column name (None for a missing optional one).

    Raises SourceError naming the missing column, the mapping and the columns found.
    """
    by_lower = {name.lower(): name for name in found}
    unknown = set(mapping) - set(CANONICAL_COLUMNS) - set(OPTIONAL_COLUMNS)
    if unknown:
        raise SourceError(
            f"RECSYS_SOURCE_COLUMNS names {sorted(unknown)}, which are not canonical columns; "
            f"expected keys among {list(CANONICAL_COLUMNS + OPTIONAL_COLUMNS)}"
        )
    resolved: dict[str, str | None] = {}
    for canonical in CANONICAL_COLUMNS + OPTIONAL_COLUMNS:
        wanted = mapping.get(canonical, canonical)
        actual = by_lower.get(wanted.lower())
        if actual is None and canonical not in mapping:
            actual = next((by_lower[a] for a in ALIASES.get(canonical, ()) if a in by_lower), None)
            if actual is not None:
                log.info("%s: using column %r as %s (no mapping given)", where, actual, canonical)
        if actual is None and canonical in CANONICAL_COLUMNS:
            how = f"mapped from {wanted!r} by RECSYS_SOURCE_COLUMNS" if canonical in mapping else "no mapping given"
            raise SourceError(
                f"{where}: required column {canonical!r} is missing ({how}); columns found: {found}. "
                f"Map it with RECSYS_SOURCE_COLUMNS, e.g. {canonical}=<your column name>"
            )
        resolved[canonical] = actual
    return resolved


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _timestamp_expr(column: str, duck_type: str) -> str:
    """SQL turning the source's timestamp column into TIMESTAMPTZ (UTC); NULL when unparseable.

    Numbers (or digit strings) are epoch seconds, or epoch milliseconds when above 1e11
    (no second count that large is a plausible event time).
    """
    col = _quote(column)
    # try(): an absurd number (1e20) is one bad row, not a failed scan.
    numeric = "try(CASE WHEN {x} > 1e11 THEN to_timestamp({x} / 1000.0) ELSE to_timestamp({x}) END)"
    upper = duck_type.upper()
    if upper.startswith("TIMESTAMP") or upper == "DATE":
        return f"CAST({col} AS TIMESTAMPTZ)"
    if any(t in upper for t in ("INT", "DOUBLE", "FLOAT", "DECIMAL", "REAL", "HUGEINT")):
        return numeric.format(x=f"CAST({col} AS DOUBLE)")
    text = f"trim(CAST({col} AS VARCHAR))"
    return (
        f"CASE WHEN regexp_full_match({text}, '[0-9]+(\\.[0-9]+)?') "
        f"THEN {numeric.format(x=f'TRY_CAST({text} AS DOUBLE)')} "
        f"ELSE TRY_CAST({text} AS TIMESTAMPTZ) END"
    )


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _first_line(message: object) -> str:
    """The first line of an error message, without its final full stop (DuckDB's run long)."""
    text = str(message).strip()
    return text.splitlines()[0].rstrip(".") if text else repr(message)


def _id_expr(column: str | None, duck_type: str) -> str:
    """SQL for an id column as text. Bytes that are not UTF-8 become U+FFFD + hex (never a real id)."""
    if column is None:
        return "CAST(NULL AS VARCHAR)"
    col = _quote(column)
    if duck_type.upper() == "BLOB":
        return (
            f"CASE WHEN {col} IS NULL THEN NULL "
            f"ELSE coalesce(try(decode({col})), chr({ord(INVALID_UTF8_MARK)}) || hex({col})) END"
        )
    return f"CAST({col} AS VARCHAR)"


def _read_expr(fmt: str, paths: list[Path], delimiter: str | None = None, json_columns: tuple[str, ...] = ()) -> str:
    """The DuckDB table function reading ``paths``, with a ``FILE_COLUMN`` naming each row's file.

    CSV: every value as text, the dialect fixed (a guessed dialect turns a broken quote into
    silently merged lines), unparseable lines to the rejects table. JSON lines: the canonical
    keys as text, a malformed line as a row of NULLs.
    """
    files = "[" + ", ".join(_literal(str(p)) for p in paths) + "]"
    name = _literal(FILE_COLUMN)
    if fmt == "parquet":
        return f"read_parquet({files}, filename={name})"
    if fmt == "csv":
        return (
            f"read_csv({files}, header=true, all_varchar=true, delim={_literal(delimiter or ',')}, "
            f"quote='\"', escape='\"', store_rejects=true, filename={name})"
        )
    columns = ""
    if json_columns:
        columns = ", columns={" + ", ".join(f"{_literal(c)}: 'VARCHAR'" for c in json_columns) + "}"
    return f"read_json({files}, format='newline_delimited', ignore_errors=true, filename={name}{columns})"


def _head(path: Path) -> bytes:
    """The first bytes of a file (decompressed for .gz)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            return handle.read(_HEAD_BYTES)
    except (OSError, EOFError) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from exc


def _csv_dialect(path: Path) -> tuple[str, bool] | None:
    """(delimiter, has data rows) from a CSV file's first lines; None when it has no header either."""
    head = _head(path)
    lines = [line for line in head.decode("utf-8", errors="replace").lstrip("\ufeff").splitlines() if line.strip()]
    if not lines:
        return None
    if path.name.lower().endswith(".tsv"):
        return "\t", len(lines) > 1
    counts = {d: lines[0].count(d) for d in CSV_DELIMITERS}
    delimiter = max(CSV_DELIMITERS, key=lambda d: (counts[d], d == ","))
    return (delimiter if counts[delimiter] else ","), len(lines) > 1


def inspect_file(
    con: duckdb.DuckDBPyConnection, path: Path, fmt: str, mapping: Mapping[str, str]
) -> SourceFile | None:
    """Columns and canonical mapping of one event file; None when it holds no rows.

    Raises SourceError naming the file when it cannot be read (truncated, not the format its
    name says, a quote that never closes) or lacks a required column.
    """
    import duckdb

    if path.stat().st_size == 0:
        return None
    delimiter: str | None = None
    try:
        if fmt == "csv":
            dialect = _csv_dialect(path)
            if dialect is None or not dialect[1]:
                return None
            delimiter = dialect[0]
        elif fmt == "json" and path.stat().st_size <= _HEAD_BYTES and not _head(path).strip():
            return None
        rel = con.sql(f"SELECT * FROM {_read_expr(fmt, [path], delimiter)}")
        columns = [c for c in rel.columns if c != FILE_COLUMN]
        types = [str(t) for c, t in zip(rel.columns, rel.types) if c != FILE_COLUMN]
        if fmt == "parquet":
            count = con.sql(f"SELECT count(*) FROM {_read_expr(fmt, [path])}").fetchall()[0][0]
            if int(count) == 0:
                return None
    except duckdb.Error as exc:
        hint = {
            "parquet": "Is it truncated, still being written, or not Parquet?",
            "csv": f"Read with delimiter {delimiter!r} and quote '\"': "
            "a quote that opens and never closes is the usual cause.",
            "json": "Expected one JSON object per line.",
        }[fmt]
        raise SourceError(f"cannot read {path} as {fmt.upper()}: {_first_line(exc)}. {hint}") from exc
    resolved = resolve_columns(columns, mapping, str(path))
    if fmt == "csv" and len(columns) == 1 and any(d in columns[0] for d in CSV_DELIMITERS):
        log.warning("%s: one column %r; is the delimiter something other than %r?", path, columns[0], delimiter)
    return SourceFile(
        path=path,
        fmt=fmt,
        columns=tuple(columns),
        types=tuple(types),
        mapping=tuple(resolved.items()),
        delimiter=delimiter,
    )


def _select(files: list[SourceFile], event_types: Sequence[str] = ()) -> str:
    """One SELECT of canonical columns over files that share format, columns and types."""
    first = files[0]
    cols = dict(first.mapping)
    used = tuple(c for c in cols.values() if c is not None)
    types = {c: ("VARCHAR" if first.fmt == "json" else t) for c, t in zip(first.columns, first.types)}
    read = _read_expr(first.fmt, [f.path for f in files], first.delimiter, used if first.fmt == "json" else ())
    ts = cols["event_ts"] or ""
    return (
        "SELECT "
        f"{_id_expr(cols['user_id'], types.get(cols['user_id'] or '', ''))} AS user_id, "
        f"{_id_expr(cols['item_id'], types.get(cols['item_id'] or '', ''))} AS item_id, "
        f"{_event_type_expr(cols['event_type'], event_types)} AS event_type, "
        f"{_timestamp_expr(ts, types.get(ts, 'VARCHAR'))} AS event_ts, "
        f"{_id_expr(cols['event_id'], types.get(cols['event_id'] or '', ''))} AS event_id, "
        f"CAST({_quote(FILE_COLUMN)} AS VARCHAR) AS source_file "
        f"FROM {read}"
    )


def register_source(
    con: duckdb.DuckDBPyConnection,
    source: str | Path,
    mapping: Mapping[str, str],
    event_types: Sequence[str] = (),
) -> RegisteredSource:
    """Create the view ``source_events`` (canonical columns + ``source_file``) over every event file.

    ``event_type`` values that spell one of ``event_types`` another way (``view``,
    ``add_to_cart``, ``transaction``; see EVENT_TYPE_ALIASES) become that configured name.

    Returns the files registered and the empty ones skipped. Raises SourceError naming the
    file when one cannot be read or lacks a required column, or when every file is empty.
    """
    found = find_source_files(source)
    registered = RegisteredSource(root=Path(source))
    for fmt, paths in found.items():
        for path in paths:
            inspected = inspect_file(con, path, fmt, mapping)
            if inspected is None:
                registered.empty_files.append(path)
            else:
                registered.files.append(inspected)
    if registered.empty_files:
        log.warning(
            "event source %s: skipped %d empty file(s) (no rows): %s",
            source, len(registered.empty_files), ", ".join(str(p) for p in registered.empty_files[:10]),
        )
    if not registered.files:
        raise SourceError(
            f"event source {source}: every file is empty ({len(registered.empty_files)} file(s), e.g. "
            f"{registered.empty_files[0]}); expected at least one file with rows"
        )
    groups: dict[tuple[object, ...], list[SourceFile]] = {}
    for f in registered.files:
        groups.setdefault(f.group_key(), []).append(f)
    con.execute(
        "CREATE OR REPLACE VIEW source_events AS "
        + " UNION ALL ".join(_select(g, event_types) for g in groups.values())
    )
    log.info(
        "event source %s: %s in %d scan group(s)",
        source, ", ".join(f"{len(p)} {fmt} file(s)" for fmt, p in registered.by_format.items()), len(groups),
    )
    return registered


def rejected_lines(con: duckdb.DuckDBPyConnection, registered: RegisteredSource) -> pa.Table:
    """CSV lines DuckDB could not parse in the scans so far: source_file, line, error_types, raw_line.

    One row per file and line (a line rejected by several scans, or for several reasons, once).
    """
    import pyarrow as pa


    if not registered.has_csv or not con.sql(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'reject_errors'"
    ).fetchall()[0][0]:
        return pa.table(
            {"source_file": pa.array([], pa.string()), "line": pa.array([], pa.int64()),
             "error_types": pa.array([], pa.string()), "raw_line": pa.array([], pa.string())}
        )
    return run_sql(con, "rejected_lines")


def newest_event(con: duckdb.DuckDBPyConnection, source: str | Path) -> NewestEvent:
    """The newest event of the registered ``source_events`` view and whether the day before has events.

    Raises SourceError naming ``source`` when no event has a readable event_ts.
    """

    row = run_sql(con, "newest_event").to_pylist()[0]
    if row["newest_ts"] is None:
        raise SourceError(f"event source {source} has no events with a readable event_ts")
    return NewestEvent(as_utc(row["newest_ts"]), bool(row["day_before_has_events"]))


def find_unreadable_file(con: duckdb.DuckDBPyConnection, registered: RegisteredSource) -> SourceError | None:
    """Scan each file on its own; a SourceError naming the first that fails (None if none does).

    DuckDB's errors from a scan over many files do not always say which file broke.
    """
    import duckdb

    for f in registered.files:
        try:
            con.sql(
                "SELECT count(user_id), count(item_id), count(event_type), count(event_ts), count(event_id) "
                f"FROM ({_select([f])})"
            ).fetchall()
        except duckdb.Error as exc:
            return SourceError(f"cannot read {f.path} as {f.fmt.upper()}: {_first_line(exc)}")
    return None


def register_catalog(con: duckdb.DuckDBPyConnection, catalog: str | Path | None) -> int:
    """Create the view ``catalog(item_id, name, category, active)``; returns its row count.

    With no catalog the view is empty (every item counts as active, no categories).
    Raises SourceError naming the file when it cannot be read or has no item_id column.
    """
    import duckdb

    if catalog is None:
        con.execute(
            "CREATE OR REPLACE VIEW catalog AS SELECT CAST(NULL AS VARCHAR) AS item_id, "
            "CAST(NULL AS VARCHAR) AS name, CAST(NULL AS VARCHAR) AS category, "
            "CAST(NULL AS BOOLEAN) AS active WHERE false"
        )
        return 0
    files = find_source_files(catalog)
    paths = [str(p) for group in files.values() for p in group]
    fmt = next(iter(files))
    try:
        if fmt == "parquet":
            rel = con.read_parquet(paths)
        elif fmt == "csv":
            # DuckDB reads a list of files; its stubs name only one.
            rel = con.read_csv(paths, header=True, all_varchar=True)  # type: ignore[arg-type]
        else:
            rel = con.read_json(paths, format="newline_delimited")  # type: ignore[arg-type]
    except duckdb.Error as exc:
        raise SourceError(f"cannot read catalog {catalog}: {exc}") from exc
    rel.create_view("catalog_raw", replace=True)
    by_lower = {c.lower(): c for c in rel.columns}
    if "item_id" not in by_lower:
        raise SourceError(f"catalog {catalog}: required column 'item_id' is missing; columns found: {rel.columns}")

    def pick(name: str) -> str:
        return f"CAST({_quote(by_lower[name])} AS VARCHAR)" if name in by_lower else "CAST(NULL AS VARCHAR)"

    active = (
        f"coalesce(TRY_CAST({_quote(by_lower['active'])} AS BOOLEAN), true)" if "active" in by_lower else "true"
    )
    con.execute(
        f"CREATE OR REPLACE VIEW catalog AS SELECT {pick('item_id')} AS item_id, {pick('name')} AS name, "
        f"{pick('category')} AS category, {active} AS active FROM catalog_raw"
    )
    count = con.sql("SELECT count(*) FROM catalog").fetchall()[0]
    return int(count[0]) if count else 0


def read_catalog(catalog: str | Path | None) -> pa.Table:
    """The catalog's rows (item_id, name, category, active) as read by :func:`register_catalog`,
    through a connection of its own; no rows when no catalog is configured."""

    with connect() as con:
        register_catalog(con, catalog)
        return con.sql("SELECT item_id, name, category, active FROM catalog").to_arrow_table()


def raw_values(con: duckdb.DuckDBPyConnection, source_file: SourceFile, canonical: str, limit: int = 3) -> list[str]:
    """Up to ``limit`` distinct raw values of a canonical column in one file, for error messages."""
    import duckdb

    column = dict(source_file.mapping).get(canonical)
    if column is None:
        return []
    used = tuple(c for _, c in source_file.mapping if c is not None)
    read = _read_expr(
        source_file.fmt, [source_file.path], source_file.delimiter, used if source_file.fmt == "json" else ()
    )
    try:
        rows = con.sql(
            f"SELECT DISTINCT CAST({_quote(column)} AS VARCHAR) FROM {read} WHERE {_quote(column)} IS NOT NULL "
            f"LIMIT {int(limit)}"
        ).fetchall()
    except duckdb.Error:
        return []
    return [str(r[0])[:40] for r in rows]
