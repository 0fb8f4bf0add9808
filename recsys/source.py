"""Reading the store's event files (Parquet, CSV, JSON lines) as canonical interaction rows.

Whatever the store calls its columns, :func:`register_source` exposes a DuckDB view
``source_events`` with the canonical columns ``user_id, item_id, event_type, event_ts,
event_id`` (ids as strings, ``event_ts`` as a UTC timestamp). Column names are matched
case-insensitively; ``RECSYS_SOURCE_COLUMNS`` maps names that differ.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from recsys.config import CANONICAL_COLUMNS, OPTIONAL_COLUMNS

if TYPE_CHECKING:
    import duckdb

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


class SourceError(ValueError):
    """The event source cannot be read as canonical interactions."""


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
    numeric = "CASE WHEN {x} > 1e11 THEN to_timestamp({x} / 1000.0) ELSE to_timestamp({x}) END"
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


def register_source(
    con: "duckdb.DuckDBPyConnection", source: str | Path, mapping: Mapping[str, str]
) -> dict[str, list[Path]]:
    """Create the view ``source_events`` with canonical columns over every source file.

    Returns the files by format. Raises SourceError naming the file and column when a
    required column is missing or a file cannot be read.
    """
    import duckdb

    files = find_source_files(source)
    selects: list[str] = []
    for fmt, paths in files.items():
        names = [str(p) for p in paths]
        where = f"{fmt} files under {source}" if len(paths) > 1 else str(paths[0])
        try:
            if fmt == "parquet":
                rel = con.read_parquet(names, union_by_name=True)
            elif fmt == "csv":
                # Ids stay text (no lost leading zeros); timestamps are parsed below.
                rel = con.read_csv(names, header=True, all_varchar=True, union_by_name=True)
            else:
                rel = con.read_json(names, format="newline_delimited")
        except duckdb.Error as exc:
            raise SourceError(f"cannot read {where}: {exc}") from exc
        view = f"source_{fmt}"
        rel.create_view(view, replace=True)
        types = dict(zip(rel.columns, (str(t) for t in rel.types)))
        cols = resolve_columns(list(rel.columns), mapping, where)
        event_id = cols["event_id"]
        selects.append(
            "SELECT "
            f"CAST({_quote(cols['user_id'] or '')} AS VARCHAR) AS user_id, "
            f"CAST({_quote(cols['item_id'] or '')} AS VARCHAR) AS item_id, "
            f"CAST({_quote(cols['event_type'] or '')} AS VARCHAR) AS event_type, "
            f"{_timestamp_expr(cols['event_ts'] or '', types[cols['event_ts'] or ''])} AS event_ts, "
            f"{'CAST(' + _quote(event_id) + ' AS VARCHAR)' if event_id else 'CAST(NULL AS VARCHAR)'} AS event_id "
            f"FROM {view}"
        )
    con.execute("CREATE OR REPLACE VIEW source_events AS " + " UNION ALL ".join(selects))
    log.info(
        "event source %s: %s", source, ", ".join(f"{len(p)} {fmt} file(s)" for fmt, p in files.items())
    )
    return files


def register_catalog(con: "duckdb.DuckDBPyConnection", catalog: str | Path | None) -> int:
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
            rel = con.read_csv(paths, header=True, all_varchar=True)
        else:
            rel = con.read_json(paths, format="newline_delimited")
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
