"""The one SQL runner: DuckDB connections, ``sql/<output>.sql`` files and bound parameters."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

log = logging.getLogger(__name__)

SQL_DIR = Path(os.environ.get("RECSYS_SQL_DIR") or Path(__file__).resolve().parents[1] / "sql")


def connect(temp_dir: Path | None = None, memory_limit: str | None = None) -> "duckdb.DuckDBPyConnection":
    """An in-memory DuckDB connection in UTC, spilling to ``temp_dir`` when memory runs short."""
    import duckdb

    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    limit = memory_limit or os.environ.get("RECSYS_DUCKDB_MEMORY_LIMIT")
    if limit:
        con.execute(f"SET memory_limit = '{limit}'")
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = '{temp_dir}'")
    return con


@functools.cache
def load_sql(name: str) -> str:
    """The text of ``sql/<name>.sql``; raises FileNotFoundError naming the file."""
    path = SQL_DIR / f"{name}.sql"
    if not path.exists():
        raise FileNotFoundError(f"SQL file {path} not found (RECSYS_SQL_DIR={SQL_DIR})")
    return path.read_text()


def run_sql(con: "duckdb.DuckDBPyConnection", name: str, params: Mapping[str, Any] | None = None) -> "pa.Table":
    """Run ``sql/<name>.sql`` with named parameters bound (``$name``) and return an Arrow table."""
    text = load_sql(name)
    used = {k: v for k, v in (params or {}).items() if f"${k}" in text}
    result = con.sql(text, params=used).to_arrow_table()
    log.debug("sql/%s.sql: %d rows", name, result.num_rows)
    return result


def register_parquet(con: "duckdb.DuckDBPyConnection", view: str, paths: Sequence[Path | str]) -> None:
    """Register Parquet files as a view named ``view`` (an empty list is an error)."""
    if not paths:
        raise ValueError(f"no Parquet files to register as view {view!r}")
    con.read_parquet([str(p) for p in paths]).create_view(view, replace=True)
